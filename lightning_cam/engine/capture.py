"""Hooks and the state guard.

Everything that touches a model's state while it is being explained lives here, and every
change is undone in a ``finally`` block: the ``training`` flag of each module, the global
random-number generators, grad/inference mode and autocast. Hooks are only ever registered
inside a context manager that removes them, also when the code inside raises.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ActivationCapture",
    "capture_activations",
    "forward_hooks",
    "model_device_dtype",
    "preserved_rng",
    "preserved_state",
]


def model_device_dtype(model: nn.Module, fallback: Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first floating-point parameter (``fallback``'s without one)."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return fallback.device, fallback.dtype


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch (CPU and every initialised CUDA device), numpy and python RNGs on exit."""
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and give each its own ``training`` flag back on exit."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, was_training in flags:
            module.training = was_training


@contextmanager
def preserved_state(model: nn.Module, device_type: str) -> Iterator[None]:
    """The state guard: run the body in eval mode, with grad enabled, outside inference mode and
    autocast, and leave the model and the global RNGs exactly as they were.

    Parameter gradients are never touched because the engine uses ``torch.autograd.grad``
    (never ``.backward()``); ``requires_grad`` flags are never changed.
    """
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        stack.enter_context(preserved_rng())
        stack.enter_context(eval_mode(model))
        yield


ForwardHook = Callable[[nn.Module, tuple[object, ...], object], object]


@contextmanager
def forward_hooks(modules: Sequence[nn.Module], hook_for: Callable[[int], ForwardHook]) -> Iterator[None]:
    """Register ``hook_for(index)`` as a forward hook on each module; remove them all on exit."""
    handles = []
    try:
        for index, module in enumerate(modules):
            handles.append(module.register_forward_hook(hook_for(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class ActivationCapture:
    """Activations of the target layers from one forward pass, ready to differentiate.

    The first target layer to run has its output detached and turned into a leaf that requires
    grad, so the backward pass stops there (the layers below need no gradient) and frozen
    backbones work. Every hooked layer hands the rest of the network a clone of its output, so an
    in-place op that follows (``ReLU(inplace=True)``) cannot overwrite the captured values.

    With ``record_from_first_layer``, the forward is meant to run under ``torch.no_grad()`` and
    the first hooked layer switches grad mode on for the rest of it: the layers before the
    target cost what an inference forward costs, and only the part the gradient needs is
    recorded. The enclosing ``torch.no_grad()`` block restores grad mode when it exits.
    """

    activations: list[Tensor | None] = field(default_factory=list)
    record_from_first_layer: bool = False
    detach_first_layer: bool = True

    def hook_for(self, index: int) -> ForwardHook:
        def hook(_module: nn.Module, _inputs: tuple[object, ...], output: object) -> object:
            if not isinstance(output, Tensor):
                return None
            is_first = all(captured is None for captured in self.activations)
            if is_first and self.record_from_first_layer:
                torch.set_grad_enabled(True)
            if (is_first and self.detach_first_layer) or not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.activations[index] = output
            return output.clone()

        return hook


@contextmanager
def capture_activations(
    layers: Sequence[nn.Module], *, differentiable: bool, full_graph: bool = False
) -> Iterator[ActivationCapture]:
    """Capture the outputs of ``layers`` during the forward pass run inside the block.

    By default the body runs under ``torch.no_grad()`` and, with ``differentiable``, everything
    from the first target layer on is recorded by autograd (see :class:`ActivationCapture`); grad
    mode is restored on exit, also when the body raises. With ``full_graph`` (input gradients are
    needed too) the whole forward is recorded and the activations stay attached to it.
    """
    capture = ActivationCapture(
        activations=[None] * len(layers),
        record_from_first_layer=differentiable and not full_graph,
        detach_first_layer=not full_graph,
    )
    with torch.set_grad_enabled(full_graph), forward_hooks(layers, capture.hook_for):
        yield capture
