"""Strategies: Spectral Relevance Analysis of each class's maps, each strategy tested on the model by
occlusion and transplant, a shortcut suspect flagged without any mask of it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lit_helpers import read_tensorboard_images, read_tensorboard_scalars, trainer
from strategy_helpers import TAG, PlantedClassifier, planted_model, planted_train_loader, planted_validation

import lightning_cam as lc
from lightning_cam import CAMMonitor
from lightning_cam.auditing.spray import cluster_maps, small_maps
from lightning_cam.auditing.strategies import Strategy, strategy_scalars


def test_small_maps_have_unit_mass_and_flat_maps_are_nan() -> None:
    maps = torch.rand(3, 32, 32)
    maps[1] = 0.0
    small = small_maps(maps)
    assert small.shape == (3, 256)
    assert small[[0, 2]].sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert bool(small[1].isnan().all())
    with pytest.raises(ValueError, match=r"2-D maps.*volumes are not supported"):
        small_maps(torch.rand(2, 4, 8, 8))


def test_two_spots_make_two_clusters_and_noise_makes_one() -> None:
    torch.manual_seed(0)
    left, right = torch.zeros(30, 64), torch.zeros(20, 64)
    left[:, 0], right[:, 63] = 1.0, 1.0
    maps = torch.cat([left, right]) + 0.01 * torch.rand(50, 64)
    maps[7] = float("nan")  # a flat map: in no cluster
    labels = cluster_maps(maps)
    assert labels[7] == -1 and labels[:7].eq(0).all() and labels[8:30].eq(0).all() and labels[30:].eq(1).all()
    assert cluster_maps(torch.rand(120, 64)).eq(0).all()  # no gap in the spectrum: one strategy


def test_without_scikit_learn_the_message_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install lightning-cam\[strategies\]"):
        cluster_maps(torch.rand(10, 16))


def strategy(**changes: object) -> Strategy:
    region = torch.zeros(48, 48, dtype=torch.bool)
    region[0:3, 0:6] = True
    values = {
        "class_index": 0,
        "class_name": "disk",
        "number": 0,
        "indices": [4, 9],
        "size": 2,
        "share": 0.25,
        "accuracy": 1.0,
        "confidence": 0.9,
        "mean_map": torch.zeros(48, 48),
        "region": region,
        "region_area": 18 / 2304,
        "prototypes": [4],
        "prototype_images": torch.zeros(1, 3, 48, 48),
        "occlusion_drop": 0.25,
        "flip_rate": 0.9,
        "flagged": True,
    }
    return Strategy(**(values | changes))  # type: ignore[arg-type]


def test_scalars_and_words_of_strategies() -> None:
    found = [
        strategy(),
        strategy(number=1, size=6, flagged=False, flip_rate=float("nan")),
        strategy(class_name="a/b"),
    ]
    scalars = strategy_scalars(found)
    assert scalars["audit/strategies/flagged"] == 2
    assert scalars["audit/strategies/disk/count"] == 2 and scalars["audit/strategies/a_b/count"] == 1
    assert scalars["audit/strategies/disk/1/size"] == 6 and math.isnan(
        scalars["audit/strategies/disk/1/flip_rate"]
    )
    assert found[0].words() == (
        "class `disk`, 2 images (25%): attention on a 0.8% patch at the top left; pasting it turns 90% more of "
        "other classes' images into `disk` than other content there does; covering it drops their confidence "
        "by 0.25: shortcut suspect"
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_planted_tag_is_one_flagged_strategy_on_the_tag_and_a_control_flags_nothing(seed: int) -> None:
    """Over seeds 0-4 the tag strategy had purity 1.00, recall 0.95-1.00, a spot overlapping the tag with
    its centre at most 8.5 px from the corner, excess flip rate 0.63-1.00; the control (trained without
    the tag) flagged nothing (benchmarks/seed_margins.py)."""
    val, tagged = planted_validation()
    tag_images = set(tagged.nonzero().flatten().tolist())
    result = lc.audit(
        planted_model(seed, tag=True), val, "gradcam", targets="predicted", progress=False, strategies=True
    )
    flagged = [s for s in result.strategies if s.flagged]
    assert flagged and flagged[0].class_index == 0
    members = set(flagged[0].indices)
    assert len(members & tag_images) / len(members) > 0.8  # purity
    assert len(members & tag_images) / len(tag_images) > 0.75  # recall
    region = flagged[0].region  # the smallest spot that carries the class: on the tag, or touching it
    rows, columns = region.nonzero(as_tuple=True)
    assert bool(region[TAG].any()) and max(rows.float().mean(), columns.float().mean()) < TAG[0].stop + 4
    assert flagged[0].region_area <= 0.05 and flagged[0].flip_rate >= 0.5
    assert result.scalars()["audit/strategies/flagged"] == len(flagged)
    control = lc.audit(
        planted_model(seed, tag=False), val, "gradcam", targets="predicted", progress=False, strategies=True
    )
    assert control.strategies and not any(s.flagged for s in control.strategies)


@pytest.mark.slow
def test_the_monitor_finds_the_planted_tag_and_puts_it_on_the_page(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    pl.seed_everything(0, verbose=False)
    val, _ = planted_validation()
    monitor = CAMMonitor(
        methods=["gradcam"],
        num_samples=8,
        audit=True,
        strategies=True,
        audit_bootstrap_samples=0,
        report=True,
    )
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [monitor], max_epochs=8, logger=logger).fit(
        PlantedClassifier(), planted_train_loader(0), val
    )
    metrics = monitor.audit_result.scalars()
    assert metrics["audit/strategies/flagged"] >= 1 and "audit/strategies/0/0/flip_rate" in metrics
    assert read_tensorboard_scalars(logger.log_dir, "audit/strategies/flagged")[-1][1] >= 1
    assert read_tensorboard_images(logger.log_dir, "audit/strategies/prototypes")
    page = (Path(logger.log_dir) / "cam_report.html").read_text()
    assert "Strategies the model uses" in page and "shortcut suspect" in page and "at the top left" in page


def test_strategies_need_the_audit() -> None:
    with pytest.raises(ValueError, match=r"CAMMonitor\(audit=True, strategies=True\)"):
        CAMMonitor(strategies=True)
