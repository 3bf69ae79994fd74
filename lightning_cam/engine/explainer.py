"""``explain()``: one guarded pass over a model that feeds every requested CAM method."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from difflib import get_close_matches
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cam.engine.attention import AttentionCapture, attention_inputs, capture_attention
from lightning_cam.engine.capture import capture_activations, model_device_dtype, preserved_state
from lightning_cam.engine.detection import Canvas, detached_detections, detector_canvas, detector_transforms
from lightning_cam.engine.layers import TargetLayer, resolve_target_layers
from lightning_cam.engine.layouts import Layout, ReshapeTransform, check_unpartitioned, infer_layout
from lightning_cam.engine.logits import OutputKey, select_output
from lightning_cam.engine.methods import (
    REGISTRY,
    AttentionInputs,
    GuidedSwitch,
    InputInputs,
    LayerInputs,
    Method,
    guided_relus,
)
from lightning_cam.engine.methods.registry import at_least_float32, needs_float_images
from lightning_cam.engine.spatial import per_item, resize
from lightning_cam.engine.targets import Scorer, Targets, make_scorer

__all__ = [
    "METHODS",
    "NON_FINITE",
    "Explanation",
    "OutputKey",
    "Targets",
    "explain",
    "explain_batch",
    "finite_rows",
    "needs_target_layer",
    "normalize_maps",
    "resolve_options",
]

NON_FINITE = "non-finite activations or gradients"  # the words of the warning naming such images

METHODS: tuple[str, ...] = tuple(REGISTRY)
"""Every method name :func:`explain` accepts."""


def resolve_methods(methods: str | Sequence[str]) -> list[Method]:
    """Look up method names; an unknown name raises with the closest valid names first."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError(f"methods is empty; choose one or more of {', '.join(REGISTRY)}.")
    resolved = []
    for name in names:
        if name not in REGISTRY:
            close = get_close_matches(str(name), list(REGISTRY), n=3, cutoff=0.4)
            others = [valid for valid in REGISTRY if valid not in close]
            raise ValueError(
                f"unknown CAM method {name!r}. Valid methods (closest first): {', '.join(close + others)}."
            )
        if REGISTRY[name] not in resolved:
            resolved.append(REGISTRY[name])
    return resolved


def _first_convolution(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def check_images(images: object, model: nn.Module | None = None, methods: Sequence[Method] = ()) -> Tensor:
    """Images must be a tensor ``[B, C, H, W]``, or ``[B, C, D, H, W]`` for volumes and clips (``D``
    depth or time), with at least one image; a 4-D batch for a model whose first convolution is 3-D is
    a volume without its channel axis, and says so. Floating point, or ``uint8`` for a model that takes
    it when none of ``methods`` needs float images (:func:`needs_float_images`)."""
    if not isinstance(images, Tensor):
        hint = (
            " (lists of images of any sizes are explained for torchvision detectors, which batch them "
            "themselves; stack equal-size images with torch.stack)"
            if isinstance(images, (list, tuple))
            else ""
        )
        raise ValueError(f"images must be a float tensor [B, C, H, W]; got {type(images).__name__}{hint}.")
    if images.dim() not in (4, 5):
        hint = " Add a batch dimension with images.unsqueeze(0)." if images.dim() == 3 else ""
        raise ValueError(
            f"images must be a float tensor [B, C, H, W] (or [B, C, D, H, W] for volumes); got shape "
            f"{list(images.shape)}.{hint}"
        )
    if images.dim() == 4 and model is not None and isinstance(_first_convolution(model), nn.Conv3d):
        raise ValueError(
            f"the model's first convolution is 3-D, so it takes volumes [B, C, D, H, W]; got {list(images.shape)}, "
            f"a volume batch without its channel axis? Add it with images.unsqueeze(1) (one channel)."
        )
    floating = [m.name for m in methods if needs_float_images(m)]
    if images.dtype == torch.uint8 and floating:
        raise ValueError(
            f"{', '.join(floating)} need(s) floating-point images (they differentiate with respect to the "
            f"images or change them); got uint8. The layer methods (gradcam, layercam, ...) explain uint8 "
            f"images as the model takes them; for these, pass images.float() scaled as the model expects."
        )
    if not images.is_floating_point() and images.dtype != torch.uint8:
        raise ValueError(
            f"images must be a floating-point or uint8 tensor [B, C, H, W]; got dtype {images.dtype}. "
            f"Convert with images.float() (and scale as the model expects)."
        )
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; pass at least one image.")
    return images


def check_image_list(images: Sequence[object], methods: Sequence[Method]) -> list[Tensor]:
    """A list of images ``[C, H_i, W_i]`` (sizes may differ), for a detector: floating point, the same
    channels, at least one; the methods that need no further forwards and no attention explain lists."""
    refused = [m.name for m in methods if m.kind == "attention" or m.reruns_model]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} cannot explain a list of images; use the layer methods (gradcam, "
            f"gradcam++, xgradcam, layercam, hirescam, eigencam), saliency or guided backprop (and Guided "
            f"Grad-CAM), or a tensor [B, C, H, W] of equal-size images."
        )
    if not images:
        raise ValueError("images is an empty list; pass at least one image [C, H, W].")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
            shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"images[{index}] must be a float tensor [C, H, W]; got {shape}.")
        if image.shape[0] != images[0].shape[0]:  # type: ignore[union-attr]
            raise ValueError(
                f"images[{index}] has {image.shape[0]} channels, images[0] {images[0].shape[0]}."  # type: ignore[union-attr]
            )
    return list(images)  # type: ignore[arg-type]


