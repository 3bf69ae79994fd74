"""Gradient-free methods that score channels with extra forward passes: Score-CAM and Ablation-CAM.

Both run their ``K x B`` forwards batched across channels **and** images, in chunks. The
default chunk size fits a memory budget; on a CUDA out-of-memory error the chunk is halved and
the chunk retried (said once). The forwards run under ``torch.inference_mode()``, optionally
under autocast (``autocast_dtype``), inside the engine's state guard (eval mode, RNGs kept).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import forward_hooks
from lightning_cam.engine.logits import select_output
from lightning_cam.engine.methods.registry import LayerInputs, at_least_float32, register
from lightning_cam.engine.spatial import resize, spatial_dims, weighted_sum

__all__ = ["ablationcam", "default_chunk_size", "run_in_chunks", "scorecam"]

MEMORY_BUDGET_BYTES = 512 * 2**20
CPU_ROWS = 128  # on the CPU larger batches are slower per row (cache): 84 ms vs 59 ms for 336 rows measured
_PERTURBATION_OPTIONS = {"chunk_size": None, "autocast_dtype": None}


def default_chunk_size(
    sample: Tensor, rows: int, budget_bytes: int = MEMORY_BUDGET_BYTES, cpu_rows: int | None = CPU_ROWS
) -> int:
    """Rows per chunk for a memory budget: a row is counted as 16 times the bytes of ``sample``
    (one input plus the activations a forward keeps alive), at most ``rows``, and at most
    ``cpu_rows`` on the CPU (``None``: no cap, for work that is faster in fewer, larger calls)."""
    per_row = max(1, sample.numel() * 4 * 16)
    cap = cpu_rows if sample.device.type == "cpu" and cpu_rows is not None else rows
    return max(1, min(rows, cap, budget_bytes // per_row))


def run_in_chunks(
    rows: int, chunk_size: int, run: Callable[[int, int], Tensor], what: str, align: int | None = None
) -> Tensor:
    """``torch.cat([run(start, stop) for each chunk])``; on CUDA out-of-memory, halve the chunk and retry.
    With ``align``, no chunk crosses a multiple of ``align``."""
    results, start = [], 0
    while start < rows:
        stop = min(rows, start + chunk_size)
        if align is not None:
            stop = min(stop, (start // align + 1) * align)
        try:
            results.append(run(start, stop))
        except torch.cuda.OutOfMemoryError:
            if chunk_size == 1:
                raise
            chunk_size = max(1, chunk_size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(
                f"{what}: out of memory; retrying with chunk_size={chunk_size} (pass chunk_size to set it).",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        start = stop
    return torch.cat(results) if results else torch.empty(0)


def _forward_context(device: torch.device, autocast_dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=autocast_dtype)


def _require_model(inputs: LayerInputs) -> tuple[nn.Module, Tensor]:
    assert inputs.model is not None and inputs.images is not None, "the engine passes the model and images"
    return inputs.model, inputs.images


@register("scorecam", perturbs_input=True, reruns_model=True, options={**_PERTURBATION_OPTIONS, "topk": None})
def scorecam(
    inputs: LayerInputs,
    chunk_size: int | None = None,
    topk: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Score-CAM (Wang et al., 2020), as its authors' code computes it.

    Each channel ``A_k`` is upsampled bilinearly to the input size and min-maxed to ``[0, 1]``
    (a flat channel is skipped, weight 0); the input is masked with it, and the weight ``w_k`` is
    the **softmax probability** of the target class on the masked input. The map is
    ``sum_k w_k upsample(A_k)`` at input resolution (computed as ``upsample(sum_k w_k A_k)``:
    upsampling is linear), so the engine's ReLU applies after upsampling, as in the authors' code.

    Options:
        chunk_size: masked images per forward (default: fits a 512 MiB budget).
        topk: score only the ``topk`` channels of largest activation variance per image (as Faster
            Score-CAM selects them); the other channels get the mean weight of the scored ones
            (Faster Score-CAM gives them 0, which drops the map's common part: on the demo's
            trained CNN, k = K/8 gives a Spearman correlation with the exact map of 0.37 with 0,
            0.94 with the mean). ``None`` is exact.
        autocast_dtype: run the masked forwards under autocast with this dtype.
    """
    model, images = _require_model(inputs)
    activations = inputs.activations
    batch, channels = activations.shape[:2]
    size = images.shape[2:]
    dims = spatial_dims(activations)
    varying = activations.amax(dim=dims) > activations.amin(dim=dims)  # flat channels are skipped
    used = varying
    if topk is not None and topk < channels:
        top = activations.flatten(2).var(dim=2).topk(max(1, topk), dim=1).indices
        used = varying & torch.zeros_like(varying).scatter_(1, top, True)
    image_index, channel_index = used.nonzero(as_tuple=True)

    def probabilities(start: int, stop: int) -> Tensor:
        rows, chans = image_index[start:stop], channel_index[start:stop]
        upsampled = resize(activations[rows, chans], size)[:, None]
        low = upsampled.amin(dim=dims, keepdim=True)
        masks = (upsampled - low) / (upsampled.amax(dim=dims, keepdim=True) - low)
        with torch.inference_mode(), _forward_context(images.device, autocast_dtype):
            output = select_output(model(images[rows] * masks.to(images.dtype)), inputs.output_key)
        return inputs.scorer.probability(at_least_float32(output), rows)

    rows = len(image_index)
    chunk = chunk_size or default_chunk_size(images[0], rows)
    scores = run_in_chunks(rows, chunk, probabilities, "scorecam")
    weights = torch.zeros(batch, channels, device=activations.device, dtype=activations.dtype)
    weights[image_index, channel_index] = scores.to(weights)
    if topk is not None and topk < channels:
        # A channel left out gets the mean weight of the scored ones, not 0: Score-CAM's weights are
        # probabilities that rarely fall far below the masked-input baseline, so dropping the rest of
        # the channels would drop that common part of the map.
        mean_weight = weights.sum(dim=1, keepdim=True) / used.sum(dim=1, keepdim=True).clamp(min=1)
        weights = torch.where(varying & ~used, mean_weight, weights)
    return resize(weighted_sum(weights, activations), size)


