"""Status helpers: phases, conditions (with observedGeneration and lastTransitionTime), change test.

Pure functions; the clock is passed in so results are testable.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class NetworkPhase:
    PENDING = "Pending"
    BOOTSTRAPPING = "Bootstrapping"
    READY = "Ready"
    DEGRADED = "Degraded"


class NodePhase:
    PENDING = "Pending"
    READY = "Ready"
    IDLE = "Idle"
    TRAINING = "Training"
    ERROR = "Error"


class TaskPhase:
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    TERMINAL = frozenset({"Succeeded", "Failed"})


def now() -> str:
    """RFC 3339 UTC timestamp at second precision (what Kubernetes stores)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    """One observation: type (CamelCase), status True/False/Unknown, CamelCase reason, message."""

    type: str
    status: bool | None
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Condition], generation: int, timestamp: str
) -> list[dict[str, Any]]:
    """Conditions list with `new` applied: lastTransitionTime moves only when a status changes.

    Conditions of other types already present are kept (in their order), new types appended.
    """
    by_type = {c.get("type"): dict(c) for c in old or ()}
    order = [c.get("type") for c in old or ()]
    for cond in new:
        prev = by_type.get(cond.type)
        changed = prev is None or prev.get("status") != cond.status_text
        by_type[cond.type] = {
            "type": cond.type,
            "status": cond.status_text,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": timestamp
            if changed or prev is None
            else prev.get("lastTransitionTime", timestamp),
            "observedGeneration": generation,
        }
        if cond.type not in order:
            order.append(cond.type)
    return [by_type[t] for t in order if t in by_type]


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return c
    return None


def differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when patching `new` onto `old` would change any field (so idle reconciles write nothing)."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())


def status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch taking status `old` to `new`: only the top-level fields that change (unchanged
    ones, e.g. a task's list of 2,000 peers, are not sent again), None when nothing changes. A None
    value in `new` removes the field (merge patch)."""
    old = old or {}
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    return patch or None


def transitioned(old: Mapping[str, Any] | None, new: Sequence[Mapping[str, Any]], type_: str) -> bool:
    """True when condition `type_` is new or changed status or reason (worth a Kubernetes Event)."""
    before = find((old or {}).get("conditions"), type_)
    after = find(new, type_)
    if after is None:
        return False
    return before is None or (before.get("status"), before.get("reason")) != (
        after.get("status"),
        after.get("reason"),
    )
