"""Strategies: Spectral Relevance Analysis of each class's maps, each strategy tested on the model by
occlusion and transplant, a shortcut suspect flagged without any mask of it."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lit_helpers import read_tensorboard_images, read_tensorboard_scalars, trainer
from strategy_helpers import (
    CONTROLS,
    CUES,
    TAG,
    PlantedClassifier,
    audit_planted,
    cue_statistics,
    planted_model,
    planted_train_loader,
    planted_validation,
)
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

import lightning_cam as lc
import lightning_cam.auditing.run as audit_run
from lightning_cam import CAMMonitor
from lightning_cam.auditing import spray
from lightning_cam.auditing.patterns import (
    FLOOR,
    ON_PATTERN,
    dilated,
    kth_smallest,
    max_filter,
    pattern_near,
    pattern_region,
    repeated_map,
    repetition,
)
from lightning_cam.auditing.spray import cluster_classes, cluster_maps, kmeans, small_maps
from lightning_cam.auditing.strategies import (
    MAX_TESTED,
    TAGGED_STRATEGIES,
    Strategy,
    strategy_rank,
    strategy_report,
    strategy_scalars,
)
from lightning_cam.monitor.suspects import SuspectHistory


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


def test_classes_clustered_together_get_the_labels_of_each_graphs_full_decomposition() -> None:
    """The eigenvectors are computed only where the eigenvalues show a gap: the labels are those of the
    full decomposition of every graph, whatever the number of blobs (1 to 4) and their spread."""
    generator = torch.Generator().manual_seed(0)
    classes = [torch.zeros(30, 256) for _ in range(32)]
    for number, noise in enumerate(classes):  # noise in a few dimensions: near ties in the spectrum
        noise[:, : 1 + number % 4] = torch.rand(30, 1 + number % 4, generator=generator)
    for number in range(32):
        centres = torch.rand(1 + number % 4, 256, generator=generator)
        spread = 3 * float(torch.rand(1, generator=generator)) / 16
        classes.append(
            centres[torch.arange(30) % len(centres)] + spread * torch.rand(30, 256, generator=generator)
        )
    points = torch.stack(classes).double()
    adjacency, count = spray._adjacencies(points), spray.MAX_CLUSTERS + 1
    values, vectors = torch.linalg.eigh(adjacency)
    laplacians, vectors = (1.0 - values.flip(-1)[:, :count]).numpy(), vectors.flip(-1)[:, :, :count].numpy()
    full = [spray._labels(value, vector) for value, vector in zip(laplacians, vectors, strict=True)]
    found = cluster_classes(classes)
    assert all(np.array_equal(f.numpy(), e) for f, e in zip(found, full, strict=True))
    assert 16 <= sum(int(f.max()) > 0 for f in found) < 48  # both kinds: one cluster and several


@pytest.mark.parametrize("shift", range(0, 40, 7))
def test_of_two_equal_clusters_the_one_with_the_earliest_map_is_first(shift: int) -> None:
    torch.manual_seed(0)
    spots = torch.zeros(40, 64)
    spots[:20, 0], spots[20:, 63] = 1.0, 1.0
    labels = cluster_maps((spots + 0.01 * torch.rand(40, 64)).roll(shift, dims=0))
    assert labels.bincount().tolist() == [20, 20]
    assert labels[0] == 0  # whatever k-means numbered it: the order does not hang on its random starts


def test_kmeans_finds_the_partition_of_scikit_learn() -> None:
    pytest.importorskip("sklearn")
    from sklearn.cluster import KMeans

    generator = np.random.default_rng(0)
    for count in (2, 3, 5):
        centres = generator.normal(size=(count, 4))
        points = centres[generator.integers(0, count, 200)] + 0.3 * generator.normal(size=(200, 4))
        ours, theirs = kmeans(points, count), KMeans(count, n_init=10, random_state=0).fit_predict(points)
        pairs = set(zip(ours.tolist(), theirs.tolist(), strict=True))
        assert len(pairs) == count  # the same partition: each of our clusters is one of theirs


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
        "on_pattern": True,
        "prototypes": [4],
        "prototype_images": torch.zeros(1, 3, 48, 48),
        "repetition": 0.9,
        "occlusion_drop": 0.25,
        "transplant_gain": 0.75,
        "flip_rate": 0.9,
        "reliance": 0.5,
        "evidence": 0.45,
        "flagged": False,
    }
    return Strategy(**(values | changes))  # type: ignore[arg-type]


def test_scalars_words_and_verdicts_of_strategies() -> None:
    found = [
        strategy(flagged=True, evidence=0.6),
        strategy(number=1, size=6, evidence=0.1),
        strategy(number=2, evidence=float("nan"), transplant_gain=float("nan"), unknown="pasting: none"),
        strategy(class_name="a/b", on_pattern=False),
    ]
    assert [s.verdict for s in found] == ["shortcut suspect", "no", "cannot tell", "no"]
    assert strategy(evidence=0.3).verdict == "leans on it"  # partial reliance on a repeated pattern
    assert strategy(evidence=0.3, region_area=0.5).verdict == "global difference"  # no place to point at
    assert (
        strategy(evidence=0.3, transplant_gain=0.0, occlusion_drop=0.7).verdict == "no"
    )  # pasting moves nothing
    scalars = strategy_scalars(found)
    assert scalars["audit/strategies/flagged"] == 1 and scalars["audit/strategies/count"] == 4
    assert scalars["audit/strategies/cannot_tell"] == 1
    assert scalars["audit/strategies/evidence_max"] == pytest.approx(0.6)
    assert scalars["audit/strategies/disk/1/size"] == 6 and scalars["audit/strategies/a_b/0/evidence"] == 0.45
    assert math.isnan(scalars["audit/strategies/disk/2/evidence"])
    assert found[0].words() == (
        "class `disk`, 2 images (25%): attention on a pattern repeated in these images, a 0.8% region at the "
        "top left (repetition 0.90); covering it drops their confidence by 0.25; pasting it raises other "
        "classes' images' probability of `disk` by 0.75 and turns 90% more of them than other content there "
        "does: evidence 0.60, shortcut suspect"
    )
    assert found[2].words().endswith("pasting it cannot be tested: evidence n/a, cannot tell (pasting: none)")
    assert "with no pattern repeated across these images" in found[3].words()


def test_tags_stay_few_at_many_classes_and_the_report_says_what_was_tested() -> None:
    many = [strategy(class_name=f"c{i}", evidence=i / 100) for i in range(40)]
    scalars = strategy_scalars(many)
    assert len([tag for tag in scalars if tag.endswith("/evidence")]) == TAGGED_STRATEGIES
    assert "audit/strategies/c39/0/evidence" in scalars and "audit/strategies/c0/0/evidence" not in scalars
    report = strategy_report(many)
    assert [row[0] for row in report.rows[:2]] == ["c39", "c38"]  # by evidence
    assert sum("leans on it" in line for line in report.readings) == 40 - 20  # evidence 0.20 to 0.39
    assert report.readings[-1].startswith("no shortcut suspect among 40 strategies over 1 classes: tested")
    assert "the highest on a pattern at one place is 0.39 (class `c39`" in report.readings[-1]
    unknown = strategy_report([strategy(evidence=float("nan"), unknown="repetition: fewer than 4 images")])
    assert unknown.readings == [
        "cannot tell for 1 of 1 strategies: class `disk` #0 (repetition: fewer than 4 images)"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("cue", "seed"), [(cue, number % 5) for number, cue in enumerate(CUES)])
def test_a_planted_cue_of_any_shape_is_flagged_with_its_region_on_the_cue(cue: str, seed: int) -> None:
    """Square tags, thin lines along an edge, captions and a logo, at several places. Over seeds 0-4
    (benchmarks/seed_margins.py --only strategies) every cue was flagged, 1 to 3 strategies each, none
    off the cue, with purity 0.88-1.00 (bound 0.7), recall 0.95-1.00 (0.75), evidence 0.69-0.97 (the
    rule: 0.5), its region holding the whole cue (bound 0.8) and nothing two pixels off it (0.1)."""
    result, cued = audit_planted(seed, cue)
    found = cue_statistics(result.strategies, cued, cue)
    assert found["flagged"] >= 1 and found["not_the_cue"] == 0
    assert found["purity"] > 0.7 and found["recall"] > 0.75 and found["evidence"] >= 0.5
    assert found["coverage"] > 0.8 and found["spill"] < 0.1  # the region is the cue, whatever its shape
    assert all(s.class_index == 0 for s in result.strategies if s.flagged)
    assert result.scalars()["audit/strategies/flagged"] == found["flagged"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("control", "seed"), [(control, number % 5) for number, control in enumerate(CONTROLS)]
)
def test_controls_flag_nothing(control: str, seed: int) -> None:
    """No cue with objects as large or as small as a tag; a tag the model never saw; a tag on any class's
    images; a global tint the model relies on. Over seeds 0-4 none was flagged; the highest evidence of a
    pattern at one place was 0.07 (the rule asks 0.5)."""
    result, cued = audit_planted(seed, control)
    found = cue_statistics(result.strategies, cued, control)
    assert result.strategies and found["flagged"] == 0 and found["local_evidence"] < 0.5
    if control == "tint":  # relied on, and said: a difference over the image, not a pattern at one place
        tinted = [s for s in result.strategies if s.verdict == "global difference"]
        assert tinted and all(s.class_index == 0 and s.region_area > 0.25 for s in tinted)
        assert any("not one place" in line for line in strategy_report(result.strategies).readings)


@pytest.mark.slow
def test_the_monitor_keeps_the_runs_suspects_and_an_alert_on_an_audit_tag_stops_the_fit(
    tmp_path: Path,
) -> None:
    """An audit every epoch; the alert on ``audit/strategies/flagged`` stops the fit at the audit that
    flags the tag (over seeds 0-4 the audit after epoch 2 to 5, of 12); a misspelt audit tag is said."""
    from lightning.pytorch.loggers import TensorBoardLogger

    pl.seed_everything(0, verbose=False)
    val, _ = planted_validation()
    monitor = CAMMonitor(
        methods=["gradcam"],
        num_samples=8,
        audit=True,
        audit_every_n_epochs=1,
        strategies=True,
        audit_bootstrap_samples=0,
        report=True,
        alerts={"audit/strategies/flagged": 0.5, "audit/strategies/flaged": 0.5},
        stop_on_alert=True,
    )
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit = trainer(tmp_path, [monitor], max_epochs=12, logger=logger)
    with pytest.warns(UserWarning) as warned:
        fit.fit(PlantedClassifier(), planted_train_loader(0), val)
    said = [str(w.message) for w in warned]
    assert any("audit/strategies/flagged = " in m and "Stopping training" in m for m in said)
    (suspect,) = monitor.suspects.suspects
    assert fit.should_stop and fit.current_epoch == suspect.seen[0][0] + 1 < 12  # stopped at that audit
    dead = [m for m in said if "the first audit logged no scalar 'audit/strategies/flaged'" in m]
    assert len(dead) == 1 and "closest logged: audit/strategies/flagged" in dead[0]
    assert suspect.class_name == "0" and monitor.suspects.still_flagged(suspect)
    assert bool(suspect.region[TAG].all())  # the whole tag
    assert read_tensorboard_scalars(logger.log_dir, "audit/strategies/flagged")[-1][1] >= 1
    assert read_tensorboard_images(logger.log_dir, "audit/strategies/run_prototypes")
    page = (Path(logger.log_dir) / "cam_report.html").read_text()
    assert (
        "Shortcut suspects over the run" in page
        and "first at epoch" in page
        and "still at the last audit" in page
    )
    assert "at the top left" in page


def test_suspects_over_audits_first_last_and_gone() -> None:
    history = SuspectHistory()
    tag, elsewhere = (
        strategy(flagged=True),
        strategy(flagged=True, region=torch.zeros(48, 48, dtype=torch.bool)),
    )
    elsewhere.region[40:46, 40:46] = True
    history.add(1, 10, [tag, strategy(number=1)])
    history.add(2, 20, [strategy(flagged=True, evidence=0.9, number=3), elsewhere])  # the same place again
    history.add(3, 30, [strategy()])  # gone
    first, second = history.suspects
    assert first.seen == [(1, 10), (2, 20)] and first.evidence == 0.9 and second.seen == [(2, 20)]
    assert not history.still_flagged(first)
    report = history.report()
    assert report.rows[0][2:6] == ["epoch 1 (step 10)", "epoch 2 (step 20)", "2 of 3", "not flagged"]
    assert "no longer flags it" in report.readings[0] and "at the bottom right" in report.rows[1][1]
    restored = SuspectHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.report() == report
    assert SuspectHistory(audits=[(0, 5)]).report().readings == [
        "no shortcut suspect at any of the run's 1 audits (epoch 0 (step 5))"
    ]


def test_strategies_need_the_audit() -> None:
    with pytest.raises(ValueError, match=r"CAMMonitor\(audit=True, strategies=True\)"):
        CAMMonitor(strategies=True)


def test_a_model_that_puts_every_image_in_one_class_cannot_tell_for_that_class() -> None:
    """No image of another class is left to paste onto: that class's strategies on the tag (a pattern
    the model was trained to read) cannot tell, and the reading counts only the strategies that could be
    tested. Strategies on no pattern are not tested at all: "no", whatever the tests would say."""
    network = planted_model(0, "tag")
    with torch.no_grad():
        network.classifier.bias[0] += 100.0
    val, _ = planted_validation()
    result = lc.audit(network, val, "gradcam", progress=False, strategies=True, bootstrap_samples=0)
    zero = [s for s in result.strategies if s.class_index == 0 and s.tested]
    assert zero and all(s.verdict == "cannot tell" and math.isnan(s.evidence) for s in zero)
    untested = [s for s in result.strategies if not s.tested]
    assert all(s.verdict == "no" and (not s.on_pattern or s.repetition < 0.2) for s in untested)
    assert all("pasting: no image of another class" in s.unknown for s in zero)
    assert not any(s.flagged for s in result.strategies)
    readings = strategy_report(result.strategies).readings
    unknown = [s for s in result.strategies if s.verdict == "cannot tell"]  # class 0, and any tiny cluster
    count = len(result.strategies)
    assert readings[0].startswith(
        f"cannot tell for {len(unknown)} of {count} strategies: class `0` #0 (pasting"
    )
    assert readings[-1].startswith(
        f"no shortcut suspect among the {count - len(unknown)} of {count} strategies"
    )
    assert result.scalars()["audit/strategies/cannot_tell"] == len(unknown)


def _four_class_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()


def test_the_strategies_fetch_images_in_batches_of_the_audits_size() -> None:
    """The audit's loader has a batch sampler (its ``batch_size`` is None): the strategies' fetch still
    collates the audit's batch size at a time, not one image per call."""
    sizes: list[int] = []

    def collate(samples: list) -> object:
        sizes.append(len(samples))
        return default_collate(samples)

    network = _four_class_network()
    images, labels = torch.rand(64, 3, 16, 16), torch.arange(4).repeat_interleave(16)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, collate_fn=collate)
    lc.audit(network, loader, "gradcam", progress=False, strategies=True, bootstrap_samples=0)
    fetched = sizes[4:]  # after the audit's own 4 batches
    assert fetched and max(fetched) == 16 and all(size <= 16 for size in fetched)


