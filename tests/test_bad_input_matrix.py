"""One table of bad input for every public entry point, each with the message it must give."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import SmallCNN
from test_callback import INVALID_OPTIONS
from test_engine_errors import CASES as EXPLAIN_CASES

import lightning_cam as lc
from lightning_cam.batches import unpack_batch
from lightning_cam.report.grids import apply_colormap

IMAGES = torch.rand(2, 3, 16, 16)
LABELS = torch.tensor([0, 1])

Row = tuple[str, Callable[[], Any], type[Exception], str]

ROWS: list[Row] = [
    *[
        (
            f"explain: {case}",
            lambda m=model, i=images, o=options: lc.explain(m(), i, **({"methods": "gradcam"} | o)),
            ValueError,
            message,
        )
        for case, options, model, images, message in EXPLAIN_CASES
    ],
    *[
        (f"CAMMonitor: {options}", lambda o=options: lc.CAMMonitor(**o), error, message)
        for options, error, message in INVALID_OPTIONS
    ],
    (
        "CAMMonitor: option of another method",
        lambda: lc.CAMMonitor(methods=["gradcam"], method_options={"scorecam": {"topk": 4}}),
        ValueError,
        r"method_options names method\(s\) \['scorecam'\] that are not requested",
    ),
    (
        "CAMMonitor: unknown method option",
        lambda: lc.CAMMonitor(methods=["scorecam"], method_options={"scorecam": {"top": 4}}),
        ValueError,
        "scorecam has no option",
    ),
    (
        "CAMMonitor: negative timeline",
        lambda: lc.CAMMonitor(timeline_length=-1),
        ValueError,
        "timeline_length must be an integer >= 0",
    ),
    (
        "explain: unknown option",
        lambda: lc.explain(SmallCNN(), IMAGES, "scorecam", topK=3),
        ValueError,
        r"unknown option\(s\) topK",
    ),
    (
        "explain_batch: options for an unrequested method",
        lambda: lc.explain_batch(SmallCNN(), IMAGES, "gradcam", method_options={"ablationcam": {}}),
        ValueError,
        "not requested",
    ),
    (
        "batch: a string",
        lambda: unpack_batch("images.png"),
        ValueError,
        r"cannot read this batch: str.*unpack=",
    ),
    (
        "batch: dict without the image key",
        lambda: unpack_batch({"x": IMAGES}),
        ValueError,
        r"dict\('x': Tensor\[2, 3, 16, 16\] float32\).*image_key",
    ),
    (
        "batch: non-image tensor",
        lambda: unpack_batch((torch.rand(2, 10), LABELS)),
        ValueError,
        r"images as a float or uint8 tensor \[B, C, H, W\].*Tensor\[2, 10\]",
    ),
    (
        "batch: soft labels",
        lambda: unpack_batch((IMAGES, torch.tensor([[0.3, 0.7], [0.9, 0.1]]))),
        ValueError,
        r"labels as integer class indices \[B\] \(2\), multi-hot rows \[B, C\] or label maps \[B, H, W\].*got Tensor\[2, 2\] float32",
    ),
    (
        "batch: labels of another batch",
        lambda: unpack_batch((IMAGES, torch.tensor([0, 1, 2]))),
        ValueError,
        r"integer class indices \[B\] \(2\)",
    ),
    (
        "batch: masks that are not tensors",
        lambda: unpack_batch((IMAGES, LABELS, ["a", "b"])),
        ValueError,
        r"masks must be a tensor \[B, H, W\] or a dict of them; got list\[2\]",
    ),
    (
        "unpack returning two values",
        lambda: unpack_batch((IMAGES, LABELS), unpack=lambda b: b),
        ValueError,
        r"unpack must return \(images, labels, masks\)",
    ),
    (
        "colormap",
        lambda: apply_colormap(torch.rand(2, 2), "parula"),
        ValueError,
        "unknown colormap 'parula'; choose one of jet",
    ),
]


@pytest.mark.parametrize(("case", "call", "error", "message"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(case: str, call: Callable[[], Any], error: type[Exception], message: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(error, match=message):
        call()
