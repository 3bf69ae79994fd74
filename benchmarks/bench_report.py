"""What writing the audit page costs at the end of a fit: the 10-epoch demo (TensorBoard, gradcam +
gradcam++, audit on), timing ``Publisher.publish_page`` (plots, encoding the kept grids, the HTML) against
the whole fit's wall time, over several runs (median). Also the time of ``lightning-cam report`` rebuilding
the same page from the event files.

    pip install -e ".[tensorboard,report]"
    python benchmarks/bench_report.py --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from lightning_cam.demo.run import run_demo
from lightning_cam.monitor.publish import Publisher
from lightning_cam.report import rebuild_report


def one_run(epochs: int) -> tuple[float, float, float]:
    """(fit seconds, page seconds, rebuild seconds) of one demo run."""
    timed: list[float] = []
    original = Publisher.publish_page

    def timed_page(self: Publisher, *args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        path = original(self, *args, **kwargs)
        timed.append(time.perf_counter() - start)
        return path

    Publisher.publish_page = timed_page  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as out:
            result = run_demo(epochs=epochs, out=out, progress=False)
            start = time.perf_counter()
            rebuild_report(result.log_dir, f"{out}/rebuilt.html")
            rebuild = time.perf_counter() - start
    finally:
        Publisher.publish_page = original  # type: ignore[method-assign]
    return result.seconds, timed[0], rebuild


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    arguments = parser.parse_args()
    runs = [one_run(arguments.epochs) for _ in range(arguments.runs)]
    for fit, page, rebuild in runs:
        print(f"fit {fit:.1f} s, page {page:.2f} s ({page / fit:.1%} of the fit), rebuild {rebuild:.2f} s")
    fit, page = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"median: fit {fit:.1f} s, page {page:.2f} s = {page / fit:.2%} of the fit")