class _CountedReads(Dataset):
    """Random images of 4 classes; counts the items read in this process (a worker counts in its copy)."""

    def __init__(self) -> None:
        self.images, self.labels = torch.rand(64, 3, 16, 16), torch.arange(4).repeat_interleave(16)
        self.read_here = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        self.read_here += 1
        return self.images[index], self.labels[index]


@pytest.mark.parametrize("slow", [True, False])
def test_the_strategies_images_go_through_the_loaders_workers_where_reading_them_here_is_slow(
    slow: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool (the first part) is read here, and times the reading; the tested members through the
    loader's workers where reading them here would take longer than WORKERS_WORTH_S, else here."""
    monkeypatch.setattr(audit_run, "WORKERS_WORTH_S", 0.0 if slow else float("inf"))
    network, dataset = _four_class_network(), _CountedReads()
    loader = DataLoader(dataset, batch_size=16, num_workers=1)
    result = lc.audit(network, loader, "gradcam", progress=False, strategies=True, bootstrap_samples=0)
    tested = sum(min(len(s.indices), MAX_TESTED) for s in result.strategies)
    assert result.strategies and dataset.read_here == 64 + (0 if slow else tested)  # the pool: all 64


def test_repeated_map_by_hand() -> None:
    members = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.5]]).view(3, 1, 1, 2)
    others = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.5]]).view(3, 1, 1, 2)
    # pixel 0: the members all 1 (spread 0), the others all 0 (separation 1); pixel 1: both sets 0, 1, 0.5
    # around the members' median 0.5 (squared distances 0.25, 0.25, 0: median 0.25 for both); the floor:
    # FLOOR x the others' mean variance per pixel, (0 + 1/6) / 2
    floor = FLOOR / 12
    expected = torch.tensor([[1 / (1 + floor), 0.25 / (0.25 + 0.25 + floor)]])
    torch.testing.assert_close(repeated_map(members, others), expected)
    same = torch.full((4, 3, 2, 2), 0.35)  # a pixel alike in every image is no pattern
    assert repeated_map(same, same).eq(0).all()