@contextmanager
def _replaced_output(layer: nn.Module, replacement: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, ``layer``'s output is ``replacement(output)`` (cast to the output's dtype)."""

    def hook_for(_index: int) -> Callable[..., Tensor]:
        def replace(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            return replacement(output).to(dtype=output.dtype, memory_format=torch.preserve_format)

        return replace

    with forward_hooks([layer], hook_for):
        yield


class _AblationMismatchError(ValueError):
    """Running only the layers after the target layer did not reproduce the model's logits."""


@register("ablationcam", reruns_model=True, options=dict(_PERTURBATION_OPTIONS))
def ablationcam(
    inputs: LayerInputs, chunk_size: int | None = None, autocast_dtype: torch.dtype | None = None
) -> Tensor:
    """Ablation-CAM (Desai & Ramaswamy, 2020): ``w_k = (y^c - y^c_k) / y^c``, with ``y^c_k`` the
    target logit when channel ``k`` of ``A`` is set to zero.

    Each image gets ``K + 1`` rows: an unablated control (it checks that running only the layers
    after the target layer reproduces the model's logits), then one copy per channel with that
    channel zeroed. The rows of all images are batched together in chunks: the layers before the
    target layer run once per chunk on the chunk's images, and the layers after it on the rows.
    A target layer whose block adds a tensor computed before it (a residual connection) cannot mix
    images in one forward; it gets one image per forward, whose prefix output broadcasts.

    Options:
        chunk_size: ablated copies per forward (default: fits a 512 MiB budget).
        autocast_dtype: run the ablated forwards under autocast with this dtype.
    """
    assert inputs.layer is not None and inputs.scores is not None
    scores = inputs.scores
    try:
        ablated = _checked_ablation(inputs, scores, chunk_size, autocast_dtype, one_image_per_forward=False)
    except (RuntimeError, _AblationMismatchError):
        if inputs.activations.shape[0] == 1:
            raise
        ablated = _checked_ablation(inputs, scores, chunk_size, autocast_dtype, one_image_per_forward=True)
    safe_scores = torch.where(scores == 0, 1.0, scores)[:, None]
    weights = torch.where(scores[:, None] == 0, 0.0, (scores[:, None] - ablated[:, 1:]) / safe_scores)
    return weighted_sum(weights, inputs.activations)


