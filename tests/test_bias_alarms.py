"""Attention scalars that Lightning acts on: callback_metrics for EarlyStopping and ModelCheckpoint,
alerts, per-group slices of the bias report, and the warnings for monitors that would log nothing."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from cue_helpers import cue_fit
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import (
    TinyClassifier,
    loaders,
    read_tensorboard_images,
    read_tensorboard_scalars,
    run_ddp_script,
    trainer,
)

import lightning_cam as lc
from lightning_cam import CAMMonitor, metrics
from lightning_cam.monitor.alerts import Alert, crossed_alerts, dead_tags_message, parse_alerts
from lightning_cam.report.tables import bias_report

ROOT = Path(__file__).resolve().parents[1]
CUE = "cam/gradcam/enrichment/cue"


class MetricSpy(Callback):
    """Records ``trainer.callback_metrics[tag]`` at the end of every training epoch (where EarlyStopping looks)."""

    def __init__(self, tag: str) -> None:
        self.tag, self.values = tag, []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics[self.tag]))


@pytest.mark.slow
@pytest.mark.parametrize("cue", [True, False], ids=["cue", "control"])
def test_early_stopping_on_cue_enrichment_stops_only_when_the_cue_is_learned(
    tmp_path: Path, cue: bool
) -> None:
    spy = MetricSpy(CUE)
    stop = EarlyStopping(monitor=CUE, mode="min", divergence_threshold=4.0, patience=100)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    fit = cue_fit(tmp_path, cue, [monitor, spy, stop])
    crossed = [epoch for epoch, value in enumerate(spy.values) if value > 4.0]
    if cue:
        assert crossed, spy.values
        assert fit.current_epoch == crossed[0] + 1 < 10  # stopped right after the first check above 4
        assert stop.stopped_epoch == crossed[0]
    else:
        assert not crossed and max(spy.values) < 2.0, spy.values
        assert fit.current_epoch == 10 and stop.stopped_epoch == 0
    assert len(spy.values) == monitor.checks  # one value per check, seen by the callbacks after it


@pytest.mark.slow
def test_model_checkpoint_keeps_the_epoch_of_least_cue_enrichment(tmp_path: Path) -> None:
    spy = MetricSpy(CUE)
    keep = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor=CUE, mode="min", save_top_k=1, filename="{epoch}"
    )
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    cue_fit(tmp_path, True, [monitor, spy, keep], epochs=6, enable_checkpointing=True)
    best = min(range(len(spy.values)), key=lambda epoch: spy.values[epoch])
    assert Path(keep.best_model_path).name == f"epoch={best}.ckpt"
    assert float(keep.best_model_score) == pytest.approx(spy.values[best])
    assert spy.values[best] < max(spy.values) - 1  # the cue was learned later: the choice mattered


@pytest.mark.slow
def test_an_alert_fires_once_at_its_step_and_can_stop_the_fit(tmp_path: Path) -> None:
    spy = MetricSpy(CUE)
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=8, alerts={CUE: 4.0}, stop_on_alert=True, strict=True
    )
    with pytest.warns(UserWarning, match="CAMMonitor alert") as record:
        fit = cue_fit(tmp_path, True, [monitor, spy], logger=logger)
    alerts = [str(w.message) for w in record if "CAMMonitor alert" in str(w.message)]
    first = next(epoch for epoch, value in enumerate(spy.values) if value > 4.0)
    step = (first + 1) * 8  # 256 images in batches of 32
    assert len(alerts) == 1
    assert f"{CUE} = {spy.values[first]:.4g} rose above 4 at step {step}" in alerts[0]
    assert "cam/predicted/grid at step" in alerts[0] and "Stopping training" in alerts[0]
    assert fit.current_epoch == first + 1 < 10 and len(spy.values) == first + 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    texts = accumulator.Tensors("cam/alerts/text_summary")
    assert [event.step for event in texts] == [step]


@pytest.mark.slow
def test_an_alert_without_stopping_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=8, alerts={CUE: 4.0, "cam/gradcam/mass/object": "<0.5"}
    )
    with pytest.warns(UserWarning) as record:
        fit = cue_fit(tmp_path, True, [monitor], epochs=8)
    messages = [str(w.message) for w in record if "CAMMonitor alert" in str(w.message)]
    assert sum(CUE in m for m in messages) == 1  # above 4 at several checks, said once
    assert sum("mass/object" in m and "fell below 0.5" in m for m in messages) == 1
    assert fit.current_epoch == 8 and monitor.fired_alerts == {CUE, "cam/gradcam/mass/object"}


@pytest.mark.slow
def test_group_slices_show_the_group_that_carries_the_cue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    with caplog.at_level("INFO"):
        fit = cue_fit(tmp_path, None, [monitor], epochs=12, logger=logger)
    fixed = monitor.fixed
    assert fixed is not None and fixed.labels is not None and set(fixed.groups) == {"cued", "plain"}
    last = monitor.history.last
    cued, plain = last["gradcam/cue/group=cued"], last["gradcam/cue/group=plain"]
    # Seeds 0-4 (benchmarks/seed_margins.py, lightning 2.6.6): cued / plain enrichment 3.27, 10.8, 16.0,
    # 5.31, 4.58. Each group's accuracy (5 and 3 samples) moves by a sample between seeds (cued 0.4-1.0,
    # plain 0-0.67): no bound holds it, so it is checked against the model's own predictions.
    assert cued["enrichment"] > 2 * plain["enrichment"]
    with torch.no_grad():
        correct = (fit.lightning_module.eval()(fixed.images).argmax(1) == fixed.labels).tolist()
    for name, group in (("cued", cued), ("plain", plain)):
        members = [hit for hit, g in zip(correct, fixed.groups, strict=True) if g == name]
        assert group["count"] == len(members) and group["accuracy"] == pytest.approx(
            sum(members) / len(members)
        )
    assert cued["count"] + plain["count"] == 8
    scalars = read_tensorboard_scalars(logger.log_dir, f"{CUE}/cued")
    assert scalars[-1][1] == pytest.approx(cued["enrichment"])
    assert read_tensorboard_scalars(logger.log_dir, "cam/accuracy/plain")[-1][1] == pytest.approx(
        plain["accuracy"]
    )
    assert "| gradcam | cue | group=cued |" in caplog.text and "group=plain (" in caplog.text


def test_groups_by_integer_id_are_named_by_group_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    masks = torch.zeros(8, 16, 16)
    masks[:, :4, :4] = 1
    groups = torch.tensor([0, 1] * 4)
    val = torch.utils.data.DataLoader(list(zip(images, labels, masks, groups, strict=True)), batch_size=4)
    train, _ = loaders()
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, group_names=["site_a", "site_b"], strict=True)
    trainer(tmp_path, [monitor], max_epochs=1).fit(TinyClassifier(), train, val)
    assert monitor.fixed.groups is not None and sorted(set(monitor.fixed.groups)) == [0, 1]
    assert {"gradcam/mask/group=site_a", "gradcam/mask/group=site_b"} <= set(monitor.history.last)


def dict_batches(groups: bool) -> torch.utils.data.DataLoader:
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    masks = torch.zeros(8, 16, 16)
    masks[:, :4, :4] = 1
    samples = [
        {"image": i, "label": y, "mask": m} | ({"group": g} if groups else {})
        for i, y, m, g in zip(images, labels, masks, [0, 1] * 4, strict=True)
    ]
    return torch.utils.data.DataLoader(samples, batch_size=4)


class DictValidation(TinyClassifier):
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_loss", torch.nn.functional.cross_entropy(self(batch["image"]), batch["label"]))


def images_labels_masks(batch: dict) -> tuple:
    return batch["image"], batch["label"], {"tag": batch["mask"]}


def test_a_custom_unpack_keeps_the_groups_its_dict_batch_carries(tmp_path: Path) -> None:
    """The unpack returns (images, labels, masks); the group is still read from the batch's key."""
    torch.manual_seed(0)
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=8, unpack=images_labels_masks, group_names=["a", "b"], strict=True
    )
    trainer(tmp_path, [monitor], max_epochs=1).fit(DictValidation(), loaders()[0], dict_batches(groups=True))
    assert sorted(set(monitor.fixed.groups)) == [0, 1]
    assert {"gradcam/tag/group=a", "gradcam/tag/group=b"} <= set(monitor.history.last)
    result = lc.audit(
        TinyClassifier().net, dict_batches(groups=True), unpack=images_labels_masks, progress=False
    )
    assert {"group=0", "group=1"} <= set(result.figures)


