"""``lightning-cam audit``: the full audit of a checkpoint trained elsewhere, from what LightningCLI takes.

The command is a :class:`~lightning.pytorch.cli.LightningCLI` whose one subcommand, ``audit``, is a
method of :class:`AuditTrainer`: LightningCLI parses ``--config``, ``--model``, ``--data`` and
``--trainer.*`` and builds the module, the data module and the trainer as it does for ``validate``
(the model's init arguments saved in the checkpoint are read from ``--ckpt_path``, as LightningCLI
does). The trainer's strategy places the model (``--trainer.accelerator``) and, with
``--trainer.devices N --trainer.strategy ddp`` or under ``torchrun``, starts the processes: every rank
audits its shard and rank 0 writes the page and ``audit_summary.json`` into ``--out``.

Exit codes: 0 when nothing is flagged, 1 when a strategy is a shortcut suspect or an ``--alert`` is
crossed, 2 on bad input (a message, no traceback).
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_cam.auditing import AuditResult, audit
from lightning_cam.engine import resolve_methods
from lightning_cam.monitor.alerts import Alert, parse_alerts
from lightning_cam.monitor.audit_page import audit_report
from lightning_cam.monitor.config import import_object
from lightning_cam.report import REPORT_FILE

__all__ = ["SUMMARY_FILE", "AuditInputError", "AuditTrainer", "run_checkpoint_audit"]

SUMMARY_FILE = "audit_summary.json"
Dataloader = Literal["val", "test", "predict"]
STAGES = {"val": "validate", "test": "test", "predict": "predict"}


class AuditInputError(ValueError):
    """Bad input to ``lightning-cam audit`` (exit code 2): the message says what is wrong and what would work."""


class AuditTrainer(pl.Trainer):
    """A :class:`~lightning.pytorch.Trainer` with one more entry point, :meth:`audit` (``lightning-cam audit``).

    Example::

        >>> trainer = AuditTrainer(accelerator="cpu", logger=False)  # doctest: +SKIP
        >>> trainer.audit(ShapesClassifier(), ShapesDataModule(), ckpt_path="demo.ckpt", strategies=True)  # doctest: +SKIP
        0
    """

    exit_code: int = 0

    def audit(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        methods: tuple[str, ...] = ("gradcam",),
        target_layer: str = "auto",
        targets: str | int = "label",
        strategies: bool = False,
        class_names: list[str] | None = None,
        dataloader: Dataloader = "val",
        dataloader_idx: int = 0,
        model_attr: str | None = None,
        unpack: str | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        alert: list[str] | str | None = None,
        bootstrap_samples: int = 1000,
        weights_only: bool | None = None,
        out: str = "lightning_cam_audit",
    ) -> int:
        """Audit every image of one of the data's dataloaders with the checkpoint's weights; write the page
        and ``audit_summary.json`` into ``out``; return the exit code (0, or 1 when flagged).

        Args:
            model: the LightningModule (its weights are replaced by the checkpoint's).
            datamodule: the data; without one, the model's own ``*_dataloader`` hook is used.
            ckpt_path: the Lightning checkpoint to audit (its ``state_dict``, matched key by key).
            methods: the methods, e.g. ``[gradcam, gradcam++]``; the first one's maps find the strategies.
            target_layer: ``auto`` or a dotted module name of the network.
            targets: ``label``, ``predicted`` or a class index.
            strategies: find each class's strategies and test them for shortcuts (no mask needed).
            class_names: the classes' names, in index order (default: the data module's ``class_names``
                attribute, when it has one).
            dataloader: which of the data's dataloaders: ``val``, ``test`` or ``predict``.
            dataloader_idx: which one, when that hook returns several.
            model_attr: explain ``model.<model_attr>`` (the network inside the module), as CAMMonitor does.
            unpack: a dotted path to a function batch -> (images, labels[, masks[, groups]]).
            image_mean: the normalisation's mean, to draw the prototypes as they look.
            image_std: the normalisation's standard deviation.
            alert: a rule ``TAG=VALUE`` (``VALUE`` ``>x`` or ``<x``; a bare number is ``>``) on the audit's
                scalars, e.g. ``audit/accuracy/all=<0.9``, or a list of them (``[A=1, B=<0.5]``); a crossed
                one makes the exit code 1.
            bootstrap_samples: resamples of the 95 % intervals.
            weights_only: passed to ``torch.load`` (``None``: torch's default, ``True`` since torch 2.6);
                ``false`` loads a checkpoint that holds other objects, if you trust it.
            out: the folder of ``cam_report.html`` and ``audit_summary.json``.
        """
        rules = _alert_rules([alert] if isinstance(alert, str) else alert or [])
        resolve_methods(methods)  # an unknown name fails before anything is loaded
        launcher = self.strategy.launcher
        arguments = (model, datamodule, ckpt_path, dataloader, dataloader_idx, weights_only)
        options = dict(
            methods=list(methods),
            target_layer=target_layer,
            targets=targets,
            strategies=strategies,
            class_names=class_names,
            model_attr=model_attr,
            unpack=import_object(unpack) if unpack else None,
            image_mean=image_mean,
            image_std=image_std,
            rules=rules,
            bootstrap_samples=bootstrap_samples,
            out=Path(out),
        )
        self.exit_code = (
            self._audit_loaded(*arguments, **options)
            if launcher is None
            else launcher.launch(self._audit_loaded, *arguments, **options)
        )
        return self.exit_code

    def _audit_loaded(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None,
        ckpt_path: str | None,
        dataloader: Dataloader,
        dataloader_idx: int,
        weights_only: bool | None,
        **options: Any,
    ) -> int:
        """On every rank: load the weights, read the data, audit; rank 0 writes."""
        self.strategy.setup_environment()  # the process group under DDP, the device
        try:
            if ckpt_path is None:
                rank_zero_info(
                    "lightning-cam audit: no --ckpt_path; auditing the weights the model was built with."
                )
            else:
                load_weights(model, ckpt_path, weights_only)
            loader = self._loader(model, datamodule, dataloader, dataloader_idx)
            if options["class_names"] is None:
                options["class_names"] = getattr(datamodule, "class_names", None)
            model.to(self.strategy.root_device)
            network = _network(model, options.pop("model_attr"))
            return self._audited(network, loader, type(model).__name__, ckpt_path, dataloader, **options)
        finally:
            self.strategy.barrier()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def _loader(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None,
        dataloader: Dataloader,
        index: int,
    ) -> Any:
        """The data's dataloader, after ``prepare_data`` (once per node) and ``setup``, as ``validate`` would."""
        stage, hook = STAGES[dataloader], f"{dataloader}_dataloader"
        source: pl.LightningModule | pl.LightningDataModule = model if datamodule is None else datamodule
        parent = pl.LightningModule if datamodule is None else pl.LightningDataModule
        if not is_overridden(hook, source, parent):
            where = "the model" if datamodule is None else f"the data module {type(source).__name__}"
            raise AuditInputError(
                f"{where} has no {hook}(): pass data with --data (a LightningDataModule, or --config with a "
                f"`data:` section), or --dataloader one of {', '.join(STAGES)} that it defines."
            )
        if self.local_rank == 0:
            source.prepare_data()
        self.strategy.barrier()
        source.trainer = self  # type: ignore[assignment] # hooks may read the trainer (world size, ...)
        source.setup(stage)
        return _pick(getattr(source, hook)(), index, hook)

    def _audited(
        self,
        network: torch.nn.Module,
        loader: Any,
        model_name: str,
        ckpt_path: str | None,
        dataloader: Dataloader,
        rules: list[Alert],
        out: Path,
        **options: Any,
    ) -> int:
        """Run the audit, then (rank 0) write the page and the summary; the exit code."""
        display = {"image_mean": options.pop("image_mean"), "image_std": options.pop("image_std")}
        result = audit(
            network,
            loader,
            **options,
            progress=self.progress_bar_callback is not None,
        )
        crossed = _crossed(rules, result)
        code = 1 if crossed or any(s.flagged for s in result.strategies) else 0
        if self.is_global_zero:
            _write(result, out, model_name, ckpt_path, dataloader, crossed, code, options, display)
        return code


def _network(model: pl.LightningModule, attribute: str | None) -> torch.nn.Module:
    if attribute is None:
        return model
    network = getattr(model, attribute, None)
    if not isinstance(network, torch.nn.Module):
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise AuditInputError(
            f"--model_attr {attribute!r} is not a module of {type(model).__name__}; its children: {children}."
        )
    return network


def _pick(loaders: Any, index: int, hook: str) -> Any:
    """Dataloader ``index`` of what ``hook`` returned (one loader, a list or a dict of them)."""
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    if not 0 <= index < len(loaders):
        raise AuditInputError(
            f"--dataloader_idx {index}: {hook}() returns {len(loaders)} dataloader(s); pass 0 to {len(loaders) - 1}."
        )
    return loaders[index]


def load_weights(model: torch.nn.Module, ckpt_path: str, weights_only: bool | None) -> None:
    """Put the checkpoint's ``state_dict`` into ``model`` (after its ``on_load_checkpoint`` hook, as
    Lightning does); :class:`AuditInputError` naming the missing and unexpected keys when they differ."""
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError as error:
        raise AuditInputError(f"no checkpoint at --ckpt_path {ckpt_path!r}.") from error
    except pickle.UnpicklingError as error:
        raise AuditInputError(
            f"torch.load refused {ckpt_path!r} with weights_only: it holds objects besides tensors. If you trust "
            f"the file, pass --weights_only false. ({str(error).splitlines()[0]})"
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        keys = ", ".join(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise AuditInputError(
            f"{ckpt_path!r} is not a Lightning checkpoint (no 'state_dict'; it holds {keys}). Save one with "
            "trainer.save_checkpoint(path), or wrap a plain state dict as {'state_dict': ...}."
        )
    if hasattr(model, "on_load_checkpoint"):
        model.on_load_checkpoint(checkpoint)
    try:
        missing, unexpected = model.load_state_dict(checkpoint["state_dict"], strict=False)
    except RuntimeError as error:  # shapes that differ
        raise AuditInputError(f"the checkpoint does not fit {type(model).__name__}: {error}") from error
    if missing or unexpected:
        raise AuditInputError(
            f"the checkpoint does not fit {type(model).__name__} as configured: "
            f"missing keys {_listed(missing)}; unexpected keys {_listed(unexpected)}. Build the model with the "
            "arguments it was trained with (--config, or --model.<argument>)."
        )


def _listed(keys: Sequence[str], shown: int = 8) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _alert_rules(rules: list[str]) -> list[Alert]:
    pairs = {}
    for rule in rules:
        tag, sign, value = rule.partition("=")
        if not sign or not tag or not value:
            raise AuditInputError(
                f"--alert {rule!r}: write TAG=VALUE, e.g. audit/accuracy/all=<0.9 or audit/strategies/flagged=0."
            )
        pairs[tag.strip()] = value.strip()
    try:
        return parse_alerts(pairs)
    except ValueError as error:
        raise AuditInputError(str(error)) from error


def _crossed(rules: list[Alert], result: AuditResult) -> list[dict[str, object]]:
    """The rules that ``result``'s scalars cross; an unknown tag is an :class:`AuditInputError` naming the closest."""
    from difflib import get_close_matches

    scalars = result.scalars("audit")
    crossed = []
    for rule in rules:
        if rule.tag not in scalars:
            closest = get_close_matches(rule.tag, list(scalars), n=3, cutoff=0.5)
            raise AuditInputError(
                f"--alert {rule.tag!r}: the audit logged no such scalar (closest: {', '.join(closest) or 'none'})."
            )
        if rule.crossed_by(scalars[rule.tag]):
            crossed.append({"tag": rule.tag, "rule": rule.describe(), "value": scalars[rule.tag]})
    return crossed


def _write(
    result: AuditResult,
    out: Path,
    model_name: str,
    ckpt_path: str | None,
    dataloader: Dataloader,
    crossed: list[dict[str, object]],
    code: int,
    options: dict[str, Any],
    display: dict[str, Any],
) -> None:
    """``cam_report.html`` and ``audit_summary.json`` into ``out``, and a few lines on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    details = {
        "checkpoint": ckpt_path or "none (the weights the model was built with)",
        "dataloader": dataloader,
    }
    alerts = "; ".join(f"{e['tag']} = {e['value']:.4g} ({e['rule']})" for e in crossed) or "none"
    page = audit_report(
        result,
        out / REPORT_FILE,
        model_name,
        options["methods"],
        options["targets"],
        details=details | {"alerts_crossed": alerts},
        source="Written by `lightning-cam audit` (a checkpoint, no training run).",
        **display,
    )
    summary = {"model": model_name, **details, "methods": options["methods"], **result.summary()}
    summary |= {"alerts_crossed": crossed, "exit_code": code}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
    flagged = [f"{s.class_name} #{s.number}" for s in result.strategies if s.flagged]
    print(f"lightning-cam audit: {summary['images']} images of the {dataloader} dataloader.")
    if result.strategies:
        print(f"  strategies: {len(result.strategies)}, shortcut suspects: {', '.join(flagged) or 'none'}")
    for event in crossed:
        print(f"  alert: {event['tag']} = {event['value']:.4g} ({event['rule']})")
    print(f"  the page: {page}\n  the summary: {out / SUMMARY_FILE}\n  exit code {code}")


class AuditCLI(LightningCLI):
    """LightningCLI with one subcommand, ``audit`` (:meth:`AuditTrainer.audit`)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"audit": {"model", "datamodule"}}

    def _parse_ckpt_path(self) -> None:
        """The model's init arguments saved in ``--ckpt_path`` (``save_hyperparameters``), applied over the
        config as LightningCLI applies them. LightningCLI's own reading needs the class path it saves for
        the models it builds, so it fails on a model built in plain Python; here the class is the one
        ``--model`` (or ``--config``) names."""
        config = self.config["audit"]
        path, model = config.get("ckpt_path"), config.get("model")
        if not path or not Path(path).is_file() or model is None:
            return  # no checkpoint to read (load_weights says so), or no model (the parser said so)
        try:
            hparams = dict(
                torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
            )
        except (pickle.UnpicklingError, AttributeError):
            return  # not readable with weights_only, or not a checkpoint: load_weights says what is wrong
        for key in ("_instantiator", "_class_path"):
            hparams.pop(key, None)
        if hparams:
            saved = {"audit": {"model": {"class_path": model.class_path, "init_args": hparams}}}
            self.config = self.parser.parse_object(saved, self.config)


def check_class_paths(args: Sequence[str]) -> None:
    """A ``--config`` written by a LightningCLI that fixes its classes (``LightningCLI(MyModel, MyData)``)
    holds the init arguments without the class: :class:`AuditInputError` saying to name the class first,
    unless ``--model`` / ``--data`` come before the config."""
    import yaml

    named: set[str] = set()
    for position, argument in enumerate(args):
        if argument in ("--model", "--data"):
            named.add(argument[2:])
        if argument not in ("-c", "--config") or position + 1 >= len(args):
            continue
        path = Path(args[position + 1])
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        for key in ("model", "data"):
            section = config.get(key) if isinstance(config, dict) else None
            if isinstance(section, dict) and "class_path" not in section and key not in named:
                raise AuditInputError(
                    f"{path}'s `{key}:` section holds init arguments without a class_path (a LightningCLI that "
                    f"fixes its classes writes it so): name the class before the config, e.g. "
                    f"`lightning-cam audit --{key} my_package.My{'Model' if key == 'model' else 'DataModule'} "
                    f"--config {path} ...`."
                )


def run_checkpoint_audit(args: Sequence[str] | None = None) -> int:
    """``lightning-cam audit ARGS`` (``None``: the command line's, ``sys.argv[1:]`` starting with
    ``audit``): the exit code (0 clean, 1 flagged or alert crossed, 2 bad input)."""
    try:
        check_class_paths(sys.argv[2:] if args is None else args)
        cli = AuditCLI(
            trainer_class=AuditTrainer,
            args=None if args is None else ["audit", *args],
            save_config_callback=None,
            trainer_defaults={"logger": False, "enable_checkpointing": False, "enable_model_summary": False},
        )
    except ValueError as error:  # AuditInputError, or a ValueError of the audit naming what would work
        print(f"lightning-cam audit: error: {error}", file=sys.stderr)
        return 2
    return cli.trainer.exit_code
