"""The trust metrics: lightning-cam's ROAD and deletion / insertion against the peers', and what each
CAMMonitor trust option adds to a check, as a ratio of one plain forward of the fixed batch.

ROAD and deletion / insertion: 8 images of 32x32, the demo's CNN (random weights), Grad-CAM maps;
pytorch-grad-cam 1.5.7's ROAD (zero-noise imputer, one scipy sparse solve per image and fraction)
and torch-cam 0.5's ``DeletionInsertionMetric`` scoring the same maps. Per-option cost: the demo's
CNN at 64x64, 8 images, gradcam + gradcam++ (what the demo's monitor explains). Medians after a
warm-up, contenders timed in turn.

    pip install grad-cam==1.5.7 torchcam==0.5.0
    python benchmarks/bench_trust.py
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from common import interleaved_medians

import lightning_cam as lc
from lightning_cam.demo.model import SmallCNN
from lightning_cam.metrics import deletion_insertion, model_randomization, road

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class GivenMaps:
    """A torch-cam CAM extractor that hands back fixed maps."""

    def __init__(self, model: torch.nn.Module, maps: torch.Tensor) -> None:
        self.model, self.maps = model, maps

    def __call__(self, *args: object, **kwargs: object) -> list[torch.Tensor]:
        return [self.maps]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self):
        yield


def grad_cam_road(
    model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: list[int]
) -> dict:
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    wrapped = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    cams = maps.numpy()
    scores = {}
    for name, removal in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
        metrics = [
            PerturbationConfidenceMetric(removal(100 * p, NoisyLinearImputer(noise=0))) for p in FRACTIONS
        ]
        scores[name] = np.mean([metric(images, cams, wrapped, model) for metric in metrics], axis=0)
    return scores


def torchcam_deletion_insertion(model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor) -> dict:
    from torchcam.metrics import DeletionInsertionMetric

    metric = DeletionInsertionMetric(GivenMaps(model, maps), partial(torch.softmax, dim=-1), batch_size=256)
    metric.update(images)
    return metric.summary()


def peers(repeats: int) -> None:
    torch.manual_seed(0)
    model, images = SmallCNN().eval(), torch.rand(8, 3, 32, 32)
    explanation = lc.explain_batch(model, images, "gradcam", "features.9")
    maps, targets = explanation.maps["gradcam"], explanation.targets.tolist()
    ours, theirs = road(model, images, maps, targets, noise=0.0), grad_cam_road(model, images, maps, targets)
    gap = max(np.abs(ours[k].numpy() - theirs[k]).max() for k in ("morf", "lerf"))
    times = interleaved_medians(
        {
            "lightning-cam road": lambda: road(model, images, maps, targets, noise=0.0),
            "pytorch-grad-cam road": lambda: grad_cam_road(model, images, maps, targets),
        },
        repeats,
    )
    print(f"ROAD, 8 images of 32x32, 9 fractions, MoRF and LeRF (largest per-image difference {gap:.1e}):")
    for name, seconds in times.items():
        print(f"  {name:24s} {seconds * 1e3:8.1f} ms")
    print(f"  lightning-cam is {times['pytorch-grad-cam road'] / times['lightning-cam road']:.1f}x faster")

    deletion, insertion = deletion_insertion(model, images, maps, targets)
    summary = torchcam_deletion_insertion(model, images, maps)
    times = interleaved_medians(
        {
            "lightning-cam": lambda: deletion_insertion(model, images, maps, targets),
            "torch-cam": lambda: torchcam_deletion_insertion(model, images, maps),
        },
        repeats,
    )
    print(
        f"Deletion / insertion, 8 images of 32x32, 20 steps (mean AUCs {deletion.mean():.4f} / {insertion.mean():.4f}, "
        f"torch-cam {summary['deletion_auc']:.4f} / {summary['insertion_auc']:.4f}):"
    )
    for name, seconds in times.items():
        print(f"  {name:24s} {seconds * 1e3:8.1f} ms")
    print(f"  torch-cam / lightning-cam: {times['torch-cam'] / times['lightning-cam']:.2f}x")


def option_costs(repeats: int) -> None:
    torch.manual_seed(0)
    model, images = SmallCNN().eval(), torch.rand(8, 3, 64, 64)
    explanation = lc.explain_batch(model, images, ("gradcam", "gradcam++"), "features.9")
    maps, targets = explanation.maps, explanation.targets

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    times = interleaved_medians(
        {
            "one plain forward": forward,
            "explain (gradcam + gradcam++)": lambda: lc.explain(
                model, images, ("gradcam", "gradcam++"), "features.9"
            ),
            "deletion + insertion": lambda: deletion_insertion(model, images, maps, targets),
            "road": lambda: road(model, images, maps, targets),
            "randomization (sanity)": lambda: model_randomization(
                model, images, ("gradcam", "gradcam++"), "features.9", targets
            ),
        },
        repeats,
    )
    base = times["one plain forward"]
    print("What each trust option adds to a check (demo CNN, 8 images of 64x64, gradcam + gradcam++):")
    for name, seconds in times.items():
        print(f"  {name:30s} {seconds * 1e3:8.1f} ms  {seconds / base:7.1f}x one forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peers(args.repeats)
    option_costs(args.repeats)


if __name__ == "__main__":
    main()
