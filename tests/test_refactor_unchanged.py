"""Moving the package into its wings changed nothing CAMMonitor logs: a fit of a fixed, untrained
model (learning rate 0) gives the scalars, grids, timelines, class-mean images and bias-report
numbers recorded before the move (``tests/data/refactor_reference``, written by
``tests/recorded_fit.py``).

The tolerances are kernel rounding between CPUs, not training noise: the same fit run with
``ATEN_CPU_CAPABILITY=default`` against the AVX2 kernels the reference was written with differed by
at most 9e-6 relative on any scalar, 4 levels on any pixel and on 0.035 % of the pixels by more
than 1 level. A changed method, target, mask or tag breaks them by orders of magnitude.

Re-recorded once since, on purpose: a flat map's metrics became NaN (issue "Nothing silent"); only the
scalars of the three (target, method) pairs with flat maps changed, no image did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recorded_fit import record_fit

REFERENCE = Path(__file__).parent / "data" / "refactor_reference"
SCALAR_RTOL, SCALAR_ATOL = 1e-3, 1e-5
PIXEL_LEVELS, PIXEL_SHARE = 8, 0.01  # no pixel further than 8/255; at most 1 % of them more than 2


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
    assert set(after["scalars"]) == set(before)
    for tag, values in before.items():
        steps, numbers = zip(*values, strict=True)
        new_steps, new_numbers = zip(*after["scalars"][tag], strict=True)
        assert new_steps == steps, tag
        np.testing.assert_allclose(new_numbers, numbers, rtol=SCALAR_RTOL, atol=SCALAR_ATOL, err_msg=tag)


def test_every_image_has_the_same_pixels(recorded: tuple[Path, dict]) -> None:
    root, after = recorded
    before = json.loads((REFERENCE / "recorded.json").read_text())["images"]
    assert after["images"] == before
    for path in before:
        old = np.asarray(Image.open(REFERENCE / path).convert("RGB")).astype(int)
        new = np.asarray(Image.open(root / path).convert("RGB")).astype(int)
        assert new.shape == old.shape, path
        differs = np.abs(new - old).max(axis=-1)
        assert differs.max() <= PIXEL_LEVELS, path
        assert (differs > 2).mean() <= PIXEL_SHARE, path


def test_the_bias_report_keeps_its_first_and_last_numbers(recorded: tuple[Path, dict]) -> None:
    _, after = recorded
    before = table_rows(json.loads((REFERENCE / "recorded.json").read_text())["report"])
    rows = {(row["method"], row["mask"], row["slice"]): row for row in table_rows(after["report"])}
    assert sorted(rows) == sorted((row["method"], row["mask"], row["slice"]) for row in before)
    for row in before:
        new = rows[(row["method"], row["mask"], row["slice"])]
        for column in ("mask area", "mass first", "mass last", "enrichment first", "enrichment last"):
            assert float(new[column]) == pytest.approx(float(row[column]), rel=1e-3, abs=1e-3), (
                row["method"],
                column,
            )
