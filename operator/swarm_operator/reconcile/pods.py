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


def failure_reason(pod: dict[str, Any], container: str = "ml") -> str:
    """Why a failed pod failed, in words: the container's termination (reason, exit code, message), else
    the pod's own reason (e.g. Evicted, DeadlineExceeded), else its phase."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or ():
        if cs.get("name") != container:
            continue
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            reason = term.get("reason") or "Terminated"
            text = f"container {container} {reason} (exit code {term.get('exitCode')})"
            message = str(term.get("message") or "").strip()
            # The termination message is the program's last words (terminationMessagePolicy
            # FallbackToLogsOnError: its log tail); keep the condition readable.
            return f"{text}: {message[-300:]}" if message else text
    if status.get("reason"):
        return f"pod {status['reason']}: {status.get('message') or ''}".rstrip(": ")
    return f"pod {phase(pod)}"