def test_group_names_without_groups_in_any_batch_say_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, group_names=["a", "b"], group_key="site")
    with pytest.warns(UserWarning, match=r"group_names=\['a', 'b'\] but no batch carried groups.*'site'"):
        trainer(tmp_path, [monitor], max_epochs=1).fit(
            DictValidation(), loaders()[0], dict_batches(groups=False)
        )
    with pytest.warns(UserWarning, match=r"audit got group_names=\['a', 'b'\] but no batch carried groups"):
        lc.audit(TinyClassifier().net, dict_batches(groups=False), group_names=["a", "b"], progress=False)


def test_alert_rules_parse_plain_values_and_fire_once() -> None:
    rules = parse_alerts({"a": 3, "b": "<0.2", "c": ">1.5"})
    assert rules == [Alert("a", 3.0), Alert("b", 0.2, above=False), Alert("c", 1.5)]
    fired: set[str] = set()
    events = crossed_alerts(rules, {"a": 3.5, "b": 0.3, "c": float("nan")}, 10, fired)
    assert [(e.alert.tag, e.value, e.step) for e in events] == [("a", 3.5, 10)]
    assert crossed_alerts(rules, {"a": 9.0, "b": 0.1}, 20, fired)[0].alert.tag == "b" and fired == {"a", "b"}
    with pytest.raises(ValueError, match=r"alerts\['a'\] = 'high' is not a threshold"):
        parse_alerts({"a": "high"})
    with pytest.raises(ValueError, match="alerts must map"):
        CAMMonitor(alerts=[3.0])  # type: ignore[arg-type]


