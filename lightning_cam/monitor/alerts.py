"""Alerts: thresholds on logged attention scalars that warn once and can stop training.

``{"cam/gradcam/enrichment/cue": 3.0}`` fires when the scalar rises above 3.0;
``{"cam/gradcam/mass/object": "<0.2"}`` when it falls below 0.2 (``">3.0"`` is the same as ``3.0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from difflib import get_close_matches

__all__ = ["Alert", "AlertEvent", "crossed_alerts", "dead_tags_message", "parse_alerts"]


@dataclass(frozen=True)
class Alert:
    """Fire when ``tag`` goes above ``threshold`` (``above=True``) or below it."""

    tag: str
    threshold: float
    above: bool = True

    def crossed_by(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value > self.threshold if self.above else value < self.threshold

    def describe(self) -> str:
        return f"{'>' if self.above else '<'} {self.threshold:g}"


@dataclass(frozen=True)
class AlertEvent:
    """An alert that fired: its rule, the value that crossed it and the step it was logged at."""

    alert: Alert
    value: float
    step: int

    def message(self, grid_tag: str) -> str:
        direction = "rose above" if self.alert.above else "fell below"
        return (
            f"CAMMonitor alert: {self.alert.tag} = {self.value:.4g} {direction} {self.alert.threshold:g} at "
            f"step {self.step}. Look at {grid_tag} at step {self.step} to see where the model looks."
        )


def _parse_threshold(tag: str, rule: float | str) -> Alert:
    if isinstance(rule, bool):
        raise ValueError(f"alerts[{tag!r}] must be a number or a string '>x' / '<x'; got {rule!r}.")
    if isinstance(rule, (int, float)):
        return Alert(tag, float(rule))
    text = str(rule).strip()
    above = not text.startswith("<")
    try:
        return Alert(tag, float(text.lstrip("<>").strip()), above)
    except ValueError:
        raise ValueError(
            f"alerts[{tag!r}] = {rule!r} is not a threshold: use a number (fires above it), '>3.0' or '<0.2'."
        ) from None


def parse_alerts(alerts: Mapping[str, float | str]) -> list[Alert]:
    """``{tag: threshold}`` (plain values, for LightningCLI) as :class:`Alert` rules."""
    if not isinstance(alerts, Mapping):
        raise ValueError(
            f"alerts must map a scalar's tag to a threshold, e.g. {{'cam/gradcam/enrichment/cue': 3.0}}; got {alerts!r}."
        )
    return [_parse_threshold(str(tag), rule) for tag, rule in alerts.items()]


def crossed_alerts(
    rules: Iterable[Alert], scalars: Mapping[str, float], step: int, fired: set[str]
) -> list[AlertEvent]:
    """The rules crossed by ``scalars`` that have not fired before (their tags are added to ``fired``)."""
    events = []
    for rule in rules:
        if rule.tag in fired or rule.tag not in scalars or not rule.crossed_by(scalars[rule.tag]):
            continue
        fired.add(rule.tag)
        events.append(AlertEvent(rule, float(scalars[rule.tag]), step))
    return events


LATER_TAGS = ("/drift", "/deletion_auc", "/insertion_auc", "/road", "/randomization_spearman")
"""Tag endings a first check may not log yet (drift needs a previous check; the trust metrics run
every n-th check)."""


def later_tag(tag: str) -> bool:
    """A tag that a first check may not log yet (:data:`LATER_TAGS`)."""
    return tag.endswith(LATER_TAGS)


def per_strategy_tag(tag: str, root: str) -> bool:
    """``<root>/strategies/<class>/<k>/<figure>``: logged only while that strategy is flagged or among the
    highest evidence, so an audit may lack it and a later one log it."""
    parts = tag.removeprefix(f"{root}/strategies/").split("/")
    return tag.startswith(f"{root}/strategies/") and len(parts) == 3


def dead_tags_message(
    wanted: Mapping[str, list[str]],
    scalars: Mapping[str, float],
    pending: Callable[[str], bool] = later_tag,
    logged_by: str = "the first check",
) -> str | None:
    """A warning naming the tags that alerts or other callbacks (``ModelCheckpoint``, ``EarlyStopping``)
    wait for and that ``scalars`` (what ``logged_by`` logged) lack, each with the closest tags that exist;
    ``None`` when every one is logged. ``wanted``: tag -> who waits for it (``"alerts"``, a callback);
    ``pending``: the tags that may come later, not named."""
    missing = {tag: users for tag, users in wanted.items() if tag not in scalars and not pending(tag)}
    if not missing:
        return None
    named = "; ".join(
        f"{tag!r}, waited for by {' and '.join(users)} (closest logged: "
        f"{', '.join(get_close_matches(tag, list(scalars), n=3, cutoff=0.5)) or 'none'})"
        for tag, users in missing.items()
    )
    return (
        f"CAMMonitor: {logged_by} logged no scalar {named}: a mask name the batches do not carry, a method "
        f"that is not run, or an audit tag without audit=True? Such an alert can never fire, and a "
        f"ModelCheckpoint or EarlyStopping monitoring the tag will fail when it looks for it."
    )
