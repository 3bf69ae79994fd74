"""Detectors: the box target by hand, Grad-CAM against pytorch-grad-cam and against a reference that
maps back through the detector's padding, image lists, "auto", and the errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from detection_helpers import detection_loaders, faster_rcnn, own_detections, retinanet
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import read_tensorboard_images, read_tensorboard_scalars, trainer
from test_models import pearson
from torch.utils.data import DataLoader
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

import lightning_cam as lc
from lightning_cam import CAMMonitor
from lightning_cam.batches import box_union
from lightning_cam.demo.detection import ShapesDetector, collate_detection, make_detection_shapes
from lightning_cam.engine.auto_layer import find_auto_layer
from lightning_cam.engine.targets import correctness, make_scorer
from lightning_cam.monitor import fit_audit
from lightning_cam.monitor.check import shown_detections
from lightning_cam.report.grids import BOX_COLOUR, draw_boxes, render_grid
from lightning_cam.targets import boxes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test runs a detector (about a second per forward and backward)


def output(boxes_: list[list[float]], labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes_),
        "labels": torch.tensor(labels),
        "scores": torch.tensor(scores, requires_grad=True),
    }


def test_box_score_sums_iou_plus_score_of_the_matched_boxes_by_hand() -> None:
    detections = output([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], [1, 2, 1], [0.9, 0.8, 0.4])
    target = boxes(
        [torch.tensor([[0.0, 0.0, 10.0, 8.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0]])],
        [torch.tensor([1, 1, 1])],
        iou=0.5,
    )
    # box 1 overlaps output 0 most (IoU 80/100 = 0.8, label 1): 0.8 + 0.9; box 2 matches output 2 exactly:
    # 1.0 + 0.4; box 3 overlaps output 1 most (IoU 1) but its label is 2: not counted.
    score = target([detections])
    torch.testing.assert_close(score, torch.tensor([0.8 + 0.9 + 1.0 + 0.4]))
    (gradient,) = torch.autograd.grad(score.sum(), detections["scores"])
    torch.testing.assert_close(gradient, torch.tensor([1.0, 0.0, 1.0]))
    strict = boxes(target.references, target.labels, iou=0.85)  # box 1's 0.8 overlap no longer counts
    torch.testing.assert_close(strict([detections]), torch.tensor([1.0 + 0.4]))


def test_a_box_score_without_a_match_is_zero_and_still_in_the_graph() -> None:
    detections = output([[0, 0, 10, 10]], [1], [0.9])
    score = boxes([torch.tensor([[50.0, 50.0, 60.0, 60.0]])], [torch.tensor([1])])([detections])
    assert score.tolist() == [0.0] and score.requires_grad


def test_the_boxes_mask_covers_every_pixel_a_box_overlaps() -> None:
    union = box_union(torch.tensor([[1.0, 1.0, 3.0, 2.5], [4.0, 0.0, 5.0, 1.0]]), (4, 5))
    expected = torch.zeros(4, 5)
    expected[1:3, 1:3] = 1  # x in [1, 3), y in [1, 2.5): rows 1-2 (row 2 spans [2, 3)), columns 1-2
    expected[0, 4] = 1
    assert torch.equal(union, expected)
    assert torch.equal(box_union(torch.zeros(0, 4), (2, 3)), torch.zeros(2, 3))


def test_detections_are_drawn_as_rectangles_on_every_tile_of_their_row() -> None:
    tiles = torch.zeros(2, 3, 3, 6, 7)
    drawn = draw_boxes(tiles, [torch.tensor([[1.0, 1.0, 5.0, 4.0]]), torch.zeros(0, 4)])
    expected = torch.zeros(6, 7, dtype=torch.bool)
    expected[1, 1:5] = expected[3, 1:5] = True  # x in [1, 5), y in [1, 4): the last pixels are 4 and 3
    expected[1:4, 1] = expected[1:4, 4] = True
    for tile in drawn[0]:
        assert torch.equal(tile[0] == BOX_COLOUR[0], expected) and torch.equal(
            tile[1] == BOX_COLOUR[1], expected
        )
    assert torch.equal(drawn[1], tiles[1])  # no detection, nothing drawn


def yellow(pixels: np.ndarray) -> np.ndarray:
    return (pixels == np.round(255 * np.array(BOX_COLOUR))).all(-1)


def test_each_detection_is_labelled_with_its_class_and_score_on_the_input_tile() -> None:
    """A label (black text on a yellow patch) at each box's top left on the input tile only, so the
    overlays stay unobstructed; two labels at one corner are stacked, not written over each other."""
    images, maps, box = (
        torch.zeros(1, 3, 64, 64),
        {"gradcam": torch.zeros(1, 64, 64)},
        torch.tensor([[8.0, 8, 40, 40]]),
    )
    plain = render_grid(images, maps, ["x"], boxes=[box])
    one = render_grid(images, maps, ["x"], boxes=[box], box_labels=[["bright 87%"]])
    two = render_grid(images, maps, ["x"], boxes=[box.repeat(2, 1)], box_labels=[["bright 87%", "dark 12%"]])
    patch = yellow(one.cell(0, 0)) & ~yellow(plain.cell(0, 0))  # the box's lines (2 px) are yellow in both
    rows, columns = patch.any(1).nonzero()[0], patch.any(0).nonzero()[0]
    zoom = one.tile[0] // 64
    assert zoom == 2 and 8 * zoom <= rows.min() <= 8 * zoom + 2 and 8 * zoom <= columns.min() <= 8 * zoom + 2
    height = rows.max() - rows.min() + 1
    assert height >= 9 and columns.max() - columns.min() > 2 * height  # a line of text
    text = one.cell(0, 0)[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    assert (text.astype(int).sum(-1) < 150).sum() > 20  # dark letters on the patch
    assert np.array_equal(one.cell(0, 1), plain.cell(0, 1))  # the overlay: only the rectangle
    stacked = (yellow(two.cell(0, 0)) & ~yellow(plain.cell(0, 0))).any(1).nonzero()[0]
    assert stacked.min() == rows.min() and stacked.max() - stacked.min() + 1 >= 2 * height - 2


def test_shown_detections_keep_the_best_above_the_threshold() -> None:
    detections = [
        {
            "boxes": torch.rand(5, 4),
            "labels": torch.arange(5),
            "scores": torch.tensor([0.9, 0.8, 0.6, 0.4, 0.3]),
        }
    ]
    explanation = lc.engine.Explanation({}, torch.zeros(1, 1), torch.tensor([-1]), detections=detections)
    (shown,) = shown_detections(explanation, 0.5)
    assert shown["labels"].tolist() == [0, 1, 2] and shown["scores"].tolist() == pytest.approx(
        [0.9, 0.8, 0.6]
    )
    assert shown_detections(lc.engine.Explanation({}, torch.zeros(1, 1), torch.tensor([0])), 0.5) is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([torch.zeros(2, 4)], [torch.zeros(3)]), r"image 0: boxes must be \[N, 4\].*labels \[3\]"),
        (([torch.tensor([[5.0, 0, 1, 1]])], [torch.zeros(1)]), "x2 < x1"),
        (([torch.zeros(1, 4)], []), "one label tensor per image"),
    ],
)
def test_bad_boxes_say_what_is_wrong(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        boxes(*arguments)


def pytorch_grad_cam_boxes(detector: torch.nn.Module, images: torch.Tensor, references: list, labels: list):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    targets = [
        FasterRCNNBoxScoreTarget(label.tolist(), box.detach().numpy())
        for box, label in zip(references, labels, strict=True)
    ]
    with GradCAM(detector, [detector.backbone.body.layer4]) as cam:
        return cam(images, targets=targets)


def test_box_gradcam_equals_pytorch_grad_cam_on_images_the_detector_does_not_pad() -> None:
    detector = faster_rcnn()
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # -> 160x160, no padding
    references, labels = own_detections(detector, images)
    ours = lc.explain(detector, images, "gradcam", "backbone.body.layer4", targets=boxes(references, labels))
    theirs = pytorch_grad_cam_boxes(detector, images, references, labels)
    assert ours["gradcam"].shape == (2, 128, 128)
    assert (pearson(ours["gradcam"], theirs) >= 0.99).all(), pearson(ours["gradcam"], theirs)


def reference_gradcam(
    detector: torch.nn.Module, images: list[torch.Tensor], target: object, through_padding: bool = True
) -> list[torch.Tensor]:
    """Grad-CAM by hand: layer4's activations and gradients of the box scores on the padded canvas the
    transform built; per image upsampled to the canvas, cropped to the resized image and resized to the
    image (or, ``through_padding=False``, stretched from the whole canvas onto the image)."""
    captured = {}
    hook = detector.backbone.body.layer4.register_forward_hook(lambda m, i, o: captured.update(a=o))
    try:
        score = target(detector(images))
    finally:
        hook.remove()
    (gradient,) = torch.autograd.grad(score.sum(), captured["a"])
    cams = (gradient.mean((2, 3), keepdim=True) * captured["a"]).sum(1, keepdim=True).clamp(min=0).detach()
    batch, _ = detector.transform(images)
    maps = []
    for cam, image, (height, width) in zip(cams, images, batch.image_sizes, strict=True):
        cam = cam[None]
        if through_padding:
            cam = F.interpolate(cam, size=tuple(batch.tensors.shape[-2:]), mode="bilinear")[
                ..., :height, :width
            ]
        cam = F.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
        maps.append((cam - cam.min()) / (cam.max() - cam.min()))
    return maps


def test_box_gradcam_maps_back_through_the_padding_of_a_non_square_image() -> None:
    detector = faster_rcnn()
    image = torch.rand(
        3, 96, 128, generator=torch.Generator().manual_seed(2)
    )  # -> 160x213 on a 160x224 canvas
    batch, _ = detector.transform([image])
    assert batch.image_sizes[0] == (160, 213) and tuple(batch.tensors.shape[-2:]) == (160, 224)
    target = boxes(*own_detections(detector, [image]))
    ours = lc.explain(detector, [image], "gradcam", "backbone.body.layer4", targets=target)["gradcam"][0]
    torch.testing.assert_close(ours, reference_gradcam(detector, [image], target)[0], atol=1e-4, rtol=0)
    stretched = reference_gradcam(detector, [image], target, through_padding=False)[0]
    assert float((ours - stretched).abs().max()) > 0.05  # the padding is 11 of 224 columns: it shows


def test_variable_size_images_get_one_map_each_at_their_own_size() -> None:
    detector = faster_rcnn()
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 80, 80, generator=generator)]
    target = boxes(*own_detections(detector, images))
    maps = lc.explain(detector, images, ("gradcam", "layercam", "eigencam"), targets=target)
    for method, per_image in maps.items():
        assert [tuple(m.shape) for m in per_image] == [(96, 128), (80, 80)], method
        assert all(float(m.max()) == 1.0 and float(m.min()) == 0.0 for m in per_image), method
    for ours, expected in zip(maps["gradcam"], reference_gradcam(detector, images, target), strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("build", [faster_rcnn, retinanet], ids=["faster_rcnn", "retinanet"])
def test_auto_takes_the_backbones_deepest_feature_map(build: object) -> None:
    detector = build()
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    assert find_auto_layer(detector, images) == "backbone.body.layer4"
    maps = lc.explain(detector, images, "gradcam", targets=boxes(*own_detections(detector, images)))[
        "gradcam"
    ]
    assert maps.shape == (2, 96, 128) and not torch.allclose(maps[0], maps[1])
    assert all(float(m.std()) > 0.05 for m in maps)


def test_auto_on_ssd_takes_the_last_layer_every_feature_level_reads() -> None:
    """SSD's heads read six maps, the first taken before the deepest layers (which feed only the last
    levels): "auto" took the deepest (``backbone.extra.3.0``), so most detections had no path to it;
    now the last layer every level reads, and the detections' maps are not flat."""
    torch.manual_seed(0)
    detector = ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, score_thresh=0.0
    ).eval()
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    assert find_auto_layer(detector, images) == "backbone.features.0"
    target = boxes(*own_detections(detector, images))
    maps = lc.explain(detector, images, ("gradcam", "layercam"), targets=target)
    assert all(float(m.std()) > 0.02 for value in maps.values() for m in value)


