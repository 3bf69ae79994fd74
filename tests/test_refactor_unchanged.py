"""The pipeline refactor of CAMMonitor changed nothing it logs: a fixed-seed fit's scalars, grids,
timelines, class-mean images and bias-report numbers equal those recorded before the refactor
(``tests/data/refactor_reference``, written by ``tests/recorded_fit.py`` from the old callback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recorded_fit import record_fit

REFERENCE = Path(__file__).parent / "data" / "refactor_reference"


def table_rows(report: str) -> list[dict[str, str]]:
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("after")
    return root, record_fit(root)


def test_every_scalar_is_logged_with_the_same_steps_and_values(recorded: tuple[Path, dict]) -> None:
    _, after = recorded
    before = json.loads((REFERENCE / "recorded.json").read_text())["scalars"]
    assert sorted(after["scalars"]) == sorted(before)
    for tag, values in before.items():
        steps, numbers = zip(*values, strict=True)
        new_steps, new_numbers = zip(*after["scalars"][tag], strict=True)
        assert new_steps == steps, tag
        np.testing.assert_allclose(new_numbers, numbers, rtol=1e-5, atol=1e-6, err_msg=tag)


def test_every_image_has_the_same_pixels(recorded: tuple[Path, dict]) -> None:
    root, after = recorded
    before = json.loads((REFERENCE / "recorded.json").read_text())["images"]
    assert after["images"] == before
    for path in before:
        old = np.asarray(Image.open(REFERENCE / path).convert("RGB")).astype(int)
        new = np.asarray(Image.open(root / path).convert("RGB")).astype(int)
        assert new.shape == old.shape, path
        assert np.abs(new - old).max() <= 1, path


def test_the_bias_report_keeps_its_first_and_last_numbers(recorded: tuple[Path, dict]) -> None:
    _, after = recorded
    before = table_rows(json.loads((REFERENCE / "recorded.json").read_text())["report"])
    rows = {(row["method"], row["mask"]): row for row in table_rows(after["report"]) if row["slice"] == "all"}
    assert sorted(rows) == sorted((row["method"], row["mask"]) for row in before)
    for row in before:
        new = rows[(row["method"], row["mask"])]
        for column in ("mask area", "mass first", "mass last", "enrichment first", "enrichment last"):
            assert float(new[column]) == pytest.approx(float(row[column]), abs=1e-4), (row["method"], column)
