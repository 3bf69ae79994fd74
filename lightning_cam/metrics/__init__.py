"""Metrics over the maps, as small batched torch functions on the model's device.

- :mod:`~lightning_cam.metrics.attention`: where the attention goes and how it moves (drift, mass
  and enrichment in a mask, pointing game, confidence drop, per-class mean maps);
- :mod:`~lightning_cam.metrics.faithfulness`: whether the maps say what drives the prediction
  (deletion / insertion, ROAD), with :mod:`~lightning_cam.metrics.imputation` (ROAD's fill-in);
- :mod:`~lightning_cam.metrics.randomization`: whether the maps depend on the model at all (the
  model-randomisation sanity check).

It imports the engine (the state guard, targets, logits, chunked forwards) and torch; no Lightning,
no torchmetrics, no other wing.
"""

from lightning_cam.metrics.attention import (
    as_distribution,
    average_drop,
    class_mean_maps,
    drift,
    enrichment,
    flat_maps,
    increase_in_confidence,
    masked_confidence,
    mass_in_mask,
    nanmean,
    pointing_game,
    slice_means,
)
from lightning_cam.metrics.faithfulness import deletion_insertion, pixel_ranks, road
from lightning_cam.metrics.imputation import complementary_imputations, noisy_linear_imputation
from lightning_cam.metrics.randomization import learnable_layers, model_randomization, spearman

__all__ = [
    "as_distribution",
    "average_drop",
    "class_mean_maps",
    "complementary_imputations",
    "deletion_insertion",
    "drift",
    "enrichment",
    "flat_maps",
    "increase_in_confidence",
    "learnable_layers",
    "masked_confidence",
    "mass_in_mask",
    "model_randomization",
    "nanmean",
    "noisy_linear_imputation",
    "pixel_ranks",
    "pointing_game",
    "road",
    "slice_means",
    "spearman",
]
