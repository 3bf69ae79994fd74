"""The gradient family: lightning-cam's one pass against one forward and against pytorch-grad-cam.

resnet18 with random weights, a batch of 16 images of 112x112 on the CPU, median of several runs
after a warm-up. pytorch-grad-cam (PyPI ``grad-cam``) is installed for this benchmark only:

    pip install grad-cam
    python benchmarks/bench_gradient.py
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from common import median_seconds, pearson_per_image

import lightning_cam as lc

FIVE = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()

    def plain_forward() -> None:
        with torch.inference_mode():
            model(images)

    forward = median_seconds(plain_forward, args.repeats)
    ours = median_seconds(lambda: lc.explain(model, images, FIVE, "layer4", targets), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x {args.size}px")
    print(f"one inference_mode forward          {forward * 1e3:8.1f} ms")
    print(f"lightning-cam, all five methods    {ours * 1e3:8.1f} ms  = {ours / forward:.2f}x forward")

    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("pytorch-grad-cam is not installed (pip install grad-cam): peer comparison skipped")
        return
    peers = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}
    peers["hirescam"] = HiResCAM
    peer_targets = [ClassifierOutputTarget(t) for t in targets]

    def peer_all() -> dict[str, object]:
        maps = {}
        for name, cls in peers.items():
            with cls(model=model, target_layers=[model.layer4]) as cam:
                maps[name] = cam(input_tensor=images, targets=peer_targets)
        return maps

    peer = median_seconds(peer_all, max(3, args.repeats // 2), warmup=1)
    print(
        f"pytorch-grad-cam, one after another {peer * 1e3:8.1f} ms  = {peer / ours:.1f}x slower than lightning-cam"
    )
    ours_maps = lc.explain(model, images, FIVE, "layer4", targets)
    peer_maps = peer_all()
    for name in FIVE:
        r = pearson_per_image(ours_maps[name], peer_maps[name])
        print(
            f"  {name:10s} Pearson per image vs pytorch-grad-cam: min {r.min():.4f}  median {sorted(r)[len(r) // 2]:.4f}"
        )


if __name__ == "__main__":
    main()
