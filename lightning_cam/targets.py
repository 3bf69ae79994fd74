"""What a map explains, for ``explain(..., targets=...)``: besides ``None`` (the prediction), a class
index, or one index per image, a target may be one of these.

Example::

    >>> import lightning_cam as lc
    >>> target = lc.targets.segmentation(class_index=1)  # the pixels predicted as class 1
    >>> target = lc.targets.boxes([torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [torch.tensor([2])])  # a detector's box
"""

from lightning_cam.engine.detection import Boxes, boxes
from lightning_cam.engine.targets import MultiLabel, Scorer, Segmentation, Targets, multilabel, segmentation

__all__ = ["Boxes", "MultiLabel", "Scorer", "Segmentation", "Targets", "boxes", "multilabel", "segmentation"]