def _checked_inputs(
    model: nn.Module, images: object, methods: Sequence[Method]
) -> tuple[Tensor | list[Tensor], bool]:
    """The checked images, and whether they are a list (a detector's images of any sizes)."""
    detector = bool(detector_transforms(model))
    if detector:
        _refuse_reruns_on_detectors(methods)
    if detector and isinstance(images, (list, tuple)):
        return check_image_list(images, methods), True
    return check_images(images, model, methods), False


def _refuse_reruns_on_detectors(methods: Sequence[Method]) -> None:
    """Score-CAM and Ablation-CAM would run the whole detector once per channel, and their masks are
    laid on the input, not on the detector's padded canvas: refused, with what works instead."""
    refused = [m.name for m in methods if m.reruns_model]
    if refused:
        raise ValueError(
            f"{', '.join(refused)} do not run on detectors (one detector forward per channel, masks off the "
            f"detector's padded canvas); use the gradient family (gradcam, gradcam++, xgradcam, layercam, "
            f"hirescam) or eigencam."
        )


def find_classifier_weight(model: nn.Module, channels: int) -> Tensor:
    """The weight ``[num_classes, K]`` of the model's last ``nn.Linear`` taking ``K`` features."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    matching = [m for _, m in linears if m.in_features == channels]
    if not matching:
        found = ", ".join(f"{name} ({m.in_features}->{m.out_features})" for name, m in linears) or "none"
        raise ValueError(
            f"'cam' needs a linear classifier after global average pooling that takes the target "
            f"layer's {channels} channels; the model's linear layers are: {found}. Use 'gradcam' "
            f"(equal to CAM on such models) or pick a target layer that feeds the classifier."
        )
    return matching[-1].weight.detach().float()


def finite_rows(maps: Tensor) -> Tensor:
    """``[B]`` bool: which images' maps hold only finite values."""
    return torch.isfinite(maps.reshape(maps.shape[0], -1)).all(dim=1)


def normalize_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """ReLU, (bi/tri)linear upsampling to ``size`` (``align_corners=False``), min-max to ``[0, 1]`` per map.

    A flat map becomes all zeros (also one whose spread is only rounding noise, below ``1e-5`` of
    its largest value, as upsampling a constant gives); a map with a non-finite value becomes all
    zeros too (the caller warns), never NaN. Maps are ``[B, h, w]`` or, for volumes, ``[B, d, h, w]``.
    """
    return _min_max(resize(_cleaned(maps), size))


def _cleaned(maps: Tensor) -> Tensor:
    """ReLU; a map with a non-finite value becomes all zeros."""
    return torch.where(per_item(finite_rows(maps), maps), maps, torch.zeros_like(maps)).clamp(min=0)


