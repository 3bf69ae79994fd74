"""Trust metrics: deletion / insertion, ROAD and the model-randomisation sanity check, against the
peers' implementations, direct solves and hand-computed values, and in CAMMonitor."""

from __future__ import annotations

import itertools
import random
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SmallCNN
from cue_helpers import CueClassifier, CueData, cue_loaders, fit_without_validation
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import TinyClassifier, loaders, read_tensorboard_scalars, trainer
from torch import nn

import lightning_cam as lc
from lightning_cam import CAMMonitor
from lightning_cam.metrics import (
    complementary_imputations,
    deletion_insertion,
    imputation,
    learnable_layers,
    model_randomization,
    noisy_linear_imputation,
    pixel_ranks,
    road,
    spearman,
)

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class GivenMaps:
    """A torch-cam CAM extractor that hands back fixed maps, so torch-cam scores our maps."""

    def __init__(self, model: nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(
        self, class_idx: object = None, scores: object = None, normalized: bool = True, **_: object
    ) -> list:
        return [self.maps]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


@pytest.fixture(scope="module")
def small_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return SmallCNN().eval(), torch.rand(4, 3, 16, 16)


def test_deletion_insertion_equal_torchcam_per_image(small_model: tuple[nn.Module, torch.Tensor]) -> None:
    from torchcam.metrics import DeletionInsertionMetric

    model, images = small_model
    maps = lc.explain(model, images, ("gradcam", "layercam"), "features.4")
    ours = deletion_insertion(model, images, maps)
    compared = 0
    for method, value in maps.items():
        for image in range(len(images)):
            if not value[image].any():  # a flat map ranks nothing: NaN here, a positional order in torchcam
                assert ours[method][0][image].isnan() and ours[method][1][image].isnan()
                continue
            compared += 1
            metric = DeletionInsertionMetric(
                GivenMaps(model, value[image : image + 1]), partial(torch.softmax, dim=-1)
            )
            metric.update(images[image : image + 1])
            theirs = metric.summary()
            assert ours[method][0][image].item() == pytest.approx(theirs["deletion_auc"], abs=1e-4)
            assert ours[method][1][image].item() == pytest.approx(theirs["insertion_auc"], abs=1e-4)
    assert compared >= len(images)


def test_deletion_insertion_by_hand_on_a_linear_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]))
    image = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    the_map = torch.tensor(
        [[[0.1, 0.9], [0.5, 0.5]]]
    )  # order: pixel 1, then 2 and 3 (tie: by position), then 0
    deletion, insertion = deletion_insertion(model, image, the_map, targets=0, steps=4)

    def p(logit: float) -> float:
        return torch.softmax(torch.tensor([logit, 0.0]), 0)[0].item()

    kept_after_deletion = [10.0, 8.0, 5.0, 1.0, 0.0]  # logit of class 0 after removing 0..4 top pixels
    kept_after_insertion = [0.0, 2.0, 5.0, 9.0, 10.0]
    expected_deletion = sum((p(a) + p(b)) / 2 * 0.25 for a, b in itertools.pairwise(kept_after_deletion))
    expected_insertion = sum((p(a) + p(b)) / 2 * 0.25 for a, b in itertools.pairwise(kept_after_insertion))
    assert deletion.item() == pytest.approx(expected_deletion, abs=1e-6)
    assert insertion.item() == pytest.approx(expected_insertion, abs=1e-6)


NEIGHBOUR_WEIGHTS = {2: {1: 1 / 6, 2: 1 / 12}, 3: {1: 1 / 14, 2: 1 / 28, 3: 1 / 56}}  # by offset order


