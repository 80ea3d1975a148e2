"""SwarmTask watch events."""

from __future__ import annotations

from typing import Any

import kopf

from .. import names
from ..reconcile import task
from .runtime import context, wake_waiting_tasks


@kopf.on.event(names.GROUP, names.VERSION, names.TASKS)
def task_event(**kw: Any) -> None:
    ctx, name, namespace, event = context(), str(kw["name"]), str(kw["namespace"]), kw["event"]
    task.reconcile(ctx, namespace, name)
    if event.get("type") == "DELETED" or (event.get("object") or {}).get("status", {}).get("phase") in (
        "Succeeded",
        "Failed",
    ):
        wake_waiting_tasks(ctx, namespace, skip=name)
