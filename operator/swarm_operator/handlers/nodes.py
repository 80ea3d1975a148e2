"""LearningNode watch events."""

from __future__ import annotations

from typing import Any

import kopf

from .. import names
from ..reconcile import learning_node
from .runtime import context, wake_waiting_tasks


@kopf.on.event(names.GROUP, names.VERSION, names.NODES)
def node_event(**kw: Any) -> None:
    ctx, name, namespace = context(), str(kw["name"]), str(kw["namespace"])
    learning_node.reconcile(ctx, namespace, name)
    wake_waiting_tasks(ctx, namespace)
