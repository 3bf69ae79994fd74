"""Never disturb training: bit-identical runs, DDP, mixed precision, compiled models, faults, memory."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import CNN_METHODS, SmallCNN
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lit_helpers import TinyClassifier, loaders, run_ddp_script, trainer
from torch import nn

import lightning_cam as lc
import lightning_cam.monitor.check as check_module
from lightning_cam import CAMMonitor

ROOT = Path(__file__).resolve().parents[1]


class Classifier(pl.LightningModule):
    """The test CNN with BatchNorm, dropout and in-place ReLUs, Adam and a StepLR schedule."""

    def __init__(self, network: nn.Module | None = None) -> None:
        super().__init__()
        self.net = network if network is not None else SmallCNN(num_classes=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)}


def fit_state(tmp_path: Path, callbacks: list, **kwargs: object) -> dict[str, object]:
    pl.seed_everything(0, verbose=False)
    train, val = loaders(num_train=48, num_val=16, batch_size=8)
    model = Classifier()
    fit = trainer(tmp_path, callbacks, max_epochs=3, **kwargs)
    fit.fit(model, train, val)
    optimizer = fit.optimizers[0]
    return {
        "model": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": fit.lr_scheduler_configs[0].scheduler.state_dict(),
        "rng": (torch.random.get_rng_state(), torch.rand(3)),
    }


def assert_bitwise_equal(a: object, b: object, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path} keys differ"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path} lengths differ"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{path}[{index}]")
    else:
        assert a == b, f"{path}: {a} != {b}"


@pytest.mark.slow
def test_fit_is_bit_identical_with_and_without_the_monitor(tmp_path: Path) -> None:
    options = {"accumulate_grad_batches": 3, "val_check_interval": 2}  # validation inside a window
    without = fit_state(tmp_path / "without", [], **options)
    every_epoch = CAMMonitor(
        methods=list(CNN_METHODS),
        num_samples=4,
        faithfulness=("deletion", "insertion", "road"),
        sanity_every_n_checks=1,
        audit=True,
        audit_every_n_epochs=1,
        strategies=True,  # clustering and the transplant forwards change nothing either
        strict=True,
    )
    every_step = CAMMonitor(
        methods=["gradcam", "scorecam"], num_samples=4, every_n_train_steps=1, strict=True
    )
    with_monitors = fit_state(tmp_path / "with", [every_epoch, every_step], **options)
    assert every_epoch.checks >= 3 and every_step.checks >= 3
    assert (
        every_epoch.audit_result is not None and every_epoch.audit_result.figures["all"]["count"].value == 16
    )
    assert every_epoch.audit_result.strategies  # the strategies ran on every audit
    assert_bitwise_equal(without, with_monitors)


def test_ddp_rank_zero_alone_computes_and_matches_single_process(tmp_path: Path) -> None:
    rank0, rank1 = run_ddp_script("ddp_fit.py", tmp_path, str(ROOT))
    assert rank1 == {"checks": 0, "captured": False, "maps": 0}  # rank 1 neither captured nor computed
    assert rank0["checks"] == 2
    pngs = sorted(p.name for p in (tmp_path / "cam" / "predicted").glob("*.png"))
    assert len(pngs) == 2  # one writer, rank 0
    model = TinyClassifier()
    model.load_state_dict(rank0["state_dict"])
    single = lc.explain(model, rank0["images"], ["gradcam", "layercam"])
    for name, value in single.items():
        torch.testing.assert_close(rank0["maps"][name], value, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fsdp2_every_rank_explains_in_step_and_training_is_unchanged(tmp_path: Path) -> None:
    """ModelParallelStrategy (FSDP2) on 2 CPU processes: both ranks run every check on rank 0's fixed
    batch and the audit and strategies collectively; rank 0 writes the one page."""
    rank0, rank1 = run_ddp_script("fsdp_fit.py", tmp_path, str(ROOT))
    assert rank0["checks"] == rank1["checks"] == 2 and rank0["audited"] == rank1["audited"] == 32
    assert rank0["tags"] == rank1["tags"] and "audit/strategies/count" in rank0["tags"]
    assert rank0["strategies"] == rank1["strategies"] != []
    assert_bitwise_equal(rank0["without"], rank0["with"])  # training never changed by the monitor
    model = TinyClassifier()
    model.load_state_dict(rank0["with"])  # the gathered weights, in one process
    single = lc.explain(model.eval(), rank0["images"], ["gradcam", "layercam"])
    for name, value in single.items():
        torch.testing.assert_close(rank0["maps"][name], value, atol=1e-5, rtol=0)
    _, val = loaders(num_train=64, num_val=32, batch_size=8, with_masks=True)
    alone = lc.audit(
        model, val, ["gradcam", "layercam"], "auto", "predicted", progress=False, strategies=True
    )
    members = [(c, k, sorted(indices)) for c, k, indices in rank0["strategies"]]  # order: by float distance
    assert [(s.class_index, s.number, sorted(s.indices)) for s in alone.strategies] == members
    assert (tmp_path / "cam_report.html").exists() and len(list(tmp_path.rglob("cam_report.html"))) == 1


def test_deepspeed_and_tensor_parallelism_are_refused_and_sharding_turns_the_sanity_check_off() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    from lightning_cam.monitor.trainer_io import check_strategy

    monitor = CAMMonitor()
    fake_trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy))
    with pytest.raises(
        MisconfigurationException, match=r"does not support DeepSpeedStrategy.*ModelParallelStrategy"
    ):
        monitor.setup(fake_trainer, TinyClassifier(), "fit")

    class Mesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name: str) -> SimpleNamespace:
            return SimpleNamespace(size=lambda: 2 if name == "tensor_parallel" else 1)

    tensor_parallel = type("ModelParallelStrategy", (), {"device_mesh": Mesh()})()
    with pytest.raises(MisconfigurationException, match=r"does not support tensor parallelism"):
        monitor.setup(SimpleNamespace(strategy=tensor_parallel), TinyClassifier(), "fit")
    sane = CAMMonitor(sanity_every_n_checks=2)
    with pytest.warns(UserWarning, match="sanity_every_n_checks is turned off under FSDPStrategy"):
        check_strategy(SimpleNamespace(strategy=FSDPStrategy.__new__(FSDPStrategy)), sane.config, sane.faults)
    assert sane.config.sanity_every_n_checks is None


def recorded_explanations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, object]]:
    records: list[tuple[dict, object]] = []
    original = check_module.explain_batch

    def recording(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        records.append((kwargs, result))
        return result

    monkeypatch.setattr(check_module, "explain_batch", recording)
    return records


@pytest.mark.parametrize(
    ("perturbation_autocast", "options", "tolerance"),
    [(False, {}, 1e-5), (True, {"autocast_dtype": torch.bfloat16}, 0.05)],
    ids=["float32 by default", "perturbation autocast"],
)
def test_bf16_mixed_maps_are_float32_and_match_float32(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    perturbation_autocast: bool,
    options: dict,
    tolerance: float,
) -> None:
    records = recorded_explanations(monkeypatch)
    torch.manual_seed(0)
    train, val = loaders()
    model = TinyClassifier()
    monitor = CAMMonitor(
        methods=["gradcam", "scorecam"],
        num_samples=4,
        perturbation_autocast=perturbation_autocast,
        strict=True,
    )
    trainer(tmp_path, [monitor], max_epochs=1, precision="bf16-mixed").fit(model, train, val)
    used, result = records[-1]
    assert used["options"] == options  # the perturbation forwards run under autocast only when asked
    reference = lc.explain(model, monitor.fixed.images, ["gradcam", "scorecam"])
    for name, value in result.maps.items():
        assert value.dtype == torch.float32 and torch.isfinite(value).all()
        assert (value - reference[name]).abs().mean() <= tolerance
    torch.testing.assert_close(result.maps["gradcam"], reference["gradcam"], atol=1e-5, rtol=0)


def test_compiled_network_is_explained_eagerly_without_recompiling(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    def compiled_fit(callbacks: list) -> int:
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        train, val = loaders()
        model = TinyClassifier()
        model.net = torch.compile(model.net, backend="eager")
        trainer(tmp_path, callbacks, max_epochs=2).fit(model, train, val)
        return counters["stats"]["unique_graphs"]

    with pytest.warns(UserWarning, match="net is torch.compile'd; pass model_attr='net'"):
        compiled_fit([CAMMonitor(methods=["gradcam"], num_samples=4)])
    baseline = compiled_fit([])
    monitor = CAMMonitor(methods=["gradcam", "guided_backprop"], num_samples=4, model_attr="net", strict=True)
    with_monitor = compiled_fit([monitor])
    assert monitor.checks == 2
    assert with_monitor == baseline  # the callback caused no recompilation


def test_frozen_backbone_channels_last_and_dict_outputs(tmp_path: Path) -> None:
    class DictOutput(Classifier):
        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(images), "features": images.mean((2, 3))}

        def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0])["logits"], batch[1])

        def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
            self.log("val_loss", F.cross_entropy(self(batch[0])["logits"], batch[1]))

    torch.manual_seed(0)
    train, val = loaders()
    model = DictOutput().to(memory_format=torch.channels_last)
    for parameter in model.net.features.parameters():
        parameter.requires_grad_(False)
    monitor = CAMMonitor(methods=["gradcam", "saliency"], num_samples=4, output_key="logits", strict=True)
    trainer(tmp_path, [monitor], max_epochs=1).fit(model, train, val)
    assert monitor.checks == 1
    assert all(not p.requires_grad for p in model.net.features.parameters())
    assert all(p.grad is None for p in model.net.features.parameters())


class CannotBatchAblations(pl.LightningModule):
    """Reshapes with the input's batch size, so Ablation-CAM cannot run its ablated copies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).reshape(x.shape[0], -1))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_failing_method_is_reported_once_and_the_others_go_on(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(methods=["gradcam", "ablationcam"], target_layer="conv", num_samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(tmp_path, [monitor], max_epochs=3)
        fit.fit(CannotBatchAblations(), train, val)
    assert fit.current_epoch == 3
    reports = [str(w.message) for w in caught if "ablationcam failed" in str(w.message)]
    assert len(reports) == 1
    assert "Traceback" in reports[0] and "use scorecam" in reports[0]
    assert monitor.faults.failed_methods == {"ablationcam"}
    assert len(list((tmp_path / "cam" / "predicted").glob("*.png"))) == 3  # gradcam at every check
    with pytest.raises(ValueError, match="ablationcam runs the layers after 'conv'"):
        strict = CAMMonitor(
            methods=["gradcam", "ablationcam"], target_layer="conv", num_samples=4, strict=True
        )
        trainer(tmp_path / "strict", [strict], max_epochs=1).fit(CannotBatchAblations(), train, val)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_two_hundred_checks_do_not_grow_memory_tensors_or_hooks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    model = TinyClassifier()
    monitor = CAMMonitor(methods=["gradcam", "gradcam++", "scorecam"], num_samples=8, strict=True)
    fit = trainer(tmp_path, [monitor], max_epochs=1)
    fit.fit(model, train, val)
    samples = []
    for index in range(200):
        monitor.run_check(fit, model)
        if index in (99, 199):
            gc.collect()
            tensors = sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))
            samples.append((resident_bytes(), tensors))
    (rss_100, tensors_100), (rss_200, tensors_200) = samples
    assert tensors_200 <= tensors_100  # nothing accumulates from check to check
    assert rss_200 <= rss_100 * 1.03
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )
    assert hooks == 0
    assert all(
        len(entries) == monitor.config.timeline_length for entries in monitor.history.timeline.values()
    )


def test_under_sharding_a_failure_of_any_rank_stops_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import lightning_cam.monitor.trainer_io as trainer_io
    from lightning_cam.auditing.shards import OtherRankError

    fake = SimpleNamespace(
        world_size=2, callback_metrics={}, strategy=SimpleNamespace(broadcast=lambda value, src: value)
    )
    monkeypatch.setattr(trainer_io, "exchange", lambda message: [message, "RuntimeError: rank 1 alone"])
    with pytest.raises(OtherRankError, match=r"failed on rank 1: RuntimeError: rank 1 alone\. Every rank"):
        trainer_io.share_scalars(fake, {"cam/x": 1.0}, every_rank=True)  # rank 0 itself succeeded
    assert fake.callback_metrics == {}
    shared = trainer_io.share_scalars(fake, {"cam/x": 1.0})  # DDP: rank 1 never checks, rank 0's word only
    assert shared == {"cam/x": 1.0} and float(fake.callback_metrics["cam/x"]) == 1.0