def _min_max(maps: Tensor) -> Tensor:
    """Each map min-max scaled to ``[0, 1]``; a flat one (spread below ``1e-5`` of its peak) all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    span = high - low
    spread = span > 1e-5 * high
    scaled = torch.where(spread, (flat - low) / torch.where(spread, span, 1.0), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def with_requirements(requested: Sequence[Method]) -> list[Method]:
    """The requested methods and the ones they combine (``requires``), each once."""
    needed: list[Method] = []
    for method in requested:
        for name in (*method.requires, method.name):
            if REGISTRY[name] not in needed:
                needed.append(REGISTRY[name])
    return needed


def needs_target_layer(methods: Sequence[Method]) -> bool:
    """Whether any of ``methods`` (or a method they combine) reads a target layer; the attention
    methods and the input-gradient ones do not."""
    return any(method.kind == "layer" for method in with_requirements(methods))


def resolve_options(
    methods: Sequence[Method],
    options: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each method's keyword options: the shared ``options`` it accepts, then its own ``method_options``.

    An option that no requested method accepts raises ``ValueError`` listing the valid ones.
    """
    options, method_options = dict(options or {}), dict(method_options or {})
    accepted = {name for method in methods for name in method.options}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(f"{m.name}: {', '.join(m.options)}" for m in methods if m.options) or "none"
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for methods {[m.name for m in methods]}; valid: {valid}."
        )
    resolved = {}
    for method in methods:
        own = dict(method_options.pop(method.name, {}))
        bad = sorted(set(own) - set(method.options))
        if bad:
            raise ValueError(
                f"{method.name} has no option(s) {', '.join(bad)}; its options are: "
                f"{', '.join(method.options) or 'none'}."
            )
        resolved[method.name] = {k: v for k, v in options.items() if k in method.options} | own
    if method_options:
        raise ValueError(
            f"method_options names method(s) {sorted(method_options)} that are not requested "
            f"({[m.name for m in methods]})."
        )
    return resolved


@dataclass(frozen=True)
class Explanation:
    """The maps of one pass, with the model's output (``logits``: detached, float32) and the target
    class of each image (``targets``; ``-1`` for a callable target) they were computed for, the
    :class:`~lightning_cam.engine.targets.Scorer` that turns an output into the explained scores, and
    the layers explained (``target_layers``)."""

    maps: dict[str, Tensor | list[Tensor]]
    """Per method ``[B, H, W]`` (a list of ``[H_i, W_i]`` maps for a list of images)."""
    logits: Tensor
    targets: Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of the shared pass (``"pass"``: forward and gradients) and of each method's own
    work (its function, extra forwards and normalisation; each ends with a device sync)."""
    scorer: Scorer | None = None
    detections: list[dict[str, Tensor]] | None = None
    """A detector's output of the pass, detached: per image ``{"boxes", "labels", "scores"}``."""
    target_layers: list[str] = field(default_factory=list)
    """The dotted names of the layers the layer methods explained (what ``target_layer="auto"`` chose);
    empty when only input or attention methods ran."""


