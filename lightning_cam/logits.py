"""Finding the logits in a model's output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["OutputKey", "select_logits"]

OutputKey = int | str | Callable[[Any], Tensor] | None


def select_logits(output: Any, output_key: OutputKey = None) -> Tensor:
    """Pick the logits ``[B, num_classes]`` out of a model's output.

    ``output_key=None`` takes a tensor as it is, the first element of a tuple or list, and the
    ``"logits"`` entry of a dict; an int or a string indexes the output; a callable maps it.
    """
    if callable(output_key):
        logits = output_key(output)
    elif output_key is not None:
        logits = output[output_key]
    elif isinstance(output, Tensor):
        logits = output
    elif isinstance(output, (tuple, list)) and output:
        logits = output[0]
    elif isinstance(output, dict) and "logits" in output:
        logits = output["logits"]
    else:
        raise ValueError(
            f"the model returned {type(output).__name__}; pass output_key (an index, a dict key or a "
            f"function) to say where its logits [B, num_classes] are."
        )
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"the model's output must be logits [B, num_classes]; got {shape}. For a model with "
            f"several outputs pass output_key to pick the logits."
        )
    return logits
