"""Attention probabilities of every self-attention block, captured with their gradients in the
engine's one pass, whatever kernel the model runs, and the model unchanged afterwards.

Inside :func:`capture_attention`, ``torch.nn.functional.scaled_dot_product_attention`` is replaced by
its textbook form (``softmax(Q K^T * scale + mask) V``), whose probabilities are recorded; timm
attention modules are switched to their fused path (``fused_attn``), which calls it, and
``nn.MultiheadAttention``'s native fast path is switched off. That reaches timm ViTs, torchvision's
``nn.MultiheadAttention`` (its ``need_weights=False`` path calls the same function) and Hugging Face
models with their default ``"sdpa"`` attention. The function and every flag are put back in a
``finally`` block. Per block only ``[B, N, N]`` head means are kept: the attention at
forward time and, through a tensor hook during the backward, the gradient-weighted attention.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lightning_cam.engine.layouts import token_layout
from lightning_cam.engine.methods.registry import AttentionInputs

__all__ = ["AttentionCapture", "attention_inputs", "capture_attention"]


@dataclass
class AttentionCapture:
    """What the blocks' attention gave during one forward (and backward) pass."""

    record_relevance: bool
    attentions: list[Tensor] = field(default_factory=list)
    relevances: list[Tensor | None] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    first: Tensor | None = None
    """The first block's probabilities, in the graph: a gradient source that makes the backward reach
    every block."""

    def record(self, probabilities: Tensor) -> None:
        """Keep the head mean of one block's probabilities ``[B, heads, N, N]`` and, when asked, hook
        its gradient-weighted head mean."""
        self.shapes.append(tuple(probabilities.shape))
        self.attentions.append(probabilities.detach().float().mean(1))
        if self.record_relevance and probabilities.requires_grad:
            self.first = probabilities if self.first is None else self.first
            self.relevances.append(None)
            probabilities.register_hook(
                partial(self._weigh, len(self.relevances) - 1, probabilities.detach())
            )

    def _weigh(self, index: int, probabilities: Tensor, gradient: Tensor) -> None:
        if self.relevances[index] is None:  # the first backward's; a guided backprop pass comes later
            self.relevances[index] = (gradient.float() * probabilities.float()).clamp(min=0).mean(1)


def _masked(scores: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is None:
        return scores
    return scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask


def _recording_attention(
    capture: AttentionCapture,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``scaled_dot_product_attention`` as its documentation defines it, recording the probabilities."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = _masked((query @ key.transpose(-2, -1)) * scale, attn_mask, is_causal)
    probabilities = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    capture.record(probabilities)
    if dropout_p > 0:
        probabilities = F.dropout(probabilities, dropout_p)
    return probabilities @ value


@contextmanager
def capture_attention(model: nn.Module, record_relevance: bool) -> Iterator[AttentionCapture]:
    """Record every self-attention block's probabilities during the forward run inside the block (and
    with ``record_relevance`` their gradient-weighted head means during a later backward)."""
    capture = AttentionCapture(record_relevance)
    fused = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    original, fast_path = F.scaled_dot_product_attention, torch.backends.mha.get_fastpath_enabled()
    try:
        for module, _ in fused:
            module.fused_attn = True
        torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's native kernel skips it
        F.scaled_dot_product_attention = partial(_recording_attention, capture)
        yield capture
    finally:
        F.scaled_dot_product_attention = original
        torch.backends.mha.set_fastpath_enabled(fast_path)
        for module, flag in fused:
            module.fused_attn = flag


def _pools_by_class_token(model: nn.Module) -> bool:
    """Whether the model predicts from token 0: timm says so in ``global_pool`` (``"token"``), Hugging
    Face in its config (``use_mean_pooling``: BEiT, Data2Vec-Vision average their patch tokens);
    torchvision and other Hugging Face ViTs, and any model with a ``cls_token`` / ``class_token``
    parameter, do."""
    pool = getattr(model, "global_pool", None)
    if isinstance(pool, str):
        return pool == "token"
    if getattr(getattr(model, "config", None), "use_mean_pooling", False) is True:
        return False
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_parameters()}
    return bool(names & {"cls_token", "class_token"})


def attention_inputs(
    capture: AttentionCapture, model: nn.Module, size: tuple[int, ...], batch: int
) -> AttentionInputs:
    """The captured attention as method inputs, checked to be one global self-attention over the same
    tokens in every block; the prefix and the patch grid come from the model's metadata or the shapes."""
    if len(size) != 2:
        raise ValueError(
            f"rollout and grad_rollout read a 2-D grid of patches; this input has spatial size {list(size)}. "
            f"For volumes and clips use the CAM family (gradcam, layercam, ...) at a 5-D layer."
        )
    if not capture.shapes:
        raise ValueError(
            "rollout and grad_rollout found no self-attention: no block called torch's "
            "scaled_dot_product_attention during the forward (timm ViTs, torchvision's vit_*, Hugging Face "
            "ViT/DeiT with attn_implementation='sdpa' do). For other models use the CAM family at a token layer."
        )
    tokens = capture.shapes[0][-1]
    if any(shape[0] != batch or shape[-2:] != (tokens, tokens) for shape in capture.shapes):
        raise ValueError(
            f"rollout needs global self-attention over the same tokens in every block; this model's "
            f"attention shapes are {sorted(set(capture.shapes))} for {batch} images (windowed attention, as "
            f"in Swin, or token pooling). Use the CAM family at a token layer, e.g. gradcam with "
            f"target_layer='auto'."
        )
    try:
        layout = token_layout((batch, tokens, 1), size, model, "attention")
    except ValueError as error:
        raise ValueError(
            f"the attention runs over {tokens} tokens for an input of {list(size)}, which do not read as one "
            f"grid of patches after a few prefix tokens; rollout needs the patch tokens of a ViT-style model."
        ) from error
    relevances = None
    if capture.record_relevance:
        if any(r is None for r in capture.relevances) or len(capture.relevances) != len(capture.attentions):
            raise ValueError(
                "the explained score does not depend on every attention block; grad_rollout needs it to."
            )
        relevances = [r for r in capture.relevances if r is not None]
    return AttentionInputs(
        capture.attentions, relevances, layout.prefix, layout.grid, _pools_by_class_token(model)
    )
