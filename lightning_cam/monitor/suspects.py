"""The run's shortcut suspects over training: every audit's flagged strategies, kept with the epoch and
step of the audit, one suspect per class and place (a flagged strategy of the same class whose region
overlaps a suspect's, intersection over union at least :data:`SAME_PLACE_IOU`, is that suspect seen
again). A shortcut taken early and left later is still on the page: first seen, last seen, and
whether the last audit still flags it. Saved in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from lightning_cam.auditing import Strategy
from lightning_cam.report.tables import Report

__all__ = ["Suspect", "SuspectHistory"]

SAME_PLACE_IOU = 0.3


@dataclass
class Suspect:
    """One shortcut suspect of the run: its class, its region (``[H, W]`` bool, the latest flagged) and
    where that is in words, the audits that flagged it (``(epoch, step)``), its highest evidence, and the
    latest flagged strategy's words and prototypes."""

    class_name: str
    region: Tensor
    where: str
    seen: list[tuple[int, int]]
    evidence: float
    words: str
    prototype_images: Tensor

    def matches(self, strategy: Strategy) -> bool:
        """The same class, and a region at the same place."""
        if strategy.class_name != self.class_name or strategy.region.shape != self.region.shape:
            return False
        union = (strategy.region | self.region).sum()
        return bool(union) and float((strategy.region & self.region).sum() / union) >= SAME_PLACE_IOU


@dataclass
class SuspectHistory:
    """The audits so far (``(epoch, step)`` each) and the suspects they flagged."""

    audits: list[tuple[int, int]] = field(default_factory=list)
    suspects: list[Suspect] = field(default_factory=list)

    def add(self, epoch: int, step: int, strategies: list[Strategy]) -> None:
        """Record one audit's strategies: each flagged one joins its suspect, or starts a new one."""
        self.audits.append((epoch, step))
        for strategy in (s for s in strategies if s.flagged):
            words = strategy.place()
            known = next((s for s in self.suspects if s.matches(strategy)), None)
            if known is None:
                known = Suspect(
                    strategy.class_name,
                    strategy.region,
                    words,
                    [],
                    strategy.evidence,
                    "",
                    strategy.prototype_images,
                )
                self.suspects.append(known)
            if not known.seen or known.seen[-1] != (epoch, step):
                known.seen.append((epoch, step))
            known.region, known.where, known.words = strategy.region, words, strategy.words()
            known.evidence = max(known.evidence, strategy.evidence)
            known.prototype_images = strategy.prototype_images

    def still_flagged(self, suspect: Suspect) -> bool:
        """Whether the latest audit flagged the suspect."""
        return bool(self.audits) and suspect.seen[-1] == self.audits[-1]

    def report(self) -> Report:
        """A row per suspect (first seen, last seen, how many audits flagged it, still flagged at the
        last audit, highest evidence), and a reading for each; one reading when there is none."""
        columns = [
            "class",
            "where",
            "first seen",
            "last seen",
            "audits flagged",
            "at the last audit",
            "highest evidence",
        ]
        rows: list[list[object]] = [
            [
                s.class_name,
                s.where,
                _when(s.seen[0]),
                _when(s.seen[-1]),
                f"{len(s.seen)} of {len(self.audits)}",
                "still flagged" if self.still_flagged(s) else "not flagged",
                f"{s.evidence:.2f}",
            ]
            for s in self.suspects
        ]
        return Report(columns, rows, [self._reading(s) for s in self.suspects] or [self._none()])

    def _reading(self, suspect: Suspect) -> str:
        span = f"flagged at {len(suspect.seen)} of the run's {len(self.audits)} audits, first at {_when(suspect.seen[0])}"
        if self.still_flagged(suspect):
            return f"class `{suspect.class_name}`: {suspect.where}, {span}, and still at the last audit ({_when(self.audits[-1])}): {suspect.words}"
        return (
            f"class `{suspect.class_name}`: {suspect.where}, {span}, last at {_when(suspect.seen[-1])}; the last "
            f"audit ({_when(self.audits[-1])}) no longer flags it: the model may have left it, or leans on it "
            f"less (see its strategies' evidence). When last flagged: {suspect.words}"
        )

    def _none(self) -> str:
        return f"no shortcut suspect at any of the run's {len(self.audits)} audits ({', '.join(_when(a) for a in self.audits)})"

    def state_dict(self) -> dict[str, Any]:
        return {
            "audits": list(self.audits),
            "suspects": [
                dict(vars(s), region=s.region.cpu(), prototype_images=s.prototype_images.cpu())
                for s in self.suspects
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.audits = [tuple(a) for a in state.get("audits", [])]  # type: ignore[misc]
        self.suspects = [
            Suspect(**dict(s, seen=[tuple(x) for x in s["seen"]])) for s in state.get("suspects", [])
        ]


def _when(audit: tuple[int, int]) -> str:
    return f"epoch {audit[0]} (step {audit[1]})"
