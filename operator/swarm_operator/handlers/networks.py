"""SwarmNetwork watch events."""

from __future__ import annotations

from typing import Any

import kopf

from .. import names
from ..reconcile import learning_node, network
from .runtime import context, wake_waiting_tasks


@kopf.on.event(names.GROUP, names.VERSION, names.NETWORKS)
def network_event(**kw: Any) -> None:
    ctx, name, namespace = context(), str(kw["name"]), str(kw["namespace"])
    network.reconcile(ctx, namespace, name)
    for n in ctx.kube.list_custom(names.NODES, namespace):
        if (n.get("spec") or {}).get("network") == name:
            learning_node.reconcile(ctx, namespace, n["metadata"]["name"])
    wake_waiting_tasks(ctx, namespace)
