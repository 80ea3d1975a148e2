"""Watch events of the pods the operator created (SN members and task peers)."""

from __future__ import annotations

from typing import Any

import kopf

from .. import names
from ..reconcile import learning_node, network, task
from .runtime import context


@kopf.on.event("", "v1", "pods", labels={names.L_MANAGED_BY: names.OPERATOR_NAME})
def pod_event(**kw: Any) -> None:
    """A child pod changed: reconcile the objects it belongs to."""
    ctx, labels, namespace = context(), dict(kw["labels"]), str(kw["namespace"])
    component = labels.get(names.L_COMPONENT)
    if component in (names.COMPONENT_SN, names.COMPONENT_CONSOLE) and labels.get(names.L_NETWORK):
        network.reconcile(ctx, namespace, labels[names.L_NETWORK])
    elif component == names.COMPONENT_TASK:
        if labels.get(names.L_TASK):
            task.reconcile(ctx, namespace, labels[names.L_TASK])
        if labels.get(names.L_NODE):
            learning_node.reconcile(ctx, namespace, labels[names.L_NODE])