def direct_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The same imputation by a dense solve in float64: one equation per removed pixel (or voxel)."""
    channels, size = image.shape[0], tuple(image.shape[1:])
    weights = NEIGHBOUR_WEIGHTS[len(size)]
    index = {tuple(p): i for i, p in enumerate(removed.nonzero().tolist())}
    matrix = torch.zeros(len(index), len(index), dtype=torch.float64)
    right = torch.zeros(len(index), channels, dtype=torch.float64)
    for point, row in index.items():
        for offset in itertools.product((-1, 0, 1), repeat=len(size)):
            neighbour = tuple(p + o for p, o in zip(point, offset, strict=True))
            order = sum(o != 0 for o in offset)
            if not order or not all(0 <= n < s for n, s in zip(neighbour, size, strict=True)):
                continue
            matrix[row, row] += weights[order]
            if neighbour in index:
                matrix[row, index[neighbour]] -= weights[order]
            else:
                right[row] += weights[order] * image[(slice(None), *neighbour)].double()
    solution = torch.linalg.solve(matrix, right)
    filled = image.double().clone()
    for point, row in index.items():
        filled[(slice(None), *point)] = solution[row]
    return filled


def test_imputation_in_3d_equals_a_direct_solve() -> None:
    generator = torch.Generator().manual_seed(0)
    volumes = torch.rand(2, 2, 5, 6, 4, generator=generator)
    removed = torch.rand(2, 5, 6, 4, generator=generator) < 0.6  # scattered, touching every face
    removed[1, 1:4, 1:5, :] = True  # a block through the volume
    filled = noisy_linear_imputation(volumes, removed, noise=0.0)
    for item in range(2):
        assert (filled[item].double() - direct_imputation(volumes[item], removed[item])).abs().max() < 1e-4
    kept = ~removed[:, None].expand_as(volumes)
    assert torch.equal(filled[kept], volumes[kept])


def test_deletion_and_road_on_volumes_read_voxels_as_images_read_pixels() -> None:
    """A model that flattens its input sees a 2x2x2 volume and a 2x4 image with the same values alike:
    deletion / insertion, which only rank and replace, give the same AUCs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    volumes, maps = torch.rand(3, 1, 2, 2, 2), torch.rand(3, 2, 2, 2)
    on_volumes = deletion_insertion(model, volumes, maps, steps=4)
    on_images = deletion_insertion(model, volumes.view(3, 1, 2, 4), maps.view(3, 2, 4), steps=4)
    for ours, flat in zip(on_volumes, on_images, strict=True):
        torch.testing.assert_close(ours, flat)
    larger = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    scores = road(larger, torch.rand(3, 1, 4, 4, 4), torch.rand(3, 4, 4, 4))
    assert all(value.shape == (3,) and bool(value.isfinite().all()) for value in scores.values())


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (
            torch.rand(2, 8, 8),
            r"maps must hold one map per image at the images' size, \[2, 16, 16\]; got \[2, 8, 8\]",
        ),
        ({"gradcam": torch.rand(3, 16, 16)}, r"gradcam must hold one map per image.*got \[3, 16, 16\]"),
    ],
)
def test_maps_of_the_wrong_size_say_which_size_is_needed(maps: object, message: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    for metric in (deletion_insertion, road):
        with pytest.raises(ValueError, match=message):
            metric(model, torch.rand(2, 3, 16, 16), maps)


@pytest.mark.parametrize("row_solve_limit", [64, 0], ids=["row blocks", "conjugate gradients"])
def test_imputation_equals_a_direct_solve_with_borders_and_a_full_block(
    row_solve_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both solvers (exact row-block elimination for small images, CG for large ones)."""
    monkeypatch.setattr(imputation, "ROW_SOLVE_LIMIT", row_solve_limit)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 9, 11, generator=generator)
    removed = torch.zeros(4, 9, 11, dtype=torch.bool)
    removed[0] = torch.rand(9, 11, generator=generator) < 0.5  # scattered, touching the borders
    removed[1, :, :4] = True  # the whole left border strip
    removed[2, 1:8, 2:9] = True  # a removed block
    removed[3] = True
    removed[3, 4, 5] = False  # everything but one pixel
    filled = noisy_linear_imputation(images, removed, noise=0.0)
    for image in range(4):
        expected = direct_imputation(images[image], removed[image])
        assert (filled[image].double() - expected).abs().max() < 1e-4, image
    assert torch.equal(
        filled[~removed[:, None].expand_as(images)], images[~removed[:, None].expand_as(images)]
    )


@pytest.mark.parametrize("size", [(1, 6), (2, 5), (3, 3), (4, 4), (5, 7), (8, 6), (9, 2)])
def test_row_elimination_is_exact_for_any_number_of_rows(size: tuple[int, int]) -> None:
    """The row solver eliminates the odd rows first, then the even ones: one row, two, an odd and an even
    count, wider than tall (solved transposed), each against the dense solve."""
    generator = torch.Generator().manual_seed(sum(size))
    images = torch.rand(3, 2, *size, generator=generator)
    removed = torch.rand(3, *size, generator=generator) < 0.6
    removed[0] = True
    removed[0, 0, 0] = False  # one kept pixel in a corner
    removed[1, :, : size[1] // 2] = True  # a whole strip
    removed[1:, -1, -1] = False  # each keeps a pixel
    filled = noisy_linear_imputation(images, removed, noise=0.0)
    for image in range(3):
        assert (filled[image].double() - direct_imputation(images[image], removed[image])).abs().max() < 1e-4


def test_row_solver_in_memory_sized_groups_gives_the_same_images(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    images, removed = (
        torch.rand(5, 3, 12, 10, generator=generator),
        torch.rand(5, 12, 10, generator=generator) < 0.5,
    )
    whole = noisy_linear_imputation(images, removed)
    assert imputation._row_solve_group_size(images) >= 5
    monkeypatch.setattr(imputation, "ROW_SOLVE_BUDGET_BYTES", 1)  # one image per group
    assert imputation._row_solve_group_size(images) == 1
    torch.testing.assert_close(noisy_linear_imputation(images, removed), whole)


@pytest.mark.parametrize("row_solve_limit", [64, 0], ids=["row blocks", "conjugate gradients"])
def test_imputing_an_image_with_no_pixel_left_gives_zeros_not_nan(
    row_solve_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imputation, "ROW_SOLVE_LIMIT", row_solve_limit)
    removed = torch.zeros(2, 5, 7, dtype=torch.bool)
    removed[0] = True
    removed[1, 2, 3] = True
    images = torch.rand(2, 3, 5, 7)
    filled = noisy_linear_imputation(images, removed)
    assert torch.equal(filled[0], torch.zeros(3, 5, 7))
    expected = (
        images[1, :, [1, 3, 2, 2], [3, 3, 2, 4]].sum(1) / 6
        + images[1, :, [1, 1, 3, 3], [2, 4, 2, 4]].sum(1) / 12
    )
    torch.testing.assert_close(filled[1, :, 2, 3], expected)


@pytest.mark.parametrize("row_solve_limit", [64, 0], ids=["row blocks", "conjugate gradients"])
def test_complementary_imputations_equal_two_separate_ones(
    row_solve_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One solve of both parts (uncoupled) gives what two calls give: the removed pixels filled from the
    rest and the rest filled from the removed pixels, also when one part is empty or the whole image."""
    monkeypatch.setattr(imputation, "ROW_SOLVE_LIMIT", row_solve_limit)
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(5, 3, 9, 11, generator=generator)
    removed = torch.rand(5, 9, 11, generator=generator) < 0.4  # scattered: the parts interleave
    removed[1] = False
    removed[1, 2:7, 3:] = True  # a block against the right border
    removed[2], removed[3] = True, False  # all, nothing
    removed_filled, rest_filled = complementary_imputations(images, removed)
    for image in (0, 1):
        expected = direct_imputation(images[image], ~removed[image])
        assert (rest_filled[image].double() - expected).abs().max() < 1e-4
    torch.testing.assert_close(removed_filled, noisy_linear_imputation(images, removed), atol=1e-5, rtol=0)
    torch.testing.assert_close(rest_filled, noisy_linear_imputation(images, ~removed), atol=1e-5, rtol=0)
    assert torch.equal(removed_filled[2], torch.zeros(3, 9, 11)) and torch.equal(rest_filled[2], images[2])
    assert torch.equal(removed_filled[3], images[3]) and torch.equal(rest_filled[3], torch.zeros(3, 9, 11))


def test_imputation_noise_comes_from_its_own_generator() -> None:
    images, removed = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8) < 0.3
    state = torch.random.get_rng_state()
    first = noisy_linear_imputation(images, removed, 0.01, torch.Generator().manual_seed(1))
    second = noisy_linear_imputation(images, removed, 0.01, torch.Generator().manual_seed(1))
    assert torch.equal(first, second) and torch.equal(torch.random.get_rng_state(), state)
    assert (
        0.003
        < (first - noisy_linear_imputation(images, removed))[removed[:, None].expand_as(images)].std()
        < 0.03
    )


def test_road_equals_pytorch_grad_cam_with_zero_noise(small_model: tuple[nn.Module, torch.Tensor]) -> None:
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, images = small_model
    maps = torch.rand(len(images), 16, 16, generator=torch.Generator().manual_seed(2))  # no ties
    targets = [1, 0, 3, 2]
    ours = road(model, images, maps, targets, noise=0.0)
    wrapped = [ClassifierOutputSoftmaxTarget(t) for t in targets]

    def theirs(removal: type) -> np.ndarray:
        # Their percentile p removes the top (or bottom) 100 - p %: over 10..90 the same nine fractions.
        return np.mean(
            [
                PerturbationConfidenceMetric(removal(100 * p, NoisyLinearImputer(noise=0)))(
                    images, maps.numpy(), wrapped, model
                )
                for p in FRACTIONS
            ],
            axis=0,
        )

    np.testing.assert_allclose(ours["morf"].numpy(), theirs(RemoveMostRelevantFirst), atol=0.01)
    np.testing.assert_allclose(ours["lerf"].numpy(), theirs(RemoveLeastRelevantFirst), atol=0.01)
    np.testing.assert_allclose(ours["combined"].numpy(), ((ours["lerf"] - ours["morf"]) / 2).numpy())


def road_by_separate_imputations(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: list[int],
    fractions: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """ROAD's definition, one removal at a time: MoRF removes the top ``f``, LeRF the bottom ``f``."""
    ranks, pixels = pixel_ranks(maps).view(maps.shape), maps[0].numel()
    with torch.no_grad():

        def probability(batch: torch.Tensor) -> torch.Tensor:
            return model(batch).softmax(-1)[torch.arange(len(batch)), targets]

        start = probability(images)
        changes = [
            [
                probability(noisy_linear_imputation(images, removed)) - start
                for removed in (ranks < c, ranks >= pixels - c)
            ]
            for c in (round(f * pixels) for f in fractions)
        ]
    morf, lerf = (torch.stack([change[side] for change in changes]).mean(0) for side in (0, 1))
    return morf, lerf


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_road_solves_each_complementary_pair_once_and_scores_each_removal(
    small_model: tuple[nn.Module, torch.Tensor], chunk_size: int | None
) -> None:
    """MoRF at ``f`` and LeRF at ``1 - f`` share a solve; fractions without a partner (0.25), with a
    repeat (0.5 twice) and rounding to the same pixel count (0.6, 0.601) still give ROAD's definition, in
    chunks of any size."""
    model, images = small_model
    maps = torch.rand(len(images), 16, 16, generator=torch.Generator().manual_seed(5))
    targets, fractions = [1, 0, 3, 2], (0.25, 0.5, 0.5, 0.6, 0.601)
    ours = road(model, images, maps, targets, fractions, noise=0.0, chunk_size=chunk_size)
    morf, lerf = road_by_separate_imputations(model, images, maps, targets, fractions)
    torch.testing.assert_close(ours["morf"], morf, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["lerf"], lerf, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def cue_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A CNN trained until it reads the corner cue (the only way to the label), and 8 of its images
    (12 epochs: all 8 right under seeds 0-4; after 8 epochs seed 4 got half of them wrong)."""
    pl.seed_everything(0, verbose=False)
    train, _ = cue_loaders(True)
    model = CueClassifier()
    fit_without_validation(model, train, epochs=12)
    data = CueData(8, 1, True)
    return model.net.eval(), {key: data.data[key] for key in ("image", "label", "cue", "object")}


@pytest.mark.slow
def test_the_map_on_the_cue_is_the_faithful_one(cue_model: tuple[nn.Module, dict[str, torch.Tensor]]) -> None:
    model, data = cue_model
    images, labels = data["image"], data["label"]
    assert (model(images).argmax(1) == labels).float().mean() == 1.0
    jitter = 1e-3 * torch.rand(data["cue"].shape, generator=torch.Generator().manual_seed(0))  # no ties
    maps = {"on_cue": data["cue"] + jitter, "off_cue": 1 - data["cue"] + jitter}
    deletion = {name: value[0] for name, value in deletion_insertion(model, images, maps, labels).items()}
    roads = {name: value["combined"] for name, value in road(model, images, maps, labels).items()}
    # Seeds 0-4 (benchmarks/seed_margins.py): mean deletion gap 0.169, 0.038, 0.115, 0.045, 0.157; the
    # smallest per-image ROAD gap 0.41, 0.31, 0.41, 0.39, 0.31 and the mean one 0.48-0.52.
    assert deletion["on_cue"].mean() < deletion["off_cue"].mean() - 0.02, (
        deletion
    )  # deleting the cue hurts more
    assert bool((roads["on_cue"] > roads["off_cue"]).all()), roads
    assert roads["on_cue"].mean() > roads["off_cue"].mean() + 0.1, roads


@pytest.mark.slow
def test_randomization_is_low_for_gradcam_and_leaves_everything_as_it_was(
    cue_model: tuple[nn.Module, dict[str, torch.Tensor]],
) -> None:
    model, data = cue_model
    images = data["image"]
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    grads = {name: p.grad for name, p in model.named_parameters()}
    state = {name: value.clone() for name, value in model.state_dict().items()}
    rngs = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    final = model_randomization(model, images, ("gradcam", "layercam"), "features.9")
    curve = model_randomization(model, images, "gradcam", "features.9", curve=True)["gradcam"]
    # Seeds 0-4: gradcam -0.13 to 0.03, layercam 0.24 to 0.28. (Whether the classifier alone changes the maps
    # less than the whole cascade depends on the seed, 2 of 5 not: it is not asserted.)
    assert final["gradcam"].nanmean() < 0.5 and final["layercam"].nanmean() < 0.5  # flat maps: NaN, left out
    assert all(int(value.isfinite().sum()) >= len(images) // 2 for value in final.values())
    assert curve.shape == (len(learnable_layers(model)), len(images))
    torch.testing.assert_close(
        curve[-1], final["gradcam"], rtol=0, atol=0, equal_nan=True
    )  # the whole cascade
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
    assert all(p.grad is grads[name] and bool((p.grad == 0.5).all()) for name, p in model.named_parameters())
    assert torch.equal(torch.random.get_rng_state(), rngs[0]) and np.array_equal(
        np.random.get_state()[1], rngs[1]
    )
    assert random.getstate() == rngs[2] and not model.training


def test_learnable_layers_run_from_the_output_down() -> None:
    assert learnable_layers(SmallCNN()) == ["fc", "features.5", "features.4", "features.1", "features.0"]


def test_spearman_by_hand() -> None:
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 0.0]]])
    rho = spearman(a, b)
    # second pair: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3), centred (-1, -1, 0.5, 1.5) and
    # (-1.5, -0.5, 0.5, 1.5): 4.5 / sqrt(4.5 * 5)
    assert rho[0].item() == pytest.approx(-1.0) and rho[1].item() == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert (
        rho[2].isnan() and spearman(a[2:], a[2:]).isnan()
    )  # a flat reference is no evidence, even with itself
    assert spearman(b[2:], a[2:]).item() == 0.0  # a structured map that turned flat: no shared ranking
    assert spearman(a[2:] + 1, a[2:] + 1).item() == 1.0 and spearman(a[2:] + 1, b[2:] + 1).item() == 0.0


def test_cam_monitor_logs_trust_metrics_and_a_trust_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = CAMMonitor(
        methods=["gradcam", "layercam"],
        num_samples=4,
        faithfulness=("deletion", "road"),
        faithfulness_every_n_checks=2,
        sanity_every_n_checks=3,
        strict=True,
    )
    with caplog.at_level("INFO"):
        trainer(tmp_path, [monitor], logger=logger, max_epochs=3).fit(TinyClassifier(), train, val)
    assert [s for s, _ in read_tensorboard_scalars(logger.log_dir, "cam/gradcam/deletion_auc")] == [8]
    assert [s for s, _ in read_tensorboard_scalars(logger.log_dir, "cam/layercam/road")] == [8]
    assert not read_tensorboard_scalars(logger.log_dir, "cam/gradcam/insertion_auc")  # not asked for
    sanity = read_tensorboard_scalars(logger.log_dir, "cam/gradcam/randomization_spearman")
    assert [s for s, _ in sanity] == [12] and -1 <= sanity[0][1] <= 1
    assert monitor.history.trust["gradcam"]["road"] == pytest.approx(
        read_tensorboard_scalars(logger.log_dir, "cam/gradcam/road")[0][1]
    )
    assert "CAMMonitor trust report" in caplog.text and "ROAD (higher is more faithful)" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    accumulator.Reload()
    assert "cam/trust_report/text_summary" in accumulator.Tags()["tensors"]


def test_trust_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown faithfulness metric"):
        CAMMonitor(faithfulness=["deletion", "roads"])
    with pytest.raises(ValueError, match="sanity_every_n_checks must be a positive integer"):
        CAMMonitor(sanity_every_n_checks=0)
    with pytest.raises(ValueError, match="fractions must be in"):
        road(nn.Linear(1, 1), torch.rand(1, 1, 2, 2), torch.rand(1, 2, 2), fractions=(0.0, 1.0))
