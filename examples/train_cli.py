"""Train the demo's shapes classifier through LightningCLI, with a CAMMonitor preset from ``callbacks/``.

python examples/train_cli.py fit --config callbacks/gradient_every_epoch.yaml --trainer.max_epochs 5
tensorboard --logdir lightning_logs
"""

from lightning.pytorch.cli import LightningCLI

from lightning_cam.demo import ShapesClassifier, ShapesDataModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv`` in tests."""
    return LightningCLI(
        ShapesClassifier, ShapesDataModule, args=args, run=run, save_config_kwargs={"overwrite": True}
    )


if __name__ == "__main__":
    main()
