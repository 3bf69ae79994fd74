"""What a map explains: a score per image taken from the model's output.

- an ``int``, one index per image, or ``None`` (the predicted class) on logits ``[B, C]``: the class's
  **logit** (its softmax probability for the perturbation methods and metrics);
- on a one-logit binary classifier (output ``[B]`` or ``[B, 1]``): class 1 explains ``+logit``,
  class 0 explains ``-logit``, predicted is ``logit > 0`` (the probability is ``sigmoid(+-logit)``);
- :func:`segmentation`: the sum of a class's logits over a region of a ``[B, C, H, W]`` output;
- :func:`~lightning_cam.engine.detection.boxes`: per image, reference boxes matched in a detector's output;
- any callable ``output -> [B]`` for any other head (its value is also its "probability").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_cam.engine.detection import is_box_output

__all__ = [
    "MultiLabel",
    "Scorer",
    "Segmentation",
    "Targets",
    "correctness",
    "make_scorer",
    "multilabel",
    "num_classes",
    "prediction",
    "segmentation",
]

Targets = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None  # or MultiLabel


@dataclass(frozen=True)
class MultiLabel:
    """Independent (sigmoid) classes: the class's logit is explained, its sigmoid is its probability."""

    classes: Tensor


def multilabel(classes: Tensor | Sequence[int]) -> MultiLabel:
    """A target for multi-label models: one class per image, scored by its logit, whose probability
    is its sigmoid (not a softmax over the classes)."""
    return MultiLabel(torch.as_tensor(classes).long())


@dataclass(frozen=True)
class Segmentation:
    """The summed logits of ``class_index`` (one for all images, or one per image ``[B]``) over a region
    of a segmentation output ``[B, C, H, W]``: ``mask`` ``[H, W]`` or ``[B, H, W]``, or ``None`` for the
    pixels predicted as that class (as pytorch-grad-cam's ``SemanticSegmentationTarget``)."""

    class_index: int | Tensor
    mask: Tensor | None = None

    def _class_maps(self, output: Tensor) -> Tensor:
        if isinstance(self.class_index, int):
            return output[:, self.class_index]
        index = self.class_index.to(output.device).view(-1, 1, 1, 1).expand(-1, 1, *output.shape[-2:])
        return output.gather(1, index).squeeze(1)

    def region(self, output: Tensor) -> Tensor:
        if output.dim() != 4:
            raise ValueError(
                f"segmentation targets need a [B, C, H, W] output; the model returned {list(output.shape)}."
            )
        if self.mask is None:
            index = (
                self.class_index
                if isinstance(self.class_index, int)
                else self.class_index.to(output.device)[:, None, None]
            )
            return (output.argmax(dim=1) == index).to(output.dtype)
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        return mask.expand(output.shape[0], *output.shape[-2:])

    def for_rows(self, rows: Tensor) -> Segmentation:
        """The same target for rows of other images (``rows``: each row's image)."""
        index = (
            self.class_index if isinstance(self.class_index, int) else self.class_index.to(rows.device)[rows]
        )
        mask = self.mask if self.mask is None or self.mask.dim() == 2 else self.mask.to(rows.device)[rows]
        return Segmentation(index, mask)

    def __call__(self, output: Tensor) -> Tensor:
        return (self._class_maps(output) * self.region(output)).flatten(1).sum(dim=1)

    def probability(self, output: Tensor) -> Tensor:
        """The class's mean softmax probability over the region."""
        region = self.region(output)
        probabilities = self._class_maps(output.float().softmax(dim=1))
        return (probabilities * region).flatten(1).sum(dim=1) / region.flatten(1).sum(dim=1).clamp(min=1)


def segmentation(class_index: int | Tensor, mask: Tensor | None = None) -> Segmentation:
    """A target for segmentation models: the sum of class ``class_index``'s logits over ``mask``
    (``[H, W]`` or ``[B, H, W]``), or over the pixels predicted as that class when ``mask`` is ``None``.

    Example::

        >>> maps = lc.explain(unet, images, "gradcam", "decoder.3", targets=segmentation(2))  # doctest: +SKIP
    """
    if isinstance(class_index, Tensor):
        return Segmentation(class_index.long(), mask)
    if isinstance(class_index, bool) or not isinstance(class_index, int) or class_index < 0:
        raise ValueError(f"segmentation needs a class index >= 0 (or one per image); got {class_index!r}.")
    return Segmentation(class_index, mask)


