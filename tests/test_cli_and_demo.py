"""LightningCLI presets in callbacks/, the example script, and `lightning-cam demo`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from lit_helpers import read_tensorboard_images

from lightning_cam import CAMMonitor
from lightning_cam.cli import main as lightning_cam_main

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


def load_example() -> object:
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "examples" / "train_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_presets() -> None:
    assert {p.stem for p in PRESETS} >= {"gradient_every_epoch", "full_comparison", "bias_audit"}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_lightning_cli_builds_cam_monitor_from_each_preset(preset: Path, tmp_path: Path) -> None:
    cli = load_example().main(
        ["--config", str(preset), "--trainer.default_root_dir", str(tmp_path)], run=False
    )
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, CAMMonitor)]
    assert len(monitors) == 1
    expected = yaml.safe_load(preset.read_text())["trainer"]["callbacks"][0]["init_args"]
    config = monitors[0].config
    assert config.methods == expected["methods"]
    assert config.num_samples == expected["num_samples"]
    targets = expected.get("targets", "predicted")
    assert list(config.targets) == (targets if isinstance(targets, list) else [targets])
    assert config.alerts == expected.get("alerts") and config.stop_on_alert == expected.get(
        "stop_on_alert", False
    )


@pytest.mark.slow
def test_example_script_trains_with_a_preset(tmp_path: Path) -> None:
    preset = ROOT / "callbacks" / "bias_audit.yaml"
    args = [
        "fit",
        "--config",
        str(preset),
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    args += ["--data.num_train", "128", "--data.num_val", "32", "--trainer.enable_progress_bar", "false"]
    load_example().main(args)
    grids = {
        tag: read_tensorboard_images(next((tmp_path / "lightning_logs").iterdir()), f"cam/{tag}/grid")
        for tag in ("predicted", "label")
    }
    assert [step for step, _ in grids["predicted"]] == [2] and [step for step, _ in grids["label"]] == [2]


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lightning_cam_main(["demo", "--epochs", "1", "--num-train", "128", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "validation accuracy, cue agrees with the label" in printed
    assert "validation accuracy, cue drawn at random" in printed
    assert f"tensorboard --logdir {tmp_path}" in printed
    grids = read_tensorboard_images(tmp_path / "demo" / "version_0", "cam/predicted/grid")
    assert [step for step, _ in grids] == [2]


@pytest.mark.slow
def test_demo_with_csv_logger_writes_png_grids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lightning_cam_main(
        ["demo", "--epochs", "1", "--num-train", "64", "--out", str(tmp_path), "--logger", "csv"]
    )
    assert "PNG grids under" in capsys.readouterr().out
    assert (tmp_path / "demo" / "version_0" / "cam" / "predicted" / "step_1.png").exists()


@pytest.mark.slow
def test_default_demo_model_relies_on_the_cue(tmp_path: Path) -> None:
    from lightning_cam.demo import run_demo

    result = run_demo(out=tmp_path, logger="csv", progress=False)
    # Learned where the cue agrees (chance is 0.25), and clearly worse where the cue is random. Seeds 0-4
    # (benchmarks/seed_margins.py --demos): cued 0.996, 1.0, 0.953, 0.477, 0.52; the gap 0.094-0.164.
    assert result.accuracy["cued"] > 0.38
    assert result.accuracy["cued"] - result.accuracy["decorrelated"] > 0.05


@pytest.mark.slow
def test_demo_trains_a_vision_transformer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lightning_cam_main(
        ["demo", "--arch", "vit", "--epochs", "1", "--num-train", "128", "--out", str(tmp_path)]
    )
    assert "validation accuracy" in capsys.readouterr().out
    grids = read_tensorboard_images(tmp_path / "demo" / "version_0", "cam/predicted/grid")
    assert [step for step, _ in grids] == [2]


def test_report_on_a_missing_or_empty_folder_says_what_to_pass_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as stop:
            lightning_cam_main(["report", str(folder)])
        assert stop.value.code == 2
        error = capsys.readouterr().err
        assert "lightning_logs/version_0" in error and "Traceback" not in error
