"""``target_layer="auto"``: candidates from one probing forward, each verified, the first kept.

A layer is a candidate only when it is **verified** on the probe image: its output reads as a
spatial layout (:func:`~lightning_cam.engine.layouts.infer_layout`) with more than one position at
this input's size, the score (the model's largest output, the predicted class's logit) depends on
it (a path in the autograd graph: a classifier still at zero keeps its layers), it is no pooling layer nor a pooling layer's output, and it is not the head of a dense output
(a segmentation model's logits: as many channels as the output has classes). Candidates are then
ordered by one rule: a transformer (its repeated blocks output tokens or channels-last maps) first
tries the residual stream at its last block (:func:`_stream_layer`): the norm that reads the block's
input (ViT, DeiT, Swin: ``norm1``), else the block's own output (LeViT), else the layer that reads it
(Hugging Face Swinv2's blocks return tuples: its final ``layernorm``); a CNN its last candidate (``layer4`` on a ResNet, the last ReLU on VGG); then every other candidate
from the last. A detector's candidates are its feature extractor's layers that every feature level its
heads read depends on (SSD reads its first level before its deepest layers). No candidate:
``ValueError`` naming what was tried and why each was refused.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cam.engine.capture import ForwardHook, forward_hooks
from lightning_cam.engine.detection import detector_canvas, is_box_output
from lightning_cam.engine.layouts import Layout, ReshapeTransform, infer_layout, partitioned
from lightning_cam.engine.logits import OutputKey, select_output

__all__ = ["conv_layer_names", "find_auto_layer"]

_POOLING = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.AvgPool1d,
    nn.MaxPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.LPPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool3d,
    nn.MaxPool3d,
    nn.Flatten,
)
_PASS_THROUGH = (nn.Identity, nn.Dropout)  # never a pick, but their output is their input's: no pooling

# "auto" costs one probing forward of a single image; remember the answer per model and input shape.
_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], str]] = weakref.WeakKeyDictionary()


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of the model's convolution layers, the usual candidates for a target layer."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)]


@dataclass
class _Probe:
    """One module's output in the probing forward, in the order the modules finished. ``in_tuple``:
    the module returned a tuple whose first element this is (kept to find blocks, never chosen)."""

    name: str
    module: nn.Module
    output: Tensor
    input: Tensor | None  # its first tensor argument
    in_tuple: bool
    layout: Layout | None = None
    refusal: str = ""

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return None if self.input is None else tuple(self.input.shape)


def _probe(
    model: nn.Module, sample: Tensor | list[Tensor], output_key: OutputKey, levels: list[Tensor]
) -> tuple[list[_Probe], object, Tensor | None, tuple[int, ...]]:
    """Every named module's tensor output for one image, the model's output, the score (a detector's:
    the sum of its detections' scores), and the spatial size its layers saw (a detector's canvas).
    A detector's ``backbone`` outputs (the feature levels its heads read) are put in ``levels``."""
    named = [(name, module) for name, module in model.named_modules() if name]  # not the model itself
    probes: list[_Probe] = []
    backbone = _named(model, "backbone")

    def hook_for(index: int) -> ForwardHook:
        def record(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            if named[index][0] == backbone:
                values = output.values() if isinstance(output, dict) else [output]
                levels.extend(v for v in values if isinstance(v, Tensor))
            in_tuple = isinstance(output, tuple) and bool(output) and isinstance(output[0], Tensor)
            tensor = output[0] if in_tuple else output  # type: ignore[index]
            if isinstance(tensor, Tensor) and tensor.dim() >= 3 and tensor.shape[0] == 1:
                first = next((x for x in inputs if isinstance(x, Tensor)), None)
                probes.append(_Probe(named[index][0], module, tensor, first, in_tuple))

        return record

    listed = isinstance(sample, list)
    first = [sample[0].detach()] if listed else sample[:1].detach()
    for image in first if listed else [first]:
        if image.is_floating_point():  # the score depends on the input even when every weight is frozen
            image.requires_grad_(True)
    with (
        forward_hooks([module for _, module in named], hook_for),
        torch.enable_grad(),
        detector_canvas(model) as canvas,
    ):
        output = select_output(model(first), output_key)
        if is_box_output(output):
            score: Tensor | None = torch.stack([item["scores"].sum() for item in output]).sum()
        else:
            score = output.flatten().max() if isinstance(output, Tensor) and output.requires_grad else None
    if canvas is not None and canvas.padded is not None:
        size = canvas.padded
    else:
        size = tuple(first[0].shape[1:] if listed else first.shape[2:])
    return probes, output, score, size


def _positions(probe: _Probe) -> int:
    layout = probe.layout
    assert layout is not None
    grid = layout.grid if layout.kind != "callable" else tuple(layout.to_grid(probe.output).shape[2:])
    count = 1
    for size in grid:
        count *= size
    return count


def _refuse(
    probes: list[_Probe], score: Tensor | None, head_channels: int | None, size: tuple[int, ...] | None
) -> None:
    """Set each probe's ``refusal`` (empty: verified): the first check it fails, in plain words."""
    pooled: set[int] = set()  # outputs of pooling layers so far (a container may return one later)
    for probe in probes:
        if isinstance(probe.module, _POOLING):
            pooled.add(id(probe.output))
        if probe.in_tuple:
            probe.refusal = "it returns a tuple"
        elif probe.layout is None:
            probe.refusal = f"its output {list(probe.output.shape)} has no spatial layout"
        elif isinstance(probe.module, _POOLING) or id(probe.output) in pooled:
            probe.refusal = "it is a pooling layer or returns one's output"
        elif isinstance(probe.module, _PASS_THROUGH):
            probe.refusal = "it passes its input through (Identity, Dropout)"
        elif _positions(probe) < 2:
            probe.refusal = "it has a single spatial position at this input size"
        elif partitioned(probe.layout, size):
            grid, image = "x".join(map(str, probe.layout.grid)), "x".join(map(str, size or ()))
            probe.refusal = (
                f"its grid {grid} is not the image's {image} at one stride (a window-partitioned output)"
            )
        elif (
            head_channels is not None
            and probe.layout.kind == "grid"
            and probe.output.shape[1] == head_channels
        ):
            probe.refusal = "it is the head (as many channels as the output has classes)"
    open_probes = [p for p in probes if not p.refusal]
    if score is None or not open_probes:  # an integer input into a frozen model: nothing to differentiate
        return
    gradients = torch.autograd.grad(
        score, [p.output for p in open_probes], allow_unused=True, retain_graph=True
    )
    for probe, gradient in zip(open_probes, gradients, strict=True):
        if gradient is None:  # no path in the graph (a zero gradient still depends: a head at zero, say)
            probe.refusal = "the score does not depend on it"


def _blocks(probes: list[_Probe]) -> list[_Probe]:
    """A model's repeated blocks, innermost: among *units* (shape-keeping modules with children whose
    type occurs more than once: a block, its MLP, its attention), those that hold another unit (a
    transformer block holds its MLP; a ResNet's residual block holds no unit, so CNNs have none)."""
    kinds = Counter(type(p.module) for p in probes)
    units = [
        p
        for p in probes
        if kinds[type(p.module)] > 1
        and p.input_shape == tuple(p.output.shape)
        and any(True for _ in p.module.children())
    ]
    blocks = [u for u in units if any(other.name.startswith(u.name + ".") for other in units)]
    return [b for b in blocks if not any(other.name.startswith(b.name + ".") for other in blocks)]


def _preference(probes: list[_Probe]) -> list[_Probe]:
    """The verified probes, the rule's choice first, then the others from the last."""
    verified = [p for p in probes if not p.refusal]
    blocks = [
        b for b in _blocks(probes) if b.layout is not None and b.layout.kind in ("tokens", "channels_last")
    ]
    if not blocks:  # a CNN: channels-first maps, the last one first
        return [p for p in reversed(verified) if p.layout is not None and p.layout.kind == "grid"]
    chosen = _stream_layer(blocks, verified)
    preferred = [] if chosen is None else [chosen]
    return preferred + [p for p in reversed(verified) if p is not chosen]


def _stream_layer(blocks: list[_Probe], verified: list[_Probe]) -> _Probe | None:
    """A transformer's pick, from its last block with one: the first verified norm inside the block that
    reads the block's input (a pre-norm block's ``norm1``: the residual stream, normalised, before the
    last attention mixes the patches into a class token); else the block itself, when its output is
    verified (a post-norm or norm-free block, as LeViT's, returns the stream); else the first verified
    layer that reads the block's output (a block that returns a tuple, as Hugging Face Swinv2's: the
    final norm); else the first verified shape-keeping layer inside it."""
    for block in reversed(blocks):
        inside = [
            p
            for p in verified
            if p.name.startswith(block.name + ".") and tuple(p.output.shape) == block.input_shape
        ]
        reads_input = [
            p for p in inside if p.input is not None and p.input is block.input and _is_norm(p.module)
        ]
        readers = [p for p in verified if p.input is not None and p.input is block.output]
        found = reads_input + [p for p in verified if p is block] + readers + inside
        if found:
            return found[0]
    return None


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer (torch's, or a class named ``...Norm``: timm's, Hugging Face's, RMSNorm)."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return isinstance(module, norms) or type(module).__name__.endswith("Norm")


def _named(model: nn.Module, suffix: str) -> str | None:
    """The first module named ``suffix`` or ending in ``.suffix``."""
    return next((n for n, _ in model.named_modules() if n == suffix or n.endswith("." + suffix)), None)


def _in_backbone(model: nn.Module, probes: list[_Probe]) -> list[_Probe]:
    """A detector's candidates: the layers of its feature extractor (``backbone.body``, before a feature
    pyramid; else ``backbone``), never a head's own layer."""
    root = _named(model, "backbone.body") or _named(model, "backbone")
    return probes if root is None else [p for p in probes if p.name.startswith(root + ".")]


def _graph_nodes(tensor: Tensor) -> set[int]:
    """The ids of every autograd node ``tensor`` was computed through."""
    seen: set[int] = set()
    stack = [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            stack.extend(child for child, _ in node.next_functions)
    return seen


def _refuse_unread_levels(probes: list[_Probe], levels: list[Tensor]) -> None:
    """A detector's heads each read one feature level (SSD: six maps, the first before the deepest
    layers; a feature pyramid: levels that all read the deepest layer): a candidate that some level does
    not depend on would leave that level's detections without a map."""
    reached = [_graph_nodes(level) for level in levels if level.grad_fn is not None]
    for probe in probes:
        node = probe.output.grad_fn
        if not probe.refusal and reached and not all(id(node) in nodes for nodes in reached):
            probe.refusal = "not every feature level the heads read depends on it"


def _refused_message(model: nn.Module, sample: Tensor | list[Tensor], probes: list[_Probe]) -> str:
    tried = [p for p in probes if p.layout is not None] or probes
    reasons = "; ".join(f"{p.name} ({p.refusal})" for p in tried[-6:]) or "no module returned a tensor"
    convs = ", ".join(conv_layer_names(model)[-8:]) or "none"
    return (
        f"target_layer='auto' found no layer of {type(model).__name__} it could verify for inputs of shape "
        f"{list(sample[0].shape if isinstance(sample, list) else sample.shape[1:])}; it tried: {reasons}. Name the layer explicitly (target_layer='...'); "
        f"convolution layers: {convs}."
    )


def find_auto_layer(
    model: nn.Module,
    sample: Tensor | list[Tensor],
    reshape_transform: ReshapeTransform = "auto",
    output_key: OutputKey = None,
) -> str:
    """The target layer ``"auto"`` picks for ``model`` (see the module's docstring for the rule),
    from one probing forward of one image (cached per model, input shape and ``reshape_transform``;
    the caller holds the state guard). ``ValueError`` when no layer can be verified.
    """
    cache = _AUTO_CACHE.setdefault(model, {})
    key = (
        tuple(sample[0].shape) if isinstance(sample, list) else tuple(sample.shape[1:]),
        reshape_transform if isinstance(reshape_transform, str) else id(reshape_transform),
        output_key if output_key is None or isinstance(output_key, (int, str)) else id(output_key),
    )
    if key in cache:
        return cache[key]
    levels: list[Tensor] = []
    probes, output, score, size = _probe(model, sample, output_key, levels)
    if is_box_output(output):
        probes = _in_backbone(model, probes)
    for probe in probes:
        try:
            probe.layout = infer_layout(
                probe.output, size, model, probe.module, probe.name, reshape_transform
            )
        except ValueError:
            probe.layout = None
    if not isinstance(output, Tensor) and not is_box_output(output):
        raise ValueError(
            f"target_layer='auto' needs the model's prediction as a tensor, but {type(model).__name__} returned "
            f"{type(output).__name__}; pass output_key= (an index, a key, or a function output -> logits)."
        )
    dense = isinstance(output, Tensor) and output.dim() >= 3
    _refuse(probes, score, int(output.shape[1]) if dense else None, None if is_box_output(output) else size)
    if is_box_output(output):
        _refuse_unread_levels(probes, levels)
    ordered = _preference(probes)
    if not ordered:
        raise ValueError(_refused_message(model, sample, probes))
    cache[key] = ordered[0].name
    return ordered[0].name