def _checked_ablation(
    inputs: LayerInputs,
    scores: Tensor,
    chunk_size: int | None,
    autocast_dtype: torch.dtype | None,
    one_image_per_forward: bool,
) -> Tensor:
    """The target logit of every row ``[B, K + 1]``, after checking the control rows against ``scores``."""
    ablated = _ablated_scores(inputs, chunk_size, autocast_dtype, one_image_per_forward)
    tolerance = 1e-2 if autocast_dtype is not None else 1e-3
    if not torch.allclose(ablated[:, 0], scores, rtol=tolerance, atol=tolerance, equal_nan=True):
        raise _AblationMismatchError(
            f"ablationcam: running only the layers after {inputs.layer_name!r} on its unablated output gives "
            f"logits {ablated[:, 0].tolist()} instead of the model's {scores.tolist()}: the model uses tensors "
            f"computed before {inputs.layer_name!r} after it (a skip connection across it). Pick a target layer "
            f"at the end of a stage (e.g. 'layer4'), or use scorecam."
        )
    return ablated


def _ablation_masks(activations: Tensor) -> Tensor:
    """``[K + 1, K, 1, ...]``: row 0 keeps every channel (the control), row ``k + 1`` zeroes channel ``k``."""
    channels = activations.shape[1]
    keep = torch.ones(channels + 1, channels, *([1] * (activations.dim() - 2)), device=activations.device)
    keep[1:] -= torch.eye(channels, device=activations.device).view(channels, channels, *keep.shape[2:])
    return keep


def _cannot_batch(layer: str, copies: int, images: int, error: RuntimeError) -> ValueError:
    return ValueError(
        f"ablationcam runs the layers after {layer!r} on a batch of {copies} ablated copies of its output "
        f"while the model's input holds {images} image(s), and this model cannot ({error}). It may reshape "
        f"with a fixed batch size or combine the layer's output with tensors computed before it. Pick "
        f"another target layer, or use scorecam."
    )


def _ablated_scores(
    inputs: LayerInputs,
    chunk_size: int | None,
    autocast_dtype: torch.dtype | None,
    one_image_per_forward: bool,
) -> Tensor:
    model, images = _require_model(inputs)
    activations = inputs.activations
    batch, channels = activations.shape[:2]
    per_image = channels + 1
    keep = _ablation_masks(activations)

    def ablated_logits(start: int, stop: int) -> Tensor:
        rows = torch.arange(start, stop, device=activations.device)
        image_rows, copy_rows = rows // per_image, rows % per_image
        copies = activations[image_rows] * keep[copy_rows]
        first, last = start // per_image, (stop - 1) // per_image

        def in_layout(output: Tensor) -> Tensor:  # the copies in the layer's own layout
            return inputs.layout.from_grid(copies, output, image_rows - first)

        try:
            with (
                _replaced_output(inputs.layer, in_layout),
                torch.inference_mode(),
                _forward_context(images.device, autocast_dtype),
            ):
                output = select_output(model(images[first : last + 1]), inputs.output_key)
        except RuntimeError as error:
            if not one_image_per_forward:
                raise  # mixing images in one forward failed: the caller retries one image at a time
            raise _cannot_batch(inputs.layer_name, stop - start, last + 1 - first, error) from error
        if len(output) != stop - start:
            raise ValueError(
                f"ablationcam: the layers after {inputs.layer_name!r} returned {len(output)} rows for "
                f"{stop - start} ablated copies; they must keep the batch dimension. Use scorecam."
            )
        return inputs.scorer.score(at_least_float32(output), image_rows)

    chunk = chunk_size or default_chunk_size(activations[0], batch * per_image)
    align = per_image if one_image_per_forward else None
    return run_in_chunks(batch * per_image, chunk, ablated_logits, "ablationcam", align).view(
        batch, per_image
    )
