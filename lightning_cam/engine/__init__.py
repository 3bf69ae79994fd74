"""The explain engine: what :func:`explain` needs to turn any ``nn.Module`` and a batch of images into
maps, and nothing else.

It owns the single guarded pass (:mod:`.explainer`), hooks and the state guard (:mod:`.capture`),
target-layer resolution and ``"auto"`` (:mod:`.layers`), layer-output layouts (:mod:`.layouts`), what a
map explains (:mod:`.targets`), 2-D / 3-D spatial helpers (:mod:`.spatial`), reading logits out of a
model's output (:mod:`.logits`) and the methods, one pure function each (:mod:`.methods`). It imports
torch only: no Lightning, no torchmetrics, nothing from the other wings.
"""

from lightning_cam.engine.explainer import (
    METHODS,
    Explanation,
    OutputKey,
    check_images,
    explain,
    explain_batch,
    finite_rows,
    needs_target_layer,
    normalize_maps,
    resolve_methods,
    resolve_options,
)

__all__ = [
    "METHODS",
    "Explanation",
    "OutputKey",
    "check_images",
    "explain",
    "explain_batch",
    "finite_rows",
    "needs_target_layer",
    "normalize_maps",
    "resolve_methods",
    "resolve_options",
]