def test_saliency_and_guided_gradcam_explain_a_list_of_images_each_at_its_size() -> None:
    """Saliency on a list of images of two sizes: each map is ``max_c |d score / d image|`` of its own
    image (by hand through the detector), at that image's size; Guided Grad-CAM is guided backprop
    times Grad-CAM per image."""
    detector = faster_rcnn()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=generator), torch.rand(3, 112, 80, generator=generator)]
    target = boxes(*own_detections(detector, images))
    maps = lc.explain(
        detector, images, ("saliency", "guided_backprop", "guided_gradcam", "gradcam"), targets=target
    )
    leaves = [image.clone().requires_grad_(True) for image in images]
    output = detector(leaves)
    gradients = torch.autograd.grad(make_scorer(target, output).score(output).sum(), leaves)
    for gradient, ours in zip(gradients, maps["saliency"], strict=True):
        expected = gradient.abs().amax(0)
        assert ours.shape == gradient.shape[1:]
        torch.testing.assert_close(
            ours, (expected - expected.min()) / (expected.max() - expected.min()), atol=1e-5, rtol=0
        )
    for guided, gradcam, combined in zip(
        maps["guided_backprop"], maps["gradcam"], maps["guided_gradcam"], strict=True
    ):
        product = guided * gradcam
        assert combined.shape == guided.shape == gradcam.shape
        torch.testing.assert_close(
            combined, (product - product.min()) / (product.max() - product.min()), atol=1e-5, rtol=0
        )