def test_the_pattern_region_is_the_whole_pattern_the_attention_touches() -> None:
    caption = CUES["text_bottom"][0]
    repeated = caption.float().clone()
    repeated[5:8, 5:8] = 1.0  # another pattern, elsewhere
    attention = torch.zeros(48, 48, dtype=torch.bool)
    attention[40:46, 12:16] = True  # the maps saw the first glyph only
    repeated[25, 30:32] = 1.0  # a speck of two pixels, under the attention too: chance, not a pattern
    attention[24:27, 29:33] = True
    region = pattern_region(repeated, dilated(attention, 2))
    assert bool(region[caption].all())  # every glyph: the gaps between them are bridged
    assert not region[5:8, 5:8].any()  # a pattern the attention does not touch is not this strategy's
    assert not region[23:28, 28:34].any()
    assert int(region.sum()) <= int(_grown(caption).sum())  # the glyphs and a one-pixel margin, no more
    assert not pattern_region(repeated, ~_grown(_grown(repeated >= 0.5))).any()  # attention off it: empty
    weights = torch.zeros(48, 48)
    weights[42, 14], weights[20, 10] = 3.0, 1.0
    assert repetition(repeated, weights, 2) == pytest.approx(0.75)


def _grown(mask: Tensor) -> Tensor:
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def test_a_strategy_on_no_pattern_is_not_tested_and_reads_no() -> None:
    nan = float("nan")
    untested = {"occlusion_drop": nan, "transplant_gain": nan, "flip_rate": nan, "reliance": nan}
    off = strategy(on_pattern=False, repetition=0.1, evidence=nan, tested=False, **untested)
    assert off.verdict == "no" and off.words().endswith("nothing there to lean on, not tested")
    found = [strategy(evidence=0.1), off, strategy(number=2, evidence=nan, unknown="pasting: none")]
    scalars = strategy_scalars(found)
    assert scalars["audit/strategies/cannot_tell"] == 1 and scalars["audit/strategies/evidence_max"] == 0.1
    assert [s.number for s in sorted(found, key=strategy_rank)] == [0, 2, 0]  # tested, cannot tell, untested
    (last,) = [line for line in strategy_report(found).readings if line.startswith("no shortcut")]
    assert "the 2 of 3 strategies that could be tested over 1 classes (1 of them look at no pattern" in last
    assert (
        strategy_report([off])
        .readings[0]
        .startswith("no shortcut suspect among 1 strategies over 1 classes (1 of")
    )


