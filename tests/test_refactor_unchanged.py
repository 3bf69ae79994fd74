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
    return [
        dict(zip(columns, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[1:]
    ]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("after")
    return root, record_fit(root)


def test_every_scalar_is_logged_with_the_same_steps_and_values(recorded: tuple[Path, dict]) -> None:
    _, after = recorded
    before = json.loads((REFERENCE / "recorded.json").read_text())["scalars"]
    added = set(after["scalars"]) - set(before)  # features since the refactor, never a changed tag
    assert set(before) <= set(after["scalars"]) and all(tag.endswith("/flat_fraction") for tag in added)
    for tag, values in before.items():
        steps, numbers = zip(*values, strict=True)
        new_steps, new_numbers = zip(*after["scalars"][tag], strict=True)
        assert new_steps == steps, tag
        np.testing.assert_allclose(new_numbers, numbers, rtol=1e-5, atol=1e-6, err_msg=tag)


def flat_tiles_redrawn_grey(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Where a pixel may differ: a flat (all-zero) map's tile, which the old code drew as the image
    under jet's blue (``0.5 x + 0.5 (0, 0, 0.5)``) and the new one as the image faded to grey
    (``0.3 + 0.4 mean(x)``, issue "flat maps"). ``x`` is recovered from the old pixel."""
    image = old.astype(float) * 2 - np.array([0.0, 0.0, 127.5])
    grey = 0.3 * 255 + 0.4 * image.mean(axis=-1)
    return (np.abs(new - grey[..., None]).max(axis=-1) <= 2) & (new.max(axis=-1) == new.min(axis=-1))


def test_every_image_has_the_same_pixels(recorded: tuple[Path, dict]) -> None:
    root, after = recorded
    before = json.loads((REFERENCE / "recorded.json").read_text())["images"]
    assert after["images"] == before
    redrawn = 0
    for path in before:
        old = np.asarray(Image.open(REFERENCE / path).convert("RGB")).astype(int)
        new = np.asarray(Image.open(root / path).convert("RGB")).astype(int)
        assert new.shape == old.shape, path
        differs = np.abs(new - old).max(axis=-1) > 1
        assert not (differs & ~flat_tiles_redrawn_grey(old, new)).any(), path
        redrawn += int(differs.sum())
    assert redrawn < 0.05 * sum(np.prod(Image.open(root / path).size) for path in before)


def test_the_bias_report_keeps_its_first_and_last_numbers(recorded: tuple[Path, dict]) -> None:
    _, after = recorded
    before = table_rows(json.loads((REFERENCE / "recorded.json").read_text())["report"])
    rows = {(row["method"], row["mask"]): row for row in table_rows(after["report"]) if row["slice"] == "all"}
    assert sorted(rows) == sorted((row["method"], row["mask"]) for row in before)
    for row in before:
        new = rows[(row["method"], row["mask"])]
        for column in ("mask area", "mass first", "mass last", "enrichment first", "enrichment last"):
            assert float(new[column]) == pytest.approx(float(row[column]), abs=1e-4), (row["method"], column)
