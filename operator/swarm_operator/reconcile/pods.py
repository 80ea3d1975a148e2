"""Reading observed pods (pure helpers)."""

from __future__ import annotations

from typing import Any

from .. import names

ACTIVE_PHASES = frozenset({"Pending", "Running", "Unknown"})


def phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def is_terminating(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def is_ready(pod: dict[str, Any]) -> bool:
    """Running, Ready condition True, not being deleted."""
    if is_terminating(pod) or phase(pod) != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or ()
    )


def is_active(pod: dict[str, Any]) -> bool:
    """Still holding its LearningNode: not ended and not being deleted."""
    return not is_terminating(pod) and phase(pod) in ACTIVE_PHASES


def attempt(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"]["labels"][names.L_ATTEMPT])
    except (KeyError, ValueError):
        return -1