def test_slice_means_and_the_report_by_hand() -> None:
    values = torch.tensor([1.0, float("nan"), 3.0, 5.0])
    membership = torch.tensor(
        [[True, True, True, True], [True, True, False, False], [False, True, False, False]]
    )
    means = metrics.slice_means(values, membership)
    assert means[:2].tolist() == [3.0, 1.0] and math.isnan(means[2])
    record = {"mass": 0.1, "enrichment": 6.4, "area": 0.0156, "count": 8, "accuracy": 0.5, "step": 16}
    peak = dict(record, enrichment=9.0, mass=0.14, step=8)
    first = dict(record, enrichment=1.0, mass=0.02, step=4)
    report = bias_report({"g/cue/all": first}, {"g/cue/all": peak}, {"g/cue/all": record})
    assert report.rows == [["g", "cue", "all", 8, "50%", 0.0156, 0.02, 0.14, 0.1, 1.0, 9.0, 8, 6.4]]
    assert report.readings == [
        "g puts 10% of its mass on `cue` (2% of the image): 6.4x enrichment (first check: 2%, 1.0x; "
        "peak: 14%, 9.0x at step 8)"
    ]
    flat_first = dict(first, mass=float("nan"), enrichment=float("nan"))  # every map flat at the first check
    (reading,) = bias_report({"g/cue/all": flat_first}, {"g/cue/all": peak}, {"g/cue/all": record}).readings
    assert "(first check: no figure, flat maps; peak: 14%, 9.0x at step 8)" in reading


def test_a_mask_empty_on_some_images_is_measured_on_the_images_that_carry_it(tmp_path: Path) -> None:
    """``cue`` on group a's four images (4x4 of 16x16: 6.25 %), empty on group b's: the report's area is
    over the same images as the enrichment, and group b is said to carry no cue, with no peak step."""
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3] * 2)
    cue = torch.zeros(8, 16, 16)
    cue[:4, :4, :4] = 1
    samples = [
        {"image": i, "label": y, "mask": {"cue": m}, "group": g}
        for i, y, m, g in zip(images, labels, cue, ["a"] * 4 + ["b"] * 4, strict=True)
    ]
    monitor = CAMMonitor(methods=["gradcam"], num_samples=8, strict=True)
    val = torch.utils.data.DataLoader(samples, batch_size=4)
    trainer(tmp_path, [monitor], max_epochs=1).fit(DictValidation(), loaders()[0], val)
    assert monitor.history.last["gradcam/cue/all"]["area"] == pytest.approx(0.0625)  # not 0.03125
    report = bias_report(monitor.history.first, monitor.history.peak, monitor.history.last)
    (group_b,) = [line for line in report.readings if line.startswith("group=b")]
    assert group_b == "group=b: no figure for `cue` at the last check (no image carries it)"
    (row,) = [row for row in report.rows if row[2] == "group=b"]
    assert row[5] == "n/a" and row[-2] == "n/a"  # no area, no peak step beside a missing peak