def test_detector_errors_say_what_works() -> None:
    detector = faster_rcnn()
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"targets=lightning_cam.targets.boxes\(boxes, labels\)"):
        lc.explain(detector, images, "gradcam")
    target = boxes(*own_detections(detector, images))
    with pytest.raises(ValueError, match=r"scorecam do not run on detectors.*gradcam"):
        lc.explain(detector, images, "scorecam", targets=target)
    with pytest.raises(ValueError, match=r"rollout cannot explain a list of images.*saliency or guided"):
        lc.explain(detector, list(images), "rollout", targets=target)
    with pytest.raises(
        ValueError, match=r"got list \(lists of images of any sizes are explained for torchvision"
    ):
        lc.explain(torch.nn.Conv2d(3, 2, 3), [images[0]], "gradcam")
    assert np.isfinite(lc.explain(detector, images, "gradcam++", targets=target)["gradcam++"].numpy()).all()


def fit_detector(tmp_path: Path, callbacks: list) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    module = ShapesDetector(box_score_thresh=0.0)  # every detection kept
    train, val = detection_loaders()
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    fit = trainer(tmp_path, callbacks, max_epochs=2, logger=logger)
    fit.fit(module, train, val)
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def test_cammonitor_on_a_detector_logs_grids_and_mass_on_the_boxes_without_changing_training(
    tmp_path: Path,
) -> None:
    monitor = CAMMonitor(
        methods=("gradcam", "layercam"),
        targets=("label", "predicted"),
        num_samples=4,
        class_names=["background", "bright", "dark"],
        detection_score_threshold=0.0,
        report=True,
    )
    watched = fit_detector(tmp_path / "watched", [monitor])
    assert monitor.config.task is None and monitor.fixed is not None and monitor.fixed.boxes is not None
    log_dir = tmp_path / "watched"
    numbers = 0
    for series in ("gradcam", "layercam", "predicted/gradcam", "predicted/layercam"):
        flat = read_tensorboard_scalars(log_dir, f"cam/{series}/flat_fraction")
        masses = read_tensorboard_scalars(log_dir, f"cam/{series}/mass/boxes")
        assert len(flat) == len(masses) == 2, series
        for (_, fraction), (_, mass) in zip(flat, masses, strict=True):
            # a box the detector does not find gives a flat map: no evidence, NaN, never a number
            assert (mass != mass) if fraction == 1.0 else 0 < mass < 1, (series, fraction, mass)
            numbers += fraction < 1.0
    assert numbers >= 2  # the detections above score 0 are always there to explain
    page = (log_dir / "cam_report.html").read_text()
    assert "cam/predicted/grid" in page or "predicted" in page  # the page shows both targets' grids
    assert "boxes" in page
    accuracy = monitor.history.last["gradcam/boxes/all"]["accuracy"]
    assert accuracy != accuracy  # a box score predicts no class: no accuracy (was 0 %, read as wrong)
    (_, grid), *_ = read_tensorboard_images(log_dir, "cam/predicted/grid")
    pixels = np.asarray(grid.convert("RGB"))
    assert pixels.shape[0] > 4 * 64  # a row per sample
    # each detection's label: a filled yellow patch (the rectangles are lines, 2 px at the tile's zoom)
    patches = F.max_pool2d(torch.from_numpy(~yellow(pixels)).float()[None], 3, stride=1) == 0
    assert bool(patches.any())
    plain = fit_detector(tmp_path / "plain", [])
    for name, tensor in plain.items():
        assert torch.equal(tensor, watched[name]), name