@dataclass(frozen=True)
class Scorer:
    """The scores the maps explain, for a batch of rows of the output.

    ``kind``: ``"class"`` (logits ``[B, C]``), ``"binary"`` (one logit), or ``"callable"``. ``classes``
    ``[B]``: the class of each image (``-1`` for callables).
    """

    kind: str
    classes: Tensor
    function: Callable[[Tensor], Tensor] | None = None

    def score(self, output: Tensor, rows: Tensor | None = None) -> Tensor:
        """What the gradients are taken of: per row, the class logit, the signed binary logit, or the
        callable's value (``rows``: which image each row of ``output`` belongs to)."""
        classes = self.classes if rows is None else self.classes[rows]
        if self.kind in ("class", "multilabel"):
            return output.gather(1, classes[:, None]).squeeze(1)
        if self.kind == "binary":
            logit = output.reshape(output.shape[0])
            return torch.where(classes == 1, logit, -logit)
        assert self.function is not None
        return _for_rows(self.function, rows)(output)

    def probability(self, output: Tensor, rows: Tensor | None = None) -> Tensor:
        """What the perturbation methods and metrics compare: the softmax probability of the class,
        the sigmoid of the signed binary logit, or the callable's probability (its value)."""
        if self.kind == "class":
            classes = self.classes if rows is None else self.classes[rows]
            return output.float().softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
        if self.kind in ("binary", "multilabel"):
            return self.score(output.float(), rows).sigmoid()
        assert self.function is not None
        function = _for_rows(self.function, rows)
        return getattr(function, "probability", function)(output)


def prediction(scorer: Scorer | None, output: Tensor) -> tuple[Tensor, Tensor]:
    """``(confidence [B], predicted class [B])`` of an output: the top softmax probability and its class,
    a binary model's ``max(p, 1 - p)`` and ``logit > 0``, or ``(NaN, -1)`` for callable targets. An image
    whose output holds a NaN (a NaN image, NaN weights) predicts nothing: ``(NaN, -1)``, never the class
    ``argmax`` happens to return."""
    confidence, predicted = _prediction(scorer, output)
    undefined = output.detach().float().reshape(len(output), -1).isnan().any(dim=1)
    return confidence.masked_fill(undefined, float("nan")), predicted.masked_fill(undefined, -1)


def _prediction(scorer: Scorer | None, output: Tensor) -> tuple[Tensor, Tensor]:
    kind = "class" if scorer is None else scorer.kind
    if kind == "class":
        return output.float().softmax(dim=1).max(dim=1)
    if kind == "multilabel":  # the explained class's own probability, and whether it is predicted present
        probability = scorer.probability(output)
        return probability, torch.where(probability > 0.5, scorer.classes, -1)
    if kind == "binary":
        probability = output.float().reshape(len(output)).sigmoid()
        predicted = (probability > 0.5).long()
        return torch.where(predicted == 1, probability, 1 - probability), predicted
    return torch.full((len(output),), float("nan"), device=output.device), torch.full(
        (len(output),), -1, dtype=torch.long, device=output.device
    )


def correctness(predicted: Tensor, labels: Tensor | None) -> Tensor:
    """``[B]``: 1 where the predicted class is the label, 0 where not; NaN without labels and where the
    target predicts no class (``predicted`` ``-1``: a callable's score, a detector's box score)."""
    if labels is None:
        return torch.full(predicted.shape, float("nan"), device=predicted.device)
    matches = (predicted == labels.to(predicted.device)).float()
    return torch.where(predicted >= 0, matches, torch.full_like(matches, float("nan")))


def num_classes(scorer: Scorer | None, output: Tensor) -> int:
    """How many classes the output tells apart (2 for a one-logit model, 0 for callable targets)."""
    kind = "class" if scorer is None else scorer.kind
    return output.shape[1] if kind in ("class", "multilabel") else 2 if kind == "binary" else 0


def _for_rows(function: Callable[[Tensor], Tensor], rows: Tensor | None) -> Callable[[Tensor], Tensor]:
    """``function`` for rows of other images (``rows``: each row's image), where it holds per-image state."""
    for_rows = getattr(function, "for_rows", None)
    return function if rows is None or for_rows is None else for_rows(rows)


