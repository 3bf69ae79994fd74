"""`lightning-cam audit`: a checkpoint trained elsewhere audited from what LightningCLI takes, in a
subprocess as a user runs it; the JSON summary and the page read back; exit codes; bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lit_helpers import shapes_tensors
from strategy_helpers import PlantedClassifier, planted_model
from test_report import CHECKER, browse
from torch.utils.data import DataLoader, TensorDataset

import lightning_cam as lc
from lightning_cam.demo import ShapesClassifier, ShapesDataModule
from lightning_cam.demo.model import SmallCNN
from lightning_cam.demo.run import run_demo
from lightning_cam.report import REPORT_FILE

TESTS = Path(__file__).resolve().parent
DEMO = ["--model", "lightning_cam.demo.ShapesClassifier", "--data", "lightning_cam.demo.ShapesDataModule"]
SMALL = ["--data.num_val", "48", "--trainer.enable_progress_bar", "false", "--bootstrap_samples", "50"]


def lightning_cam_audit(*args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m lightning_cam audit ARGS`` (tests/ importable, for the planted model's classes)."""
    command = [sys.executable, "-m", "lightning_cam", "audit", *args]
    command += ["--out", str(out)] if out is not None else []
    environment = os.environ | {"PYTHONPATH": str(TESTS)}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's own checkpoint, after one short epoch."""
    result = run_demo(
        epochs=1, out=tmp_path_factory.mktemp("demo"), num_train=256, progress=False, logger="csv"
    )
    assert result.checkpoint is not None and result.checkpoint.is_file()
    return result.checkpoint


def summary_of(out: Path) -> dict:
    return json.loads((out / "audit_summary.json").read_text())


@pytest.mark.slow
def test_audit_of_the_demos_checkpoint_writes_the_page_and_a_summary_of_its_weights(
    demo_checkpoint: Path, tmp_path: Path
) -> None:
    done = lightning_cam_audit(*DEMO, *SMALL, "--ckpt_path", str(demo_checkpoint), out=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(tmp_path)
    # the accuracy by hand: the checkpoint's weights on the same validation images
    model = ShapesClassifier.load_from_checkpoint(demo_checkpoint).eval()
    data = ShapesDataModule(num_val=48)
    data.setup("validate")
    with torch.no_grad():
        right = sum(int((model(b["image"]).argmax(1) == b["label"]).sum()) for b in data.val_dataloader()[0])
    assert summary["images"] == 48 and summary["checkpoint"] == str(demo_checkpoint)
    assert summary["figures"]["all"]["accuracy"]["value"] == pytest.approx(right / 48)
    assert summary["target_layers"] == ["net.features"] and summary["exit_code"] == 0
    assert set(summary["figures"]) >= {"all", "class=disk", "class=cross"}  # the data module's class names
    page = (tmp_path / REPORT_FILE).read_text()
    assert "images audited" in page and "demo.ckpt" in page and "Attention over training" not in page
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECKER + "</body>"))
    dom = browse(checked, "--dump-dom", "--virtual-time-budget=5000").stdout
    images = json.loads(
        re.search(r'<pre id="checked">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"')
    )
    assert [image["alt"] for image in images] == ["audit/mean_maps"]
    assert images[0]["complete"] and images[0]["width"] > 0


@pytest.mark.slow
def test_a_crossed_alert_exits_1_and_an_uncrossed_one_0(demo_checkpoint: Path, tmp_path: Path) -> None:
    common = [*DEMO, *SMALL, "--ckpt_path", str(demo_checkpoint)]
    crossed = lightning_cam_audit(*common, "--alert", "audit/accuracy/all=<1.01", out=tmp_path / "a")
    assert crossed.returncode == 1, crossed.stderr[-3000:]
    assert summary_of(tmp_path / "a")["alerts_crossed"][0]["tag"] == "audit/accuracy/all"
    assert "audit/accuracy/all" in (tmp_path / "a" / REPORT_FILE).read_text()
    quiet = lightning_cam_audit(
        *common, "--alert", "[audit/accuracy/all=>1.01, audit/count/all=<1]", out=tmp_path / "b"
    )
    assert quiet.returncode == 0 and summary_of(tmp_path / "b")["alerts_crossed"] == []


