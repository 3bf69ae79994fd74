"""The audit page: opened by headless Chromium with the network cut off (every image decoded, every plot
there, a screenshot that is not blank), rebuilt from the logged files into the very same page, and
still sensible for a run without masks, groups or trust metrics, or without matplotlib."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from lit_helpers import TinyClassifier, loaders, trainer
from PIL import Image

from lightning_cam import CAMMonitor
from lightning_cam.demo.run import run_demo
from lightning_cam.report import REPORT_FILE, RunRecord, rebuild_report, render_page
from lightning_cam.report import plots as plots_module
from lightning_cam.report.record import table_of_text
from lightning_cam.report.tables import Report

CHECKER = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, complete: i.complete}));
  const out = document.createElement("pre"); out.id = "checked"; out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, (
        "the page tests need Debian's chromium package (.ci/run installs it: apt-get install -y chromium)"
    )
    return found


def browse(page: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page`` with every network request sent to a closed port."""
    offline = [
        "--proxy-server=http://127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        *offline,
        *arguments,
    ]
    return subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


def without_source_line(page: str) -> str:
    return re.sub(r"<p class='muted'>.*?</p>", "", page, count=1)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(epochs=3, out=out, num_train=512, progress=False)
    return result.log_dir


@pytest.mark.slow
def test_the_demos_page_opens_offline_with_every_image_decoded(demo_run: Path, tmp_path: Path) -> None:
    page = demo_run / REPORT_FILE
    text = page.read_text()
    assert (
        not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<script" not in text
    )  # self-contained
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</body>", CHECKER + "</body>"))
    dom = browse(checked, "--dump-dom", "--virtual-time-budget=5000").stdout
    images = json.loads(
        re.search(r'<pre id="checked">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"')
    )
    assert images and all(image["complete"] and image["width"] > 0 for image in images)
    alts = [image["alt"] for image in images]
    for family in ("enrichment on `cue`", "mass on `cue`", "enrichment on `object`", "drift"):
        assert any(alt.startswith(family) for alt in alts), family
    assert sum(alt.endswith(" grid") for alt in alts) >= 2 and any("mean_maps" in alt for alt in alts)
    assert "Full audit" in text and "Bias report" in text and "enrichment (first check" in text
    shot = tmp_path / "page.png"
    browse(page, f"--screenshot={shot}", "--window-size=1280,2400")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 500  # not blank


@pytest.mark.slow
def test_the_page_rebuilt_from_event_files_is_the_page_written_at_fit_end(
    demo_run: Path, tmp_path: Path
) -> None:
    rebuilt = rebuild_report(demo_run, tmp_path / "rebuilt.html")
    written = (demo_run / REPORT_FILE).read_text()
    assert "Written by CAMMonitor" in written and "Rebuilt by" in rebuilt.read_text()
    assert without_source_line(rebuilt.read_text()) == without_source_line(written)


def test_a_run_without_masks_groups_or_trust_gets_a_sensible_page_also_from_png_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders()
    monitor = CAMMonitor(methods=["gradcam", "layercam"], num_samples=4, report=True, strict=True)
    trainer(tmp_path, [monitor], max_epochs=3).fit(TinyClassifier(), train, val)
    written = (tmp_path / REPORT_FILE).read_text()
    assert "No mask was logged" in written and "drift" in written and written.count(' grid" src=') >= 2
    assert "timeline" in written and "No report table was logged" in written
    rebuilt = rebuild_report(tmp_path, tmp_path / "rebuilt.html").read_text()  # PNG files + scalars.csv
    assert without_source_line(rebuilt) == without_source_line(written)


def test_every_target_has_its_grids_under_a_heading_that_names_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train, val = loaders(with_masks=True)
    monitor = CAMMonitor(
        methods=["gradcam"], num_samples=4, targets=["predicted", 1], report=True, strict=True
    )
    trainer(tmp_path, [monitor], max_epochs=2).fit(TinyClassifier(), train, val)
    written = (tmp_path / REPORT_FILE).read_text()
    predicted, class_1 = (
        written.index("Target: the prediction (the predicted class"),
        written.index("Target: class 1"),
    )
    assert predicted < class_1
    assert 'alt="class_1 last check grid"' in written[class_1:]  # the second target's grid, under its heading
    assert 'alt="predicted first check grid"' in written[predicted:class_1]


