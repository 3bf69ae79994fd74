"""CAM methods, one module per family, all registered in :data:`REGISTRY` by name."""

from lightning_cam.methods import gradient, activation  # noqa: F401, I001  (registers them, in this order)
from lightning_cam.methods.registry import REGISTRY, LayerInputs, Method, register

__all__ = ["REGISTRY", "LayerInputs", "Method", "register"]