def test_scalars_reach_callback_metrics_under_two_process_ddp(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_script("ddp_alarms.py", tmp_path, str(ROOT / "tests"))
    assert rank0["checks"] >= 1 and rank1["checks"] == 0  # rank 1 computed nothing...
    assert (
        rank1["values"] == rank0["values"] and len(rank0["values"]) == rank0["epochs_run"]
    )  # ...but saw every value
    assert rank1["epochs_run"] == rank0["epochs_run"] < 10  # both stopped together, on the cue
    assert rank0["stopped_epoch"] == rank1["stopped_epoch"] > 0
    assert (
        Path(rank0["best_model_path"]).name
        == f"epoch={min(range(len(rank0['values'])), key=rank0['values'].__getitem__)}.ckpt"
    )


def test_import_does_not_import_lightning() -> None:
    code = (
        "import lightning_cam, sys; assert 'lightning' not in sys.modules; lightning_cam.explain; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "lightning_cam", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: lightning-cam" in help_text and "demo" in help_text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"limit_val_batches": 0},
            r"every_n_epochs=1\) will never check: limit_val_batches=0.*every_n_train_steps",
        ),
        ({"check_val_every_n_epoch": 3}, r"after epoch 3 but max_epochs=2"),
    ],
)
def test_a_monitor_that_would_never_check_says_so(tmp_path: Path, options: dict, message: str) -> None:
    train, val = loaders()
    with pytest.warns(UserWarning, match=message):
        trainer(tmp_path, [CAMMonitor(num_samples=4)], **options).fit(TinyClassifier(), train, val)


def test_validate_test_and_predict_say_that_they_log_nothing_and_log_nothing(tmp_path: Path) -> None:
    _, val = loaders()
    monitor = CAMMonitor(num_samples=4)
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    for run in (fit.validate, fit.test, fit.predict):
        stage = run.__name__
        with pytest.warns(
            UserWarning, match=rf"trainer.{stage}\(\) logs nothing from it.*lightning_cam.explain"
        ):
            run(_Testable(), val)
    assert monitor.checks == 0 and monitor.fixed is None  # validate() used to capture and log a check
    assert not (tmp_path / "cam").exists()


class _Testable(TinyClassifier):
    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self(batch[0])


def test_two_monitors_need_names_and_then_log_apart(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    with pytest.warns(UserWarning, match=r"2 CAMMonitors log under the same tags 'cam/\.\.\.'.*name='cam_2'"):
        same_tags = [CAMMonitor(num_samples=4), CAMMonitor(methods=["layercam"], num_samples=4)]
        trainer(tmp_path / "a", same_tags, max_epochs=1).fit(TinyClassifier(), train, val)
    logger = TensorBoardLogger(tmp_path, name="tb")
    first, second = (
        CAMMonitor(num_samples=4),
        CAMMonitor(methods=["layercam"], num_samples=4, name="cam_fast"),
    )
    assert first.state_key != second.state_key
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec).*")
        trainer(tmp_path, [first, second], logger=logger, max_epochs=1).fit(TinyClassifier(), train, val)
    assert len(read_tensorboard_images(logger.log_dir, "cam/predicted/grid")) == 1
    assert len(read_tensorboard_images(logger.log_dir, "cam_fast/predicted/grid")) == 1
    assert read_tensorboard_scalars(logger.log_dir, "cam_fast/layercam/seconds")


def test_an_alert_on_a_tag_no_check_logs_is_named_with_the_tags_that_exist(tmp_path: Path) -> None:
    train, val = loaders(with_masks=True)  # the mask is named "mask": there is no "cue"
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=4, alerts={CUE: 3.0, "cam/gradcam/flat_fraction": 0.9}, strict=True
    )
    with pytest.warns(UserWarning, match="logged no scalar") as record:
        trainer(tmp_path, [monitor], max_epochs=2).fit(TinyClassifier(), train, val)
    (message,) = [
        str(w.message) for w in record if "logged no scalar" in str(w.message)
    ]  # once, not per check
    assert f"{CUE!r}, waited for by an alert (closest logged: cam/gradcam/enrichment/mask" in message
    assert "flat_fraction" not in message  # a tag the check logs can fire: not named
    assert dead_tags_message({"cam/gradcam/drift": []}, {"a": 1.0}) is None  # drift comes with a second check
    without_audit = dead_tags_message({"audit/count/all": ["an alert"]}, {"a": 1.0})  # audit=False: never
    assert without_audit is not None and "an audit tag without audit=True" in without_audit


def test_the_shortcut_preset_without_a_cue_mask_names_the_missing_tag_before_checkpointing_fails(
    tmp_path: Path,
) -> None:
    """callbacks/shortcut_alert.yaml's ModelCheckpoint on the cue enrichment, batches without a cue."""
    train, val = loaders(with_masks=True)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, alerts={CUE: 3.0})
    keep = ModelCheckpoint(monitor=CUE, mode="min")
    with pytest.warns(UserWarning, match="logged no scalar") as record, pytest.raises(Exception, match=CUE):
        trainer(tmp_path, [monitor, keep], max_epochs=1, enable_checkpointing=True).fit(
            TinyClassifier(), train, val
        )
    (message,) = [str(w.message) for w in record if "logged no scalar" in str(w.message)]
    assert f"waited for by an alert and ModelCheckpoint(monitor={CUE!r})" in message
