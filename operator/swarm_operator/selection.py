"""Which LearningNodes run a task: label-selector matching and deterministic peer choice (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .specs import SpecError

BUSY_PHASES = frozenset({"Training"})
USABLE_PHASES = frozenset({"Ready", "Idle", "Training"})
"""LearningNode phases whose identity and Service are in place (Training ones are usable once free)."""


@dataclass(frozen=True)
class Candidate:
    """A LearningNode as seen by the selector: name, labels, network, observed phase and current task."""

    name: str
    labels: Mapping[str, str]
    network: str
    phase: str | None = None
    current_task: str | None = None

    def busy_for(self, task: str) -> bool:
        """True when it trains another task (a site runs one task at a time: one SL Service per site)."""
        return self.phase in BUSY_PHASES and bool(self.current_task) and self.current_task != task


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or ())
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise SpecError(
                "spec.nodeSelector.matchExpressions operator must be In, NotIn, Exists or DoesNotExist,"
                f" got {op!r}"
            )
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Selection:
    """Outcome of choosing peers: the chosen names, or why not (a condition reason and message)."""

    peers: tuple[str, ...] = ()
    reason: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def select_peers(
    task: str, network: str, selector: Mapping[str, Any], wanted: int, candidates: Sequence[Candidate]
) -> Selection:
    """Choose `wanted` LearningNodes of `network` matching `selector`: idle first, then by name.

    Deterministic, so two operators (or one restarted) choose the same set. Busy nodes (training
    another task) and nodes not set up yet are never chosen; the task waits for them instead.
    """
    matching = sorted(
        (c for c in candidates if c.network == network and matches(selector, c.labels)), key=lambda c: c.name
    )
    if len(matching) < wanted:
        return Selection(
            reason="InsufficientPeers",
            message=(
                f"spec.peers={wanted} but only {len(matching)} LearningNode(s) of network {network!r} match "
                f"spec.nodeSelector ({', '.join(c.name for c in matching) or 'none'})"
            ),
        )
    usable = [c for c in matching if c.phase in USABLE_PHASES]
    free = [c for c in usable if not c.busy_for(task)]
    if len(free) < wanted:
        busy = [c.name for c in usable if c.busy_for(task)]
        unready = [c.name for c in matching if c.phase not in USABLE_PHASES]
        reason = "PeersBusy" if busy else "PeersNotReady"
        return Selection(
            reason=reason,
            message=(
                f"spec.peers={wanted} but only {len(free)} matching LearningNode(s) are free;"
                f" busy: {', '.join(busy) or 'none'}; not ready: {', '.join(unready) or 'none'}"
            ),
        )
    # Idle first (finished nodes before never-used Ready ones would be arbitrary, so by name within).
    ordered = sorted(free, key=lambda c: (0 if c.phase in ("Idle", "Ready") else 1, c.name))
    return Selection(peers=tuple(c.name for c in ordered[:wanted]))
