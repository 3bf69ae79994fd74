"""Finding the model's prediction in its output (a tensor, a tuple, a dict, or anything ``output_key`` reads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["OutputKey", "select_output"]

OutputKey = int | str | Callable[[Any], Tensor] | None


def select_output(output: Any, output_key: OutputKey = None) -> Any:
    """Pick the prediction out of a model's output.

    ``output_key=None`` takes a tensor as it is, the first element of a tuple or list, and the
    ``"logits"`` entry of a dict; an int or a string indexes the output; a callable maps it. Anything
    else is returned as it is, for a callable target to read (a detection model's list of dicts).
    """
    if callable(output_key):
        return output_key(output)
    if output_key is not None:
        return output[output_key]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    return output