@pytest.mark.parametrize(
    "tag", ["none", "near", "in the box, far", "a speck at the attention", "a line out of the box"]
)
def test_pattern_near_reads_as_the_whole_map_where_the_pattern_tests_read_it(tag: str) -> None:
    torch.manual_seed(0)
    members = (torch.arange(8) % 2).float().view(8, 1, 1, 1).repeat(1, 3, 32, 32)  # half black, half white
    others = torch.rand(32, 3, 32, 32)
    if tag == "near":  # a tag repeated in every member, just outside the attention's box
        members[:, :, 20:24, 14:18] = 1.0
    if tag == "in the box, far":  # inside the box of two attention blocks, more than a cell from both
        members[:, :, 9:13, 26:30] = 1.0
    if tag == "a speck at the attention":  # on the pattern, but fewer than MIN_PIXELS pixels: chance
        members[:, :, 15, 10:12] = 1.0
    if tag == "a line out of the box":  # two pixels in the box (a speck there), the rest beyond its side
        members[:, :, 15, 16:30] = 1.0
    attention = torch.zeros(32, 32, dtype=torch.bool)
    attention[12:20, 8:14] = True
    if tag == "in the box, far":
        attention[24:28, 24:28] = True
    weights = torch.rand(32, 32) * attention
    seeds = dilated(attention, 4)
    (region, near), whole = pattern_near(members, others, seeds), repeated_map(members, others)
    assert bool((whole >= ON_PATTERN).any()) == (tag != "none")
    found = tag in ("near", "a line out of the box")  # a pattern the attention sits on
    assert bool(((whole >= ON_PATTERN) & seeds).any()) == (found or tag == "a speck at the attention")
    assert repetition(near, weights, 4) == pytest.approx(repetition(whole, weights, 4), abs=1e-6)
    assert torch.equal(region, pattern_region(whole, seeds))
    assert bool(region.any()) == found
    assert torch.equal(near, whole) == found  # the whole map only where a pattern is found