def test_a_run_whose_batches_cannot_be_read_says_so_at_every_check_and_on_the_page(tmp_path: Path) -> None:
    """Soft labels are refused: before, one warning and then silence, and a page saying "No mask was
    logged" although every batch carried one."""
    images, labels, masks = (t[:16] for t in loaders(with_masks=True)[1].dataset.tensors)
    soft = torch.nn.functional.one_hot(labels, 4).float() * 0.9 + 0.025
    val = torch.utils.data.DataLoader(list(zip(images, soft, masks, strict=True)), batch_size=8)
    monitor = CAMMonitor(methods=["gradcam"], num_samples=4, report=True)
    with pytest.warns(UserWarning) as caught:
        trainer(tmp_path, [monitor], max_epochs=2).fit(SoftLabels(), loaders()[0], val)
    skipped = [str(w.message) for w in caught if "is skipped" in str(w.message)]
    assert len(skipped) == 2 and "step 4" in skipped[0] and "step 8" in skipped[1]
    assert "could not be read (ValueError: CAMMonitor needs labels as integer class indices" in skipped[0]
    written = (tmp_path / REPORT_FILE).read_text()
    assert "What went wrong" in written and "checks were skipped: no images were captured" in written
    assert "No check ran" in written and "No mask was logged" not in written
    rebuilt = rebuild_report(tmp_path, tmp_path / "rebuilt.html").read_text()
    assert without_source_line(rebuilt) == without_source_line(written)


class SoftLabels(TinyClassifier):
    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.log("val_loss", -(batch[1] * self(batch[0]).log_softmax(1)).sum(1).mean())


def test_a_resumed_runs_page_holds_both_halves_and_equals_the_rebuilt_page(tmp_path: Path) -> None:
    """Fit 2 epochs, resume from ``last.ckpt`` to 4 into the same TensorBoard folder, then fit again
    (nothing left to train): the page has all 4 checks and equals the one rebuilt from the event files."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    torch.manual_seed(0)
    train, val = loaders(with_masks=True)

    def fit(epochs: int, resume: str | None) -> CAMMonitor:
        monitor = CAMMonitor(methods=["gradcam"], num_samples=4, strict=True, background_writes=False)
        keep = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        logger = TensorBoardLogger(tmp_path, name="run", version=0)
        run = trainer(tmp_path, [monitor, keep], max_epochs=epochs, logger=logger, enable_checkpointing=True)
        run.fit(TinyClassifier(), train, val, ckpt_path=resume)
        return monitor

    fit(2, None)
    log_dir = tmp_path / "run" / "version_0"
    fit(4, str(tmp_path / "ckpt" / "last.ckpt"))
    written = (log_dir / REPORT_FILE).read_text()
    assert "4 (steps 4 to 16)" in written and "first check: step 4" in written  # was "2 (steps 12 to 16)"
    rebuilt = rebuild_report(log_dir, tmp_path / "rebuilt.html").read_text()
    assert without_source_line(rebuilt) == without_source_line(written)
    page_time = (log_dir / REPORT_FILE).stat().st_mtime_ns
    fit(4, str(tmp_path / "ckpt" / "last.ckpt"))  # trains nothing: logs no report and no page again
    assert (log_dir / REPORT_FILE).stat().st_mtime_ns == page_time


def test_a_run_without_any_mask_writes_no_page_unless_asked(tmp_path: Path) -> None:
    train, val = loaders()
    trainer(tmp_path, [CAMMonitor(methods=["gradcam"], num_samples=4, strict=True)], max_epochs=1).fit(
        TinyClassifier(), train, val
    )
    assert not (tmp_path / REPORT_FILE).exists()


def test_without_matplotlib_the_curves_are_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots_module, "plotting_available", lambda: False)
    monkeypatch.setattr("lightning_cam.report.page.plotting_available", lambda: False)
    record = RunRecord(
        "cam",
        {"methods": ["gradcam"], "alerts": {"cam/gradcam/enrichment/cue": ">3"}},
        {"cam/gradcam/enrichment/cue": [(10, 1.5), (20, 4.25)], "cam/gradcam/drift": [(20, 0.125)]},
    )
    page = render_page(record, "test")
    assert "matplotlib is not installed" in page and "<img" not in page
    assert "<td>20</td><td>4.25</td>" in page and "<td>0.125</td>" in page


def test_a_report_survives_its_markdown() -> None:
    report = Report(
        ["method", "enrichment"], [["gradcam", 6.41], ["gradcam++", "n/a"]], ["gradcam puts `cue` first"]
    )
    table = table_of_text(report.text)
    assert table.columns == ["method", "enrichment"] and table.rows == [
        ["gradcam", "6.41"],
        ["gradcam++", "n/a"],
    ]
    assert table.readings == ["gradcam puts `cue` first"]
    assert table_of_text("CAMMonitor alert: x rose above 3").rows == [["CAMMonitor alert: x rose above 3"]]


def test_a_thousand_row_table_is_folded_on_the_page_and_cut_on_the_console() -> None:
    table = Report(["class", "evidence"], [[f"c{i}", i] for i in range(1000)], ["the reading"])
    page = render_page(RunRecord(tables={"audit/strategies": table}), "test")
    shown, folded = page.split("<details>", 1)
    assert shown.count("<td>c") == 30 and "<summary>970 more rows</summary>" in folded
    assert folded.count("<td>c") == 970 and page.count("<td>c999</td>") == 1  # nothing lost
    brief = table.brief()
    assert brief.count("\n| c") == 30 and "... 970 more rows" in brief and brief.endswith("- the reading")
    assert Report(["a"], [[1]], []).brief() == Report(["a"], [[1]], []).text