def _output_hint(output: Any) -> str:
    """What the model returned and the ``output_key`` that would pick a tensor out of it."""
    if isinstance(output, dict):
        keys = [key for key, value in output.items() if isinstance(value, Tensor)]
        return (
            f"a {type(output).__name__} with keys {list(output)}; pass output_key={keys[0]!r}"
            if keys
            else (
                f"a {type(output).__name__} with keys {list(output)}; pass output_key=a function output -> tensor"
            )
        )
    return f"{type(output).__name__}; pass output_key (an index, a key, or a function output -> tensor)"


def make_scorer(targets: Targets, output: Any) -> Scorer:
    """Resolve ``targets`` against the model's output (after ``output_key``); see the module's docstring."""
    if isinstance(targets, Segmentation) and not isinstance(output, Tensor):
        raise ValueError(
            f"segmentation targets read logits [B, C, H, W]; the model returned {_output_hint(output)} "
            f"(torchvision's segmentation models: output_key='out')."
        )
    if isinstance(targets, MultiLabel):
        if not isinstance(output, Tensor) or output.dim() != 2:
            raise ValueError(
                f"multi-label targets need logits [B, num_classes]; got {type(output).__name__}."
            )
        return Scorer(
            "multilabel", _classes(targets.classes.to(output.device), output.argmax(dim=1), output.shape[1])
        )
    if callable(targets) and not isinstance(targets, Tensor):
        return _callable_scorer(targets, output)
    if is_box_output(output):
        raise ValueError(
            "the model is a detector (it returned a list of {'boxes', 'labels', 'scores'} dicts); say which "
            "boxes to explain: targets=lightning_cam.targets.boxes(boxes, labels), e.g. its own detections."
        )
    if not isinstance(output, Tensor):
        raise ValueError(
            f"the model returned {_output_hint(output)} to pick its logits; or, with explain(), targets=a "
            f"callable output -> [B] scores."
        )
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return Scorer("binary", _classes(targets, (output.detach().reshape(-1) > 0).long(), 2, binary=True))
    if output.dim() == 2:
        return Scorer("class", _classes(targets, output.detach().argmax(dim=1), output.shape[1]))
    raise ValueError(
        f"the model's output has shape {list(output.shape)}; class targets need logits [B, num_classes] or one "
        f"binary logit [B]. For a segmentation output use targets=lightning_cam.engine.targets.segmentation(class_index), "
        f"for any other head a callable output -> [B] scores, or output_key to pick the logits."
    )


def _callable_scorer(targets: Callable[[Any], Tensor], output: Any) -> Scorer:
    """A callable target's scorer, checked to give one score per image."""
    scores = targets(output)
    if not isinstance(scores, Tensor) or scores.shape != (len(output),):
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"a callable target must return one score per image [{len(output)}]; it returned {shape}."
        )
    return Scorer("callable", torch.full((len(output),), -1, dtype=torch.long, device=scores.device), targets)


def _classes(targets: Targets, predicted: Tensor, num_classes: int, binary: bool = False) -> Tensor:
    """``targets`` as one class index per image (``predicted`` where ``None``), checked against ``num_classes``."""
    batch, device = len(predicted), predicted.device
    if targets is None:
        return predicted
    if isinstance(targets, bool):
        raise ValueError(
            f"targets must be None, a class index or one class index per image; got {targets!r}."
        )
    if isinstance(targets, int):
        resolved = torch.full((batch,), targets, dtype=torch.long, device=device)
    else:
        resolved = torch.as_tensor(targets, device=device)
        if resolved.is_floating_point() or resolved.dim() != 1 or resolved.shape[0] != batch:
            raise ValueError(
                f"targets must hold one integer class index per image ({batch}); got "
                f"{resolved.dtype} of shape {list(resolved.shape)}."
            )
        resolved = resolved.long()
    if resolved.numel() and (int(resolved.min()) < 0 or int(resolved.max()) >= num_classes):
        kind = ", a one-logit binary classifier: 0 explains -logit, 1 explains +logit" if binary else ""
        raise ValueError(
            f"targets must be class indices in [0, {num_classes - 1}] (the model has {num_classes} "
            f"classes{kind}); got {resolved.tolist()}."
        )
    return resolved
