"""Import time of ``from lightning_cam import explain`` in a fresh interpreter (median of several runs).

    python benchmarks/bench_import.py [--source DIR] [--runs 9]

``--source`` points at another checkout (e.g. a ``git worktree`` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

SNIPPET = (
    "import sys, time; start = time.perf_counter(); from lightning_cam import explain; "
    "print(time.perf_counter() - start, 'lightning' in sys.modules)"
)


def import_seconds(source: Path, runs: int) -> tuple[float, bool]:
    """Median import time over ``runs`` fresh interpreters, and whether Lightning got imported."""
    times, imports_lightning = [], False
    for _ in range(runs):
        output = subprocess.run(
            [sys.executable, "-c", SNIPPET], cwd=source, check=True, capture_output=True, text=True
        ).stdout.split()
        times.append(float(output[0]))
        imports_lightning = output[1] == "True"
    return statistics.median(times), imports_lightning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    import_seconds(args.source, 1)  # warm the file cache
    seconds, imports_lightning = import_seconds(args.source, args.runs)
    print(
        f"{args.source}: from lightning_cam import explain: {seconds * 1000:.0f} ms (median of {args.runs}); "
        f"imports Lightning: {imports_lightning}"
    )


if __name__ == "__main__":
    main()
