"""Score-CAM and Ablation-CAM: lightning-cam against pytorch-grad-cam, torch-cam and the physical floor.

resnet18 with random weights, 4 images of 112x112, target layer4 (K = 512 channels), on the CPU;
median of several runs. The floor is the same work with nothing else: K x B plain
``inference_mode`` forwards in chunks of the same size. The top-k check uses a model that
learned something: the demo's CNN, trained here for a few epochs on the shapes.

    pip install grad-cam torchcam scipy
    python benchmarks/bench_perturbation.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics

import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from common import interleaved_medians

import lightning_cam as lc


def spearman_per_image(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation (ties ranked by their mean) of each image's map in ``a`` with ``b``."""
    from scipy.stats import spearmanr

    pairs = zip(a.reshape(len(a), -1).numpy(), b.reshape(len(b), -1).numpy(), strict=True)
    return np.array([spearmanr(x, y).statistic for x, y in pairs])


def trained_demo_model(epochs: int) -> tuple[torch.nn.Module, torch.Tensor]:
    from lightning_cam.demo import ShapesClassifier, ShapesDataModule

    pl.seed_everything(0, verbose=False)
    data = ShapesDataModule(num_train=1024)
    module = ShapesClassifier()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    images = data.val_sets[1].data["image"][:8]
    return module.net.eval(), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    channels = 512
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()
    rows = channels * args.batch
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18, {args.batch} images of "
        f"{args.size}px, layer4 (K={channels}), chunk {args.chunk}, contenders timed in turn, median of {args.repeats}"
    )
    masked = torch.rand(args.chunk, 3, args.size, args.size)

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(-(-rows // args.chunk)):
                model(masked)

    scorecams = {
        "floor": floor,
        "lightning-cam": lambda: lc.explain(
            model, images, "scorecam", "layer4", targets, chunk_size=args.chunk
        ),
        "lightning-cam topk": lambda: lc.explain(
            model, images, "scorecam", "layer4", targets, chunk_size=args.chunk, topk=channels // 8
        ),
    }
    ablations = {
        "lightning-cam": lambda: lc.explain(
            model, images, "ablationcam", "layer4", targets, chunk_size=args.chunk
        )
    }
    try:
        from pytorch_grad_cam import AblationCAM, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        peer_targets = [ClassifierOutputTarget(t) for t in targets]

        def peer(cls: type) -> None:
            with (
                cls(model=model, target_layers=[model.layer4]) as cam,
                contextlib.redirect_stderr(io.StringIO()),
            ):
                cam.batch_size = args.chunk
                cam(input_tensor=images, targets=peer_targets)

        scorecams["pytorch-grad-cam"] = lambda: peer(ScoreCAM)
        ablations["pytorch-grad-cam"] = lambda: peer(AblationCAM)
    except ImportError:
        print("pytorch-grad-cam is not installed (pip install grad-cam)")
    try:
        from torchcam.methods import ScoreCAM as TorchCamScoreCAM

        def torchcam_scorecam() -> None:
            with TorchCamScoreCAM(
                model, "layer4", batch_size=args.chunk, input_shape=images.shape[1:]
            ) as extractor:
                extractor(targets, model(images))

        scorecams["torch-cam"] = torchcam_scorecam
    except ImportError:
        print("torch-cam is not installed (pip install torchcam)")

    times = interleaved_medians(scorecams, args.repeats)
    ours = times["lightning-cam"]
    print(f"Score-CAM, exact ({rows} masked forwards):")
    for name, seconds in times.items():
        print(f"  {name:20s} {seconds:7.2f} s = {seconds / ours:5.2f}x lightning-cam's time")
    ablation_times = interleaved_medians(ablations, max(3, args.repeats // 2))
    print("Ablation-CAM:")
    for name, seconds in ablation_times.items():
        print(
            f"  {name:20s} {seconds:7.2f} s = {seconds / ablation_times['lightning-cam']:5.1f}x lightning-cam's time"
        )

    trained, shapes = trained_demo_model(epochs=4)
    layer_channels = trained.features[-3].out_channels
    k = layer_channels // 8
    exact = lc.explain(trained, shapes, "scorecam", "features")["scorecam"]
    approx = lc.explain(trained, shapes, "scorecam", "features", topk=k)["scorecam"]
    rho = spearman_per_image(exact, approx)
    small = interleaved_medians(
        {
            "exact": lambda: lc.explain(trained, shapes, "scorecam", "features"),
            "topk": lambda: lc.explain(trained, shapes, "scorecam", "features", topk=k),
        },
        args.repeats,
    )
    print(
        f"trained demo CNN (K={layer_channels}), 8 decorrelated validation images: topk={k} is "
        f"{small['exact'] / small['topk']:.1f}x faster than exact; Spearman vs exact per image: "
        f"min {rho.min():.3f}, median {statistics.median(rho.tolist()):.3f}"
    )


if __name__ == "__main__":
    main()
