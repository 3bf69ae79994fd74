"""The ``lightning-cam`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_cam.engine import METHODS

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> None:
    from lightning_cam.demo.run import run_demo

    result = run_demo(
        epochs=args.epochs,
        logger=args.logger,
        out=args.out,
        cue_strength=args.cue_strength,
        num_train=args.num_train,
        seed=args.seed,
        methods=None if args.methods is None else tuple(args.methods),
        arch=args.arch,
        data=args.data,
    )
    cued, decorrelated = (
        result.accuracy.get("cued", float("nan")),
        result.accuracy.get("decorrelated", float("nan")),
    )
    print(f"\nTrained for {args.epochs} epochs in {result.seconds:.0f} s.")
    print(
        f"  validation accuracy, cue agrees with the label ({args.cue_strength:.0%} of images): {cued:6.1%}"
    )
    print(f"  validation accuracy, cue drawn at random (decorrelated):      {decorrelated:6.1%}")
    if cued - decorrelated > 0.1:
        print("  -> the model relies on the corner cue: the grids show attention on the tag.")
    if result.suspects:
        print(
            "\nShortcut suspects the audits found without any mask over the run (strategies of the in-distribution set):"
        )
        print("\n".join(f"  - {words}" for words in result.suspects))
    print(f"\nLogs and grids: {result.log_dir}")
    print(f"  the audit page: {result.log_dir}/cam_report.html")
    print(f"  the trained model: {result.checkpoint} (audit it again: lightning-cam audit --help)")
    if args.logger == "tensorboard":
        print(f"  open with: tensorboard --logdir {result.log_dir}  (IMAGES tab, tags cam/predicted/grid)")
    elif args.logger == "wandb":
        print(f"  offline W&B run; upload with: wandb sync {result.log_dir}/wandb/offline-run-*")
    else:
        print(f"  PNG grids under {result.log_dir}/cam/predicted/, scalars in {result.log_dir}/metrics.csv")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="train a small CNN on procedural shapes with a shortcut cue, with CAMMonitor attached",
        description="Train on procedural shapes whose corner tag names the class most of the time, "
        "and watch the maps find the shortcut.",
    )
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--logger", choices=("tensorboard", "wandb", "csv"), default="tensorboard")
    demo.add_argument("--out", default="lightning_cam_demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--cue-strength", type=float, default=0.95, help="P(cue names the true class) in training"
    )
    demo.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training samples per epoch (default: 2048 images, 1024 volumes)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=METHODS,
        help="default: gradcam gradcam++ (vit: grad_rollout gradcam)",
    )
    demo.add_argument(
        "--arch", choices=("cnn", "vit"), default="cnn", help="a small CNN, or a small ViT (needs timm)"
    )
    demo.add_argument(
        "--data",
        choices=("shapes", "volumes"),
        default="shapes",
        help="2-D shapes, or 24^3 volumes (a ball, plate or rod, a corner blob as the cue) with a small 3-D CNN",
    )


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="rebuild the audit page (cam_report.html) from a finished run's files",
        description="Read a run's TensorBoard event files (or the PNG writer's folder with its scalars.csv) and "
        "write the self-contained HTML audit page.",
    )
    report.add_argument("run_dir", help="the run's log directory, e.g. lightning_logs/version_0")
    report.add_argument(
        "-o", "--out", default=None, help="the page to write (default: RUN_DIR/cam_report.html)"
    )
    report.add_argument(
        "--name", default="cam", help="the monitor's name (its tag root; default: %(default)s)"
    )


def _add_audit(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "audit",
        add_help=False,
        help="audit a checkpoint trained elsewhere (LightningCLI arguments; see lightning-cam audit --help)",
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``lightning-cam`` console script."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["audit"]:  # LightningCLI parses the rest (--config, --model, --data, --ckpt_path, ...)
        from lightning_cam.monitor.checkpoint_audit import run_checkpoint_audit

        sys.exit(run_checkpoint_audit(None if argv is None else given[1:]))
    parser = argparse.ArgumentParser(prog="lightning-cam", description="Explain a model while it trains.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo(commands)
    _add_report(commands)
    _add_audit(commands)
    args = parser.parse_args(given)
    if args.command == "demo":
        _demo(args)
    else:
        from lightning_cam.report import rebuild_report

        try:
            print(f"Wrote {rebuild_report(args.run_dir, args.out, args.name)}")
        except FileNotFoundError as error:  # a wrong folder: say so, no traceback
            parser.error(str(error))


if __name__ == "__main__":
    main()