@pytest.mark.parametrize(
    ("size", "width"), [((32, 32), 1), ((32, 32), 4), ((7, 90), 3), ((224, 224), 28), ((50, 3), 40)]
)
def test_max_filter_is_max_pool_whatever_the_width(size: tuple[int, int], width: int) -> None:
    """Both ways (max_pool2d along each axis for small windows, running maxima for large ones) give
    max_pool2d's square window exactly, on values and on a bool region."""
    values = torch.rand(3, *size, generator=torch.Generator().manual_seed(width))
    for grid in (values, (values > 0.97).float()):
        expected = F.max_pool2d(grid[None], 2 * width + 1, stride=1, padding=width)[0]
        assert torch.equal(max_filter(grid, width), expected)
    assert torch.equal(dilated(values[0] > 0.97, width), expected[0] > 0)


@pytest.mark.parametrize("count", [7, 8, 32])
def test_kth_smallest_is_the_lower_median_and_the_sorted_rank(count: int) -> None:
    values = torch.randn(count, 3, 5, 4, generator=torch.Generator().manual_seed(count))
    assert torch.equal(kth_smallest(values, (count - 1) // 2), values.median(dim=0).values)
    assert torch.equal(kth_smallest(values, count // 2), values.sort(dim=0).values[count // 2])
    values[0, 0, 0, 0] = float("nan")  # ordered last, as torch.sort does
    assert torch.equal(kth_smallest(values, 1), values.sort(dim=0).values[1])
    half = values.bfloat16()  # images of a bfloat16 model: numpy has no such type
    assert torch.equal(kth_smallest(half, 1), half.sort(dim=0).values[1])
