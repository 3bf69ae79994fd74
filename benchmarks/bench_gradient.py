"""The gradient family: lightning-cam's one pass against one forward and against pytorch-grad-cam.

resnet18 with random weights, a batch of 16 images of 112x112 on the CPU (or torchvision's
vit_b_16, 8 images of 224x224, its last block's ``ln_1``, pytorch-grad-cam given its documented
``reshape_transform``), median of several runs after a warm-up. pytorch-grad-cam (PyPI
``grad-cam``) is installed for this benchmark only:

    pip install grad-cam
    python benchmarks/bench_gradient.py
    python benchmarks/bench_gradient.py --model vit_b_16 --batch 8 --size 224
    python benchmarks/bench_gradient.py --model r3d_18 --batch 2 --frames 16 --size 112   # video clips
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torchvision
from common import median_seconds, pearson_per_image

import lightning_cam as lc

FIVE = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


def build(name: str) -> tuple[torch.nn.Module, str, object]:
    """The model (random weights), its target layer and pytorch-grad-cam's reshape_transform for it."""
    if name == "resnet18":
        return torchvision.models.resnet18(num_classes=1000).eval(), "layer4", None
    if name == "r3d_18":
        return torchvision.models.video.r3d_18(num_classes=400).eval(), "layer4", None
    model = torchvision.models.vit_b_16(num_classes=1000).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # its zero head would make every map flat

    def transform(tensor: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's documented ViT transform
        side = int((tensor.shape[1] - 1) ** 0.5)
        return tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2)).permute(0, 3, 1, 2)

    return model, "encoder.layers.encoder_layer_11.ln_1", transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", choices=("resnet18", "vit_b_16", "r3d_18"), default="resnet18")
    parser.add_argument("--frames", type=int, default=16, help="clip length for r3d_18")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, layer_name, transform = build(args.model)
    layer = dict(model.named_modules())[layer_name]
    clip = (args.frames,) if args.model == "r3d_18" else ()
    images = torch.rand(args.batch, 3, *clip, args.size, args.size)
    with torch.inference_mode():
        targets = model(images).argmax(1).tolist()

    def plain_forward() -> None:
        with torch.inference_mode():
            model(images)

    forward = median_seconds(plain_forward, args.repeats)
    ours = median_seconds(lambda: lc.explain(model, images, FIVE, layer_name, targets), args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, batch of {list(images.shape)}"
    )
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
            with cls(model=model, target_layers=[layer], reshape_transform=transform) as cam:
                maps[name] = cam(input_tensor=images, targets=peer_targets)
        return maps

    peer = median_seconds(peer_all, max(3, args.repeats // 2), warmup=1)
    print(
        f"pytorch-grad-cam, one after another {peer * 1e3:8.1f} ms  = {peer / ours:.1f}x slower than lightning-cam"
    )
    ours_maps = lc.explain(model, images, FIVE, layer_name, targets)
    peer_maps = peer_all()
    for name in FIVE:
        r = pearson_per_image(ours_maps[name], peer_maps[name])  # NaN where both maps are flat (all zero)
        print(
            f"  {name:10s} Pearson per image vs pytorch-grad-cam: min {np.nanmin(r):.4f}  median "
            f"{np.nanmedian(r):.4f} ({int(np.isnan(r).sum())} of {len(r)} images flat in both)"
        )


if __name__ == "__main__":
    main()
