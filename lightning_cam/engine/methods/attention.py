"""Transformers explained the way they compute: attention rollout and gradient-weighted rollout.

Both read the relevance of the patch tokens from a product of per-block ``[B, N, N]`` matrices (see
:class:`~lightning_cam.engine.methods.registry.AttentionInputs`): the class token's row, or, for a model
that pools its tokens (timm ``global_pool="avg"``, Hugging Face ``use_mean_pooling``, no class token),
the mean of the patch tokens' rows (the tokens the pooling averages), reshaped to the patch grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_cam.engine.methods.registry import AttentionInputs, register

__all__ = ["grad_rollout", "patch_relevance", "rollout"]


def patch_relevance(inputs: AttentionInputs, relevance: Tensor) -> Tensor:
    """The patch tokens' share of ``relevance`` ``[B, N, N]`` as a map ``[B, h, w]``: the class token's
    row, or (a model that pools its patch tokens) the mean of the patch tokens' rows."""
    rows = relevance[:, 0] if inputs.class_token else relevance[:, inputs.prefix :].mean(1)
    return rows[:, inputs.prefix :].reshape(relevance.shape[0], *inputs.grid)


def _identity_like(matrix: Tensor) -> Tensor:
    return torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device).expand_as(matrix)


@register("rollout", kind="attention")
def rollout(inputs: AttentionInputs) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): per block the head-mean attention mixed half with the
    identity (the residual path), rows renormalised, multiplied through the blocks from the first."""
    relevance = _identity_like(inputs.attentions[0])
    for attention in inputs.attentions:
        mixed = 0.5 * attention + 0.5 * _identity_like(attention)
        relevance = (mixed / mixed.sum(-1, keepdim=True)) @ relevance
    return patch_relevance(inputs, relevance)


@register("grad_rollout", kind="attention", needs_attention_gradients=True)
def grad_rollout(inputs: AttentionInputs) -> Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf, 2021, the rule without LRP): ``R = I``, then for
    each block in order ``R = R + mean_heads((dS/dA * A)^+) R``."""
    assert inputs.relevances is not None, "the engine computes the attention gradients grad_rollout needs"
    relevance = _identity_like(inputs.relevances[0])
    for weighted in inputs.relevances:
        relevance = relevance + weighted @ relevance
    return patch_relevance(inputs, relevance)
