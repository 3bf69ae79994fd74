"""CAM methods, one module per family, all registered in :data:`REGISTRY` by name."""

from lightning_cam.engine.methods import gradient, activation, perturbation, guided, attention  # noqa: F401, I001  (registers them, in this order)
from lightning_cam.engine.methods.guided import GuidedSwitch, guided_relus
from lightning_cam.engine.methods.registry import (
    REGISTRY,
    AttentionInputs,
    InputInputs,
    LayerInputs,
    Method,
    register,
)

__all__ = [
    "REGISTRY",
    "AttentionInputs",
    "GuidedSwitch",
    "InputInputs",
    "LayerInputs",
    "Method",
    "guided_relus",
    "register",
]