@pytest.mark.slow
def test_a_flagged_shortcut_exits_1_with_the_strategy_in_the_summary(tmp_path: Path) -> None:
    module = PlantedClassifier()
    module.net.load_state_dict(planted_model(0, "tag").state_dict())
    torch.save({"state_dict": module.state_dict()}, tmp_path / "planted.ckpt")
    done = lightning_cam_audit(
        "--model",
        "strategy_helpers.PlantedClassifier",
        "--data",
        "strategy_helpers.PlantedData",
        "--ckpt_path",
        str(tmp_path / "planted.ckpt"),
        "--strategies",
        "true",
        "--targets",
        "predicted",
        "--bootstrap_samples",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        out=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    flagged = [s for s in summary_of(tmp_path)["strategies"] if s["flagged"]]
    assert flagged and all(s["verdict"] == "shortcut suspect" and s["evidence"] >= 0.5 for s in flagged)
    assert "shortcut suspect" in (tmp_path / REPORT_FILE).read_text()


@pytest.mark.slow
def test_two_processes_audit_as_one(demo_checkpoint: Path, tmp_path: Path) -> None:
    common = [*DEMO, *SMALL, "--ckpt_path", str(demo_checkpoint), "--trainer.accelerator", "cpu"]
    one = lightning_cam_audit(*common, out=tmp_path / "one")
    two = lightning_cam_audit(
        *common, "--trainer.devices", "2", "--trainer.strategy", "ddp", out=tmp_path / "two"
    )
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "Starting with 2 processes" in two.stderr + two.stdout
    alone, shared = summary_of(tmp_path / "one"), summary_of(tmp_path / "two")
    assert shared["images"] == alone["images"] == 48
    for part, figures in alone["figures"].items():
        for key, figure in figures.items():
            for end in ("value", "low", "high"):
                if figure[end] is None:
                    assert shared["figures"][part][key][end] is None
                else:
                    assert shared["figures"][part][key][end] == pytest.approx(figure[end], abs=1e-5)


@pytest.mark.slow
def test_a_fit_config_of_a_cli_with_fixed_classes_needs_the_classes_named_first(
    demo_checkpoint: Path, tmp_path: Path
) -> None:
    config = tmp_path / "fit.yaml"
    config.write_text(
        "model:\n  width: 16\ndata:\n  num_val: 32\ntrainer:\n  max_epochs: 3\noptimizer: null\n"
    )
    refused = lightning_cam_audit("--config", str(config), "--ckpt_path", str(demo_checkpoint))
    assert refused.returncode == 2 and "--model my_package.MyModel --config" in refused.stderr
    assert "Traceback" not in refused.stderr
    done = lightning_cam_audit(
        *DEMO, "--config", str(config), "--ckpt_path", str(demo_checkpoint), out=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary_of(tmp_path)["images"] == 32


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "args", "said"),
    [
        ("unknown method", ["--methods", "[gradcamm]"], "unknown CAM method 'gradcamm'"),
        ("no data", ["--data", "null"], "has no val_dataloader()"),
        ("empty loader", ["--data.num_val", "0"], "found no images in the dataloader"),
        ("no checkpoint", ["--ckpt_path", "missing.ckpt"], "no checkpoint at --ckpt_path"),
        ("misspelt alert", ["--alert", "audit/acuracy/all=<0.5"], "closest: audit/accuracy/all"),
        ("bad alert", ["--alert", "audit/accuracy/all"], "write TAG=VALUE"),
    ],
)
def test_bad_input_says_what_is_wrong_and_exits_2(
    demo_checkpoint: Path, tmp_path: Path, case: str, args: list[str], said: str
) -> None:
    base = [*DEMO, "--data.num_val", "16", "--ckpt_path", str(demo_checkpoint), "--bootstrap_samples", "0"]
    done = lightning_cam_audit(*base, *args, out=tmp_path)
    assert done.returncode == 2, (case, done.stderr[-2000:])
    assert said in done.stderr and "Traceback" not in done.stderr, (case, done.stderr[-2000:])


@pytest.mark.slow
def test_a_checkpoint_of_another_model_lists_the_keys_that_differ(
    demo_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(demo_checkpoint, weights_only=False)
    state = checkpoint["state_dict"]
    state["net.extra.weight"] = state.pop("net.classifier.weight")
    torch.save(checkpoint, tmp_path / "other.ckpt")
    done = lightning_cam_audit(*DEMO, "--ckpt_path", str(tmp_path / "other.ckpt"), out=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "missing keys net.classifier.weight; unexpected keys net.extra.weight" in done.stderr


def test_audit_report_writes_the_page_of_an_audit_made_in_python(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SmallCNN(width=4).eval()
    loader = DataLoader(TensorDataset(*shapes_tensors(12, seed=0)), batch_size=4)
    result = lc.audit(model, loader, ["gradcam", "layercam"], progress=False, bootstrap_samples=0)
    reference = lc.explain_batch(model, next(iter(loader))[0], "gradcam")
    assert result.target_layers == reference.target_layers != []
    page = lc.audit_report(
        result, tmp_path / "page.html", model_name="SmallCNN", details={"dataset": "shapes"}
    )
    text = page.read_text()
    assert "<th>images audited</th><td>12</td>" in text and "<th>dataset</th><td>shapes</td>" in text
    assert "neither masks nor strategies" in text and 'alt="audit/mean_maps"' in text
    assert "Attention over training" not in text and "No check ran" not in text
    assert json.loads(json.dumps(result.summary(), allow_nan=False))["images"] == 12


@pytest.mark.slow
def test_the_readmes_example_config_audits_the_demos_checkpoint(
    demo_checkpoint: Path, tmp_path: Path
) -> None:
    config = TESTS.parent / "examples" / "audit_demo.yaml"
    done = lightning_cam_audit(
        "--config", str(config), "--ckpt_path", str(demo_checkpoint), "--data.num_val", "32", out=tmp_path
    )
    summary = summary_of(tmp_path)
    accuracy = summary["figures"]["all"]["accuracy"]["value"]
    crossed = accuracy < 0.9 or any(s["flagged"] for s in summary["strategies"])
    assert done.returncode == summary["exit_code"] == int(crossed), done.stderr[-3000:]
    assert (
        summary["methods"] == ["gradcam", "gradcam++"] and summary["images"] == 32 and summary["strategies"]
    )