def test_the_detection_example_trains_and_reports_where_attention_sits(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("train_detector", ROOT / "examples" / "train_detector.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--epochs", "1", "--num-train", "8", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "share of the map on the boxes" in printed and "layercam" in printed
    assert read_tensorboard_images(tmp_path / "detection" / "version_0", "cam/predicted/grid")


def test_correctness_is_nan_where_the_target_predicts_no_class() -> None:
    labels = torch.tensor([1, 2, 1])
    correct = correctness(torch.tensor([1, 1, -1]), labels)
    assert correct[:2].tolist() == [1.0, 0.0] and correct[2].isnan()
    assert correctness(torch.tensor([0, 1]), None).isnan().all()


def test_the_audit_explains_the_detections_above_its_score_threshold() -> None:
    """``targets="predicted"``: an untrained detector's detections all score below 0.9, so at that
    threshold no box is explained (every map flat: NaN mass), at 0 the detections are."""
    torch.manual_seed(0)
    _, val = detection_loaders()
    detector = ShapesDetector(box_score_thresh=0.0).eval()
    with torch.no_grad():
        scores = torch.cat([d["scores"] for batch in val for d in detector(batch[0])])
    assert len(scores) > 0 and float(scores.max()) < 0.9
    masses = {
        threshold: lc.audit(
            detector,
            val,
            "layercam",
            targets="predicted",
            progress=False,
            bootstrap_samples=20,
            detection_score_threshold=threshold,
        ).rows["layercam/mass/boxes"]
        for threshold in (0.0, 0.9)
    }
    assert masses[0.9].isnan().all() and not masses[0.0].isnan().all()
    with pytest.raises(ValueError, match=r"detection_score_threshold must be in \[0, 1\); got 1.5"):
        lc.audit(
            detector, val, "layercam", targets="predicted", progress=False, detection_score_threshold=1.5
        )


def test_the_audit_takes_detection_batches() -> None:
    torch.manual_seed(0)
    _, val = detection_loaders()
    result = lc.audit(
        ShapesDetector(box_score_thresh=0.0).eval(),
        val,
        "layercam",
        targets="label",
        progress=False,
        bootstrap_samples=20,
    )
    assert result.rows["correct"].isnan().all()  # a box score predicts no class
    assert set(result.pairs) == {("layercam", "boxes"), ("layercam", "cue")}
    union = torch.stack([box_union(t["boxes"], (64, 64)) for _, t, _ in make_detection_shapes(4, 1, None)])
    torch.testing.assert_close(result.rows["area/boxes"], union.flatten(1).mean(1))
    assert not any("accurate" in line and "0% [" in line for line in result.report().readings)


def test_the_monitors_audit_explains_the_detections_above_the_monitors_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CAMMonitor(audit=True, detection_score_threshold=0.7)``: the audit in fit gets the monitor's
    threshold, and an image with no detection scoring 0.7 has no box to explain (NaN, never a number)."""
    thresholds = []

    def recording_audit(*args: object, **kwargs: object) -> object:
        thresholds.append(kwargs["detection_score_threshold"])
        return lc.audit(*args, **kwargs)

    monkeypatch.setattr(fit_audit, "audit", recording_audit)
    monitor = CAMMonitor(
        methods="layercam",
        targets="predicted",
        num_samples=2,
        detection_score_threshold=0.7,
        audit=True,
        audit_bootstrap_samples=0,
    )
    state = fit_detector(tmp_path, [monitor])
    assert thresholds == [0.7] and monitor.audit_result is not None
    detector = ShapesDetector(box_score_thresh=0.0)
    detector.load_state_dict(state)
    with torch.no_grad():
        best = [
            float(d["scores"].max()) if len(d["scores"]) else 0.0
            for images, *_ in detection_loaders()[1]
            for d in detector.eval()(images)
        ]
    mass = monitor.audit_result.rows["layercam/mass/boxes"]
    assert len(mass) == len(best)
    assert all(bool(m.isnan()) for m, score in zip(mass, best, strict=True) if score < 0.7)


def test_the_audit_reads_groups_from_detection_batches() -> None:
    """Detection batches carry groups as their 4th element: per-group figures, each the mean over its
    images' rows (NaN rows left out), and a count per group."""
    torch.manual_seed(0)
    _, val = detection_loaders()
    sites = ["north", "south", "north", "north"]
    grouped = DataLoader(val.dataset, batch_size=4, collate_fn=lambda b: (*collate_detection(b), sites))
    result = lc.audit(
        ShapesDetector(box_score_thresh=0.0).eval(),
        grouped,
        "layercam",
        targets="label",
        progress=False,
        bootstrap_samples=0,
    )
    mass = result.rows["layercam/mass/boxes"]
    for site in ("north", "south"):
        members = torch.tensor([s == site for s in sites])
        figures = result.figures[f"group={site}"]
        assert figures["count"].value == int(members.sum())
        explained = members & ~mass.isnan()  # a box the detector misses: NaN, left out
        assert figures["layercam/mass/boxes"].value == pytest.approx(
            float(mass[explained].mean()), rel=1e-5, nan_ok=True
        )
        area = float(result.rows["area/boxes"][explained].mean())  # over the same images as the mass
        assert figures["area/boxes"].value == pytest.approx(area, rel=1e-5, nan_ok=True)
    assert not mass[torch.tensor([s == "north" for s in sites])].isnan().all()
