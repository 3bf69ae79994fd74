"""Exact Score-CAM on volumes against its floor: the demo's 3-D CNN (``lightning_cam.demo.volumes``,
random weights, K = 32 channels at its last block), 8 volumes of 24^3; the floor is the same work with
nothing else, K x B plain ``inference_mode`` forwards of masked volumes in chunks of the same size.
Contenders timed in turn, median of several runs. (The gradient family on r3d_18 clips is
``bench_gradient.py --model r3d_18``.)

    python benchmarks/bench_volumes.py
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_medians

import lightning_cam as lc
from lightning_cam.demo.volumes import VolumeCNN

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = VolumeCNN().eval()
    volumes = torch.rand(args.batch, 1, args.size, args.size, args.size)
    channels = model.classifier.in_features
    rows, masked = channels * args.batch, torch.rand(args.chunk, 1, args.size, args.size, args.size)

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(-(-rows // args.chunk)):
                model(masked)

    times = interleaved_medians(
        {
            "floor": floor,
            "scorecam": lambda: lc.explain(model, volumes, "scorecam", "features", chunk_size=args.chunk),
            "forward": lambda: model(volumes),
        },
        repeats=args.repeats,
    )
    print(
        f"{rows} masked forwards ({args.batch} volumes of {args.size}^3 x K={channels}), chunks of {args.chunk}"
    )
    print(f"floor (plain forwards)   {times['floor'] * 1e3:8.1f} ms")
    print(
        f"lightning-cam scorecam   {times['scorecam'] * 1e3:8.1f} ms = {times['scorecam'] / times['floor']:.2f}x the floor"
    )