def explain(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    methods: str | Sequence[str] = "gradcam",
    target_layer: TargetLayer = "auto",
    targets: Targets = None,
    *,
    output_key: OutputKey = None,
    reshape_transform: ReshapeTransform = "auto",
    **options: Any,
) -> dict[str, Tensor]:
    """Class-activation maps of ``images`` for every requested method, from one guarded pass.

    All requested methods share **one** forward pass. The gradient family (and saliency) costs at
    most **one** ``torch.autograd.grad`` call, taken with respect to the target layers only (so
    the layers below them run without autograd recording) unless an input-level method needs
    the full graph; guided backprop adds one more over the same graph. Score-CAM and Ablation-CAM
    add their own batched forwards. The model is left exactly as it was: each module's
    ``training`` flag, parameter ``.grad`` tensors, ``requires_grad`` flags, BatchNorm statistics
    and the global RNG states (see ``lightning_cam.engine.capture``). It works inside
    ``torch.inference_mode()``, on frozen models, with in-place ReLUs and ``channels_last``
    inputs; maps are computed in float32 outside autocast.

    Args:
        model: any ``nn.Module``: a classifier returning logits ``[B, num_classes]``, a one-logit
            binary classifier (``[B]`` or ``[B, 1]``), a torchvision detector (with
            :func:`lightning_cam.targets.boxes`), or any model with a callable target.
        images: float tensor ``[B, C, H, W]``; for a detector also a list of ``[C, H_i, W_i]``
            images of any sizes (a list of maps comes back, each at its image's size; the layer
            methods that need no further forwards explain lists). On a detector the maps are
            mapped back through its transform's resize and padding to each original image.
        methods: a name or a sequence of names from :data:`METHODS`.
        target_layer: ``"auto"`` (CNNs: the last layer with a spatial output; transformers: the
            residual stream at the last block: the norm reading its input, else its output, else the
            layer reading its output; detectors:
            the deepest feature map of the backbone's feature extractor), a dotted
            module name such as ``"layer4"``, the module itself, or a list of these (the maps of the
            layers are normalised, averaged, and normalised again).
        targets: ``None`` for the predicted class, an ``int`` for one class for all images, one
            class index per image (sequence or tensor ``[B]``), a callable ``output -> [B]`` scores,
            or :func:`lightning_cam.engine.targets.segmentation`. See :mod:`lightning_cam.engine.targets`.
        output_key: where the prediction is in the model's output when it is not a tensor: an
            index, a dict key or a function of the output.
        reshape_transform: how the target layer's output becomes ``[B, K, h, w]``: ``"auto"``
            (convolutional, channels-last ``[B, h, w, K]`` and token ``[B, N, K]`` outputs, from the
            shapes and the model's metadata; an ambiguous shape raises) or a callable
            ``tensor -> [B, K, h, w]`` (pytorch-grad-cam's ``reshape_transform``).
        **options: method options, given to every requested method that accepts them:
            ``chunk_size`` (scorecam, ablationcam: rows per batched forward), ``topk`` (scorecam:
            only the k channels of largest variance), ``autocast_dtype`` (scorecam, ablationcam:
            run their forwards under autocast with this dtype).

    Returns:
        ``{method name: float32 tensor [B, H, W] in [0, 1]}`` on the images' device (a list of
        ``[H_i, W_i]`` maps for a list of images).

    Example::

        >>> import torch, torchvision
        >>> import lightning_cam as lc
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> maps = lc.explain(model, torch.rand(2, 3, 64, 64), methods=("gradcam", "layercam"))
        >>> maps["gradcam"].shape
        torch.Size([2, 64, 64])
    """
    return explain_batch(
        model,
        images,
        methods,
        target_layer,
        targets,
        output_key=output_key,
        reshape_transform=reshape_transform,
        options=options,
    ).maps


