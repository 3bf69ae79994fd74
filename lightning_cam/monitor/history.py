"""What CAMMonitor remembers between checks: the previous maps (for drift), the last few maps of
each sample (for the timeline) and the mask metrics of the first, the peak and the latest check
(for the bias report). Bounded in size whatever the number of checks, and saved in the checkpoint.

Every key is :func:`series_key` of its parts: ``"<target>/<method>"`` for a series of maps,
``"<method>/<mask>/<slice>"`` for a series of mask metrics (``<slice>`` is ``all``,
``class=<name>`` or ``group=<name>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["AttentionHistory", "series_key"]


def series_key(*parts: str) -> str:
    """The one key scheme of the history: the parts joined by ``/``."""
    return "/".join(parts)


@dataclass
class AttentionHistory:
    """Previous maps (on the device, for drift), timelines (``uint8`` on the CPU) and, per mask-metric
    key, the values at the first check, at the check of highest enrichment (the peak) and at the last;
    per method, its latest trust metrics and cost (``trust``)."""

    timeline_length: int = 8
    previous: dict[str, Tensor] = field(default_factory=dict)
    timeline: dict[str, list[tuple[int, Tensor]]] = field(default_factory=dict)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    peak: dict[str, dict[str, float]] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)
    trust: dict[str, dict[str, float]] = field(default_factory=dict)

    def swap_previous(self, key: str, maps: Tensor) -> Tensor | None:
        """Store ``maps`` as the latest for ``key``; return the ones they replace (``None`` the first time)."""
        before = self.previous.get(key)
        self.previous[key] = maps.detach().float()
        return None if before is None else before.to(maps.device)

    def add_to_timeline(self, key: str, step: int, maps: Tensor) -> None:
        """Append this check's maps (as ``uint8``, on the CPU), keeping the last ``timeline_length``."""
        if self.timeline_length <= 0:
            return
        entries = self.timeline.setdefault(key, [])
        entries.append((step, (maps.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()))
        del entries[: -self.timeline_length]

    def timeline_of(self, key: str, device: torch.device) -> tuple[list[int], Tensor]:
        """The kept steps of ``key`` and their maps ``[n, B, H, W]`` in ``[0, 1]`` on ``device``."""
        entries = self.timeline.get(key, [])
        if not entries:
            return [], torch.empty(0, device=device)
        return [s for s, _ in entries], torch.stack([m for _, m in entries]).to(device).float() / 255

    def record(self, key: str, values: dict[str, float]) -> None:
        """Mask metrics of this check (with its ``step``): kept as the first (once), as the peak when
        their enrichment is the highest so far, and as the last."""
        self.first.setdefault(key, dict(values))
        best = self.peak.get(key)
        if best is None or _above(values["enrichment"], best["enrichment"]):
            self.peak[key] = dict(values)
        self.last[key] = dict(values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": {key: maps.cpu() for key, maps in self.previous.items()},
            "timeline": {key: list(entries) for key, entries in self.timeline.items()},
            "first": self.first,
            "peak": self.peak,
            "last": self.last,
            "trust": self.trust,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = dict(state.get("previous", {}))
        self.timeline = {
            key: [(s, m.cpu()) for s, m in entries] for key, entries in state.get("timeline", {}).items()
        }
        self.first = dict(state.get("first", {}))
        self.last = dict(state.get("last", {}))
        self.peak = dict(state.get("peak", self.last))
        self.trust = {method: dict(values) for method, values in state.get("trust", {}).items()}


def _above(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)
