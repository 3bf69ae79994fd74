"""What CAMMonitor remembers between checks: the previous maps (for drift), the last few maps of
each sample (for the timeline) and the mask metrics of the first and the latest check (for the
bias report). Bounded in size whatever the number of checks, and saved in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["AttentionHistory"]


@dataclass
class AttentionHistory:
    """Per key (``"<target>/<method>"``): the previous check's maps and the last ``timeline_length``
    maps (as ``uint8``); per ``"<method>/<mask>"``: mass and enrichment at the first and last check."""

    timeline_length: int = 8
    previous: dict[str, Tensor] = field(default_factory=dict)
    timeline: dict[str, list[tuple[int, Tensor]]] = field(default_factory=dict)
    first: dict[str, dict[str, float]] = field(default_factory=dict)
    last: dict[str, dict[str, float]] = field(default_factory=dict)

    def swap_previous(self, key: str, maps: Tensor) -> Tensor | None:
        """Store ``maps`` as the latest for ``key``; return the ones they replace (``None`` the first time)."""
        before = self.previous.get(key)
        self.previous[key] = maps.detach().float()
        return None if before is None else before.to(maps.device)

    def add_to_timeline(self, key: str, step: int, maps: Tensor) -> None:
        """Append this check's maps (as ``uint8``), keeping the last ``timeline_length``."""
        if self.timeline_length <= 0:
            return
        entries = self.timeline.setdefault(key, [])
        entries.append((step, (maps.detach().clamp(0, 1) * 255).round().to(torch.uint8)))
        del entries[: -self.timeline_length]

    def timeline_of(self, key: str, device: torch.device) -> tuple[list[int], Tensor]:
        """The kept steps of ``key`` and their maps ``[n, B, H, W]`` in ``[0, 1]`` on ``device``."""
        entries = self.timeline.get(key, [])
        if not entries:
            return [], torch.empty(0, device=device)
        return [s for s, _ in entries], torch.stack([m.to(device) for _, m in entries]).float() / 255

    def record(self, key: str, values: dict[str, float]) -> None:
        """Mask metrics of this check: kept as the first (once) and as the last."""
        self.first.setdefault(key, dict(values))
        self.last[key] = dict(values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": {key: maps.cpu() for key, maps in self.previous.items()},
            "timeline": {
                key: [(step, maps.cpu()) for step, maps in entries] for key, entries in self.timeline.items()
            },
            "first": self.first,
            "last": self.last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = dict(state.get("previous", {}))
        self.timeline = {key: list(entries) for key, entries in state.get("timeline", {}).items()}
        self.first = dict(state.get("first", {}))
        self.last = dict(state.get("last", {}))