def explain_batch(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    methods: str | Sequence[str] = "gradcam",
    target_layer: TargetLayer = "auto",
    targets: Targets = None,
    *,
    output_key: OutputKey = None,
    reshape_transform: ReshapeTransform = "auto",
    options: Mapping[str, Any] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Explanation:
    """:func:`explain`, also returning the model's output, the target classes and the scorer.

    ``options`` are shared by every method that accepts them; ``method_options`` maps a method
    name to its own options (``{"scorecam": {"topk": 64}}``).
    """
    requested = resolve_methods(methods)
    needed = with_requirements(requested)
    method_kwargs = resolve_options(needed, options, method_options)
    images, listed = _checked_inputs(model, images, needed)
    first = images[0] if listed else images
    device, dtype = model_device_dtype(model, first)
    dtype = dtype if first.is_floating_point() else first.dtype  # uint8 goes in as the model takes it
    layer_methods = [m for m in needed if m.kind == "layer"]
    start = time.perf_counter()
    with preserved_state(model, device.type):
        inputs = _model_inputs(images, device, dtype)
        layers = _layers(model, target_layer, inputs, reshape_transform, output_key, bool(layer_methods))
        shared = _shared_pass(model, inputs, layers, needed, targets, output_key, reshape_transform)
        seconds = {"pass": time.perf_counter() - start}
        context = LayerInputs(
            activations=torch.empty(0),
            gradients=None,
            targets=shared.scorer.classes,
            model=model,
            images=None if listed else inputs.detach(),
            logits=at_least_float32(shared.prediction.detach()),
            output_key=output_key,
            scorer=shared.scorer,
            scores=at_least_float32(shared.scores.detach()),
        )
        placement = _Placement(tuple(first.shape[-2:] if listed else first.shape[2:]), shared.canvas, listed)
        maps = _layer_maps(model, layer_methods, layers, shared, context, method_kwargs, placement, seconds)
        maps |= _input_maps(needed, shared, maps, inputs, seconds)
    return Explanation(
        maps={m.name: _on_device(maps[m.name], first.device) for m in requested},
        logits=shared.prediction.detach().float().to(first.device),
        targets=shared.scorer.classes.to(first.device),
        seconds=seconds,
        scorer=shared.scorer,
        detections=detached_detections(shared.output),
        target_layers=[name for name, _ in layers],
    )


def _layers(
    model: nn.Module,
    target_layer: TargetLayer,
    inputs: Tensor | list[Tensor],
    reshape_transform: ReshapeTransform,
    output_key: OutputKey,
    wanted: bool,
) -> list[tuple[str, nn.Module]]:
    """The target layers as ``(name, module)`` pairs when a layer method is asked for, else none."""
    return resolve_target_layers(model, target_layer, inputs, reshape_transform, output_key) if wanted else []


def _model_inputs(
    images: Tensor | list[Tensor], device: torch.device, dtype: torch.dtype
) -> Tensor | list[Tensor]:
    """The images on the model's device and dtype, as normal tensors (even from inference mode)."""
    if isinstance(images, Tensor):
        return images.to(device=device, dtype=dtype).clone()
    return [image.to(device=device, dtype=dtype).clone() for image in images]


def _on_device(maps: Tensor | list[Tensor], device: torch.device) -> Tensor | list[Tensor]:
    if isinstance(maps, Tensor):
        return maps.to(device=device, dtype=torch.float32)
    return [item.to(device=device, dtype=torch.float32) for item in maps]


@dataclass(frozen=True)
class _Placement:
    """How raw maps become image maps: resized to the images' ``size``, or, on a detector, placed back
    through its transform's ``canvas`` (one map per image at its own size; a list when ``listed``)."""

    size: tuple[int, ...]
    canvas: Canvas | None
    listed: bool

    def normalized(self, raw: Tensor) -> Tensor | list[Tensor]:
        """:func:`normalize_maps` of ``raw`` ``[B, *grid]`` on the images."""
        if self.canvas is None:
            return normalize_maps(raw, self.size)
        maps = [_min_max(placed[None])[0] for placed in self.canvas.place(_cleaned(raw))]
        return maps if self.listed else torch.stack(maps)

    def averaged(self, layer_maps: Sequence[Tensor | list[Tensor]]) -> Tensor | list[Tensor]:
        """Several target layers' normalised maps, averaged and normalised again."""
        if len(layer_maps) == 1:
            return layer_maps[0]
        if not self.listed:
            return normalize_maps(torch.stack(layer_maps).mean(0), self.size)  # type: ignore[arg-type]
        return [
            _min_max(torch.stack(per_image).mean(0)[None])[0] for per_image in zip(*layer_maps, strict=True)
        ]


@dataclass(frozen=True)
class _SharedPass:
    """What the one forward pass and its gradient calls give every method: the output, the scores it
    explains, per target layer its layout, activations and gradients as ``[B, K, h, w]``, and the
    attention of every self-attention block when an attention method is asked for."""

    output: Any
    scorer: Scorer
    scores: Tensor
    layouts: list[Layout]
    activations: list[Tensor]
    layer_gradients: list[Tensor | None]
    input_gradient: Tensor | list[Tensor] | None
    guided_gradient: Tensor | list[Tensor] | None
    attention: AttentionInputs | None
    canvas: Canvas | None = None
    """A detector's padded input canvas (its feature maps' extent), or ``None``."""

    @property
    def prediction(self) -> Tensor:
        """The output where it is a tensor; else (a callable target on a list or dict) the scores ``[B, 1]``."""
        return self.output if isinstance(self.output, Tensor) else self.scores[:, None]


@dataclass(frozen=True)
class _Needs:
    """What the requested methods ask of the shared pass."""

    layer_gradients: bool
    input_gradients: bool
    guided: bool
    attention: bool
    relevance: bool

    @classmethod
    def of(cls, methods: Sequence[Method]) -> _Needs:
        return cls(
            layer_gradients=any(m.needs_gradients for m in methods if m.kind == "layer"),
            input_gradients=any(m.needs_input_gradients for m in methods),
            guided=any(m.needs_guided_gradients for m in methods),
            attention=any(m.kind == "attention" for m in methods),
            relevance=any(m.needs_attention_gradients for m in methods),
        )


def _shared_pass(
    model: nn.Module,
    inputs: Tensor | list[Tensor],
    layers: Sequence[tuple[str, nn.Module]],
    needed: Sequence[Method],
    targets: Targets,
    output_key: OutputKey,
    reshape_transform: ReshapeTransform,
) -> _SharedPass:
    """One forward pass capturing the target layers (and every block's attention), then at most one
    ``autograd.grad`` call for the layer, input and attention gradients (and one more with guided ReLUs
    when guided backprop is asked for)."""
    needs = _Needs.of(needed)
    full_graph = needs.input_gradients or needs.guided or needs.relevance
    if full_graph:
        for source in _as_sources(inputs):
            source.requires_grad_(True)
    modules = [module for _, module in layers]
    with (
        capture_activations(modules, differentiable=needs.layer_gradients, full_graph=full_graph) as capture,
        guided_relus(enabled=needs.guided) as switch,
        capture_attention(model, needs.relevance) if needs.attention else nullcontext() as attention,
        detector_canvas(model) as canvas,
    ):
        output = select_output(model(inputs), output_key)
    scorer, scores = _scored(targets, output, len(inputs))
    raw = _checked_activations(layers, capture.activations)
    canvas = canvas if canvas is not None and canvas.padded is not None else None
    size = canvas.padded if canvas is not None else tuple(inputs.shape[2:])
    layouts = [
        infer_layout(a, size, model, m, n, reshape_transform) for (n, m), a in zip(layers, raw, strict=True)
    ]
    for (name, _), activation, layout in zip(layers, raw, layouts, strict=True):
        check_unpartitioned(layout, size, name, tuple(activation.shape))
    layer_gradients, input_gradient = _pass_gradients(scores, needs, layers, raw, inputs, attention)
    return _SharedPass(
        output=output,
        scorer=scorer,
        scores=scores,
        layouts=layouts,
        activations=_on_grids(layouts, [a.detach() for a in raw]),
        layer_gradients=_on_grids(layouts, layer_gradients),
        input_gradient=input_gradient,
        guided_gradient=_guided_gradient(scores, inputs, switch) if needs.guided else None,
        attention=attention_inputs(attention, model, size, inputs.shape[0]) if needs.attention else None,
        canvas=canvas,
    )


def _pass_gradients(
    scores: Tensor,
    needs: _Needs,
    layers: Sequence[tuple[str, nn.Module]],
    raw: Sequence[Tensor],
    inputs: Tensor | list[Tensor],
    attention: AttentionCapture | None,
) -> tuple[list[Tensor | None], Tensor | list[Tensor] | None]:
    """The target layers' gradients (``None`` each when no method needs them) and the input's, by one
    ``autograd.grad`` call that also reaches the first attention map when relevance is asked for."""
    layer_sources = raw if needs.layer_gradients else []
    input_sources = _as_sources(inputs) if needs.input_gradients else []
    attention_sources = [attention.first] if needs.relevance and attention.first is not None else []
    gradients = _gradients_of(
        scores.sum(),
        [*layer_sources, *input_sources, *attention_sources],
        [name for name, _ in layers],
        retain_graph=needs.guided,
    )
    layer_gradients = gradients[: len(raw)] if needs.layer_gradients else [None] * len(raw)
    if not needs.input_gradients:
        return layer_gradients, None
    per_input = gradients[len(layer_sources) : len(layer_sources) + len(input_sources)]
    return layer_gradients, per_input if isinstance(inputs, list) else per_input[0]


def _on_grids(layouts: Sequence[Layout], tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
    """Each target layer's tensor (activations or gradients) as ``[B, K, *grid]`` (``None`` stays)."""
    return [None if t is None else layout.to_grid(t) for layout, t in zip(layouts, tensors, strict=True)]


def _guided_gradient(
    scores: Tensor, inputs: Tensor | list[Tensor], switch: GuidedSwitch
) -> Tensor | list[Tensor]:
    """The input gradient through the same graph once more, every ReLU passing only positive gradients
    (a list of images: one per image)."""
    switch.guided = True
    gradients = _gradients_of(scores.sum(), _as_sources(inputs), [], retain_graph=False)
    _warn_other_activations(switch.other_activations)
    return gradients if isinstance(inputs, list) else gradients[0]


def _as_sources(inputs: Tensor | list[Tensor]) -> list[Tensor]:
    """The tensors to differentiate with respect to: the batch, or each image of a list."""
    return list(inputs) if isinstance(inputs, list) else [inputs]


def _scored(targets: Targets, output: Any, batch: int) -> tuple[Scorer, Tensor]:
    """The scorer of ``targets`` and the explained score of each image, checked to be one per image."""
    scorer = make_scorer(targets, output)
    scores = scorer.score(output)
    if scores.shape != (batch,):
        raise ValueError(
            f"the model's output gives {list(scores.shape)} scores for {batch} images; expected one per "
            f"image (logits [B, num_classes], one binary logit [B], or a callable target returning [B])."
        )
    return scorer, scores


def _warn_other_activations(names: set[str]) -> None:
    if names:
        warnings.warn(
            f"guided backprop is defined for ReLU networks; this model also uses "
            f"{', '.join(sorted(names))}, whose gradients pass unchanged.",
            RuntimeWarning,
            stacklevel=5,  # _guided_gradient, _shared_pass, explain_batch: the caller's line
        )


def _input_maps(
    needed: Sequence[Method],
    shared: _SharedPass,
    layer_maps: dict[str, Tensor | list[Tensor]],
    inputs: Tensor | list[Tensor],
    seconds: dict[str, float],
) -> dict[str, Tensor | list[Tensor]]:
    """The maps of the input-level methods (saliency, guided backprop), the attention methods and the
    ones combining maps; on a list of images one image at a time, each map at its image's size."""
    if isinstance(inputs, Tensor):
        gradients = InputInputs(shared.input_gradient, shared.guided_gradient)
        return _batch_input_maps(
            needed, gradients, shared.attention, layer_maps, inputs, shared.scores, seconds
        )
    per_image = [
        _batch_input_maps(
            needed,
            InputInputs(_item(shared.input_gradient, i), _item(shared.guided_gradient, i)),
            None,
            {name: value[i][None] for name, value in layer_maps.items()},
            image[None],
            shared.scores[i : i + 1],
            seconds,
        )
        for i, image in enumerate(inputs)
    ]
    return {name: [maps[name][0] for maps in per_image] for name in per_image[0]}


def _item(gradients: Tensor | list[Tensor] | None, index: int) -> Tensor | None:
    """Image ``index``'s gradient ``[1, C, H, W]`` from a list of them (``None`` stays)."""
    return None if gradients is None else gradients[index][None]


def _batch_input_maps(
    needed: Sequence[Method],
    gradients: InputInputs,
    attention: AttentionInputs | None,
    layer_maps: dict[str, Tensor | list[Tensor]],
    images: Tensor,
    scores: Tensor,
    seconds: dict[str, float],
) -> dict[str, Tensor]:
    """The non-layer methods' maps for a batch of equal-size ``images`` (their time added to ``seconds``)."""
    gradients = InputInputs(
        None if gradients.gradients is None else at_least_float32(gradients.gradients),
        None if gradients.guided_gradients is None else at_least_float32(gradients.guided_gradients),
    )
    bad_images = ~finite_rows(images.detach()) | ~finite_rows(scores.detach()[:, None])
    maps = dict(layer_maps)
    for method in needed:
        if method.kind == "layer":
            continue
        method_start = time.perf_counter()
        inputs_of_kind = {"input": gradients, "attention": attention, "combined": maps}
        raw = method.compute(inputs_of_kind[method.kind])
        maps[method.name] = _normalized(
            method, raw, partial(normalize_maps, size=images.shape[2:]), bad_images
        )
        seconds[method.name] = seconds.get(method.name, 0.0) + time.perf_counter() - method_start
    return {name: value for name, value in maps.items() if name not in layer_maps}


def _checked_activations(
    layers: Sequence[tuple[str, nn.Module]], captured: Sequence[Tensor | None]
) -> list[Tensor]:
    activations = []
    for (name, _), activation in zip(layers, captured, strict=True):
        if activation is None:
            raise ValueError(
                f"target layer {name!r} did not run during the forward pass, or did not return a tensor; "
                f"pick a layer that the model calls and that outputs [B, K, h, w], [B, h, w, K] or [B, N, K]."
            )
        activations.append(activation)
    return activations


def _gradients_of(
    score: Tensor, sources: list[Tensor], layer_names: list[str], retain_graph: bool
) -> list[Tensor]:
    if not sources:
        return []
    if not score.requires_grad:
        raise ValueError(
            "the model's logits do not depend on the target layer (or the model turns gradients off "
            "inside its forward); pick a layer that feeds the output."
        )
    gradients = torch.autograd.grad(score, sources, allow_unused=True, retain_graph=retain_graph)
    unused = [name for name, grad in zip(layer_names, gradients, strict=False) if grad is None]
    if unused or any(grad is None for grad in gradients):
        raise ValueError(
            f"the logits do not depend on target layer(s) {unused}; pick layers that feed the output."
        )
    return [grad for grad in gradients if grad is not None]


def _normalized(
    method: Method,
    raw: Tensor,
    normalize: Callable[[Tensor], Tensor | list[Tensor]],
    bad_images: Tensor | None = None,
) -> Tensor | list[Tensor]:
    """``normalize(raw)`` (:func:`normalize_maps` or a placement's), with a warning naming the images
    whose map is not finite."""
    invalid = ~finite_rows(raw) if bad_images is None else bad_images | ~finite_rows(raw)
    if bool(invalid.any()):
        warnings.warn(
            f"{method.name}: {NON_FINITE} for image(s) "
            f"{invalid.nonzero().flatten().tolist()}; their maps are all zeros.",
            RuntimeWarning,
            stacklevel=4,
        )
        raw = torch.where(per_item(invalid, raw), torch.full_like(raw, float("nan")), raw)
    return normalize(raw)


def _layer_maps(
    model: nn.Module,
    methods: Sequence[Method],
    layers: Sequence[tuple[str, nn.Module]],
    shared: _SharedPass,
    context: LayerInputs,
    method_kwargs: Mapping[str, Mapping[str, Any]],
    placement: _Placement,
    seconds: dict[str, float],
) -> dict[str, Tensor | list[Tensor]]:
    per_method: dict[str, list[Tensor | list[Tensor]]] = {method.name: [] for method in methods}
    for index, (name, layer) in enumerate(layers):
        activation = at_least_float32(shared.activations[index])
        gradient = shared.layer_gradients[index]
        inputs = replace(
            context,
            activations=activation,
            gradients=None if gradient is None else at_least_float32(gradient),
            classifier_weight=(
                find_classifier_weight(model, activation.shape[1])
                if any(method.needs_classifier for method in methods)
                else None
            ),
            layer=layer,
            layer_name=name,
            layout=shared.layouts[index],
        )
        bad_images = ~finite_rows(activation)
        for method in methods:
            method_start = time.perf_counter()
            raw = method.compute(inputs, **method_kwargs[method.name])
            per_method[method.name].append(_normalized(method, raw, placement.normalized, bad_images))
            seconds[method.name] = seconds.get(method.name, 0.0) + time.perf_counter() - method_start
    return {name: placement.averaged(layer_maps) for name, layer_maps in per_method.items()}
