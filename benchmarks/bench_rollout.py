"""Attention rollout and gradient-weighted rollout: both in one call against one inference forward of the
same batch, and the memory they take.

timm ``vit_base_patch16_224`` with random weights on the CPU, 8 images of 224x224 by default, median of
several runs after a warm-up. ``--memory`` measures, each in a fresh process, the peak resident memory
of one explain call above that of an inference forward, for batches of 16 at 224 and 384 px:

    pip install timm
    python benchmarks/bench_rollout.py
    python benchmarks/bench_rollout.py --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import median_seconds

import lightning_cam as lc

METHODS = ("rollout", "grad_rollout")


def vit_base(size: int) -> torch.nn.Module:
    import timm

    return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=size).eval()


def peak_megabytes() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def memory_of_one_call(batch: int, size: int) -> dict[str, float]:
    """In this process: peak RSS after an inference forward, then after one explain call."""
    torch.manual_seed(0)
    model, images = vit_base(size), torch.rand(batch, 3, size, size)
    with torch.inference_mode():
        model(images)
    forward_peak = peak_megabytes()
    lc.explain(model, images, METHODS)
    return {"batch": batch, "size": size, "forward_mb": forward_peak, "explain_mb": peak_megabytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="peak memory at 224 and 384 px, batch 16")
    parser.add_argument("--one-memory-run", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_memory_run:
        print(json.dumps(memory_of_one_call(*args.one_memory_run)))
        return
    if args.memory:
        for size in (224, 384):
            run = subprocess.run(
                [sys.executable, __file__, "--one-memory-run", "16", str(size)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(run.stdout.strip().splitlines()[-1])
            extra = result["explain_mb"] - result["forward_mb"]
            print(
                f"ViT-B/16, 16 images of {size} px: peak {result['explain_mb']:.0f} MB, {extra:.0f} MB above an inference forward"
            )
        return
    torch.manual_seed(0)
    model, images = vit_base(args.size), torch.rand(args.batch, 3, args.size, args.size)

    def plain_forward() -> None:
        with torch.inference_mode():
            model(images)

    forward = median_seconds(plain_forward, args.repeats)
    both = median_seconds(lambda: lc.explain(model, images, METHODS), args.repeats)
    plain = median_seconds(lambda: lc.explain(model, images, "rollout"), args.repeats)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, vit_base_patch16_224, {list(images.shape)}"
    )
    print(f"one inference_mode forward            {forward * 1e3:8.1f} ms")
    print(f"rollout alone (forward, no backward)  {plain * 1e3:8.1f} ms  = {plain / forward:.2f}x forward")
    print(f"rollout + grad_rollout, one call      {both * 1e3:8.1f} ms  = {both / forward:.2f}x forward")


if __name__ == "__main__":
    main()
