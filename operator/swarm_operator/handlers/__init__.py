"""Thin Kopf handlers: each watch event becomes a call to the reconciler of the object it concerns.

No change handlers, timers or daemons: those would make Kopf add finalizers and keep handler state
on the objects. Deletion needs no handler: children carry owner references and the garbage collector
removes them. Periodic re-reconciling (ledger progress) is `resync` in `swarm_operator.main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from .. import names
from ..reconcile import learning_node, network, task
from ..reconcile.context import Context
from ..settings import OperatorConfig, apply

log = logging.getLogger(__name__)
_context: Context | None = None


def install(ctx: Context) -> None:
    """Give the handlers their context (called by main before Kopf starts)."""
    global _context
    _context = ctx


def context() -> Context:
    if _context is None:
        raise RuntimeError("swarm_operator.handlers.install(ctx) was not called before the operator started")
    return _context


def wake_waiting_tasks(ctx: Context, namespace: str, skip: str | None = None) -> None:
    """Re-reconcile tasks that wait on something another object's change may have provided."""
    for t in ctx.kube.list_custom(names.TASKS, namespace):
        phase = (t.get("status") or {}).get("phase")
        if t["metadata"]["name"] != skip and phase in (None, "Pending", "Waiting"):
            task.reconcile(ctx, namespace, t["metadata"]["name"])


@kopf.on.event(names.GROUP, names.VERSION, names.NETWORKS)
def network_event(**kw: Any) -> None:
    ctx, name, namespace = context(), str(kw["name"]), str(kw["namespace"])
    network.reconcile(ctx, namespace, name)
    for n in ctx.kube.list_custom(names.NODES, namespace):
        if (n.get("spec") or {}).get("network") == name:
            learning_node.reconcile(ctx, namespace, n["metadata"]["name"])
    wake_waiting_tasks(ctx, namespace)


@kopf.on.event(names.GROUP, names.VERSION, names.NODES)
def node_event(**kw: Any) -> None:
    ctx, name, namespace = context(), str(kw["name"]), str(kw["namespace"])
    learning_node.reconcile(ctx, namespace, name)
    wake_waiting_tasks(ctx, namespace)


@kopf.on.event(names.GROUP, names.VERSION, names.TASKS)
def task_event(**kw: Any) -> None:
    ctx, name, namespace, event = context(), str(kw["name"]), str(kw["namespace"]), kw["event"]
    task.reconcile(ctx, namespace, name)
    if event.get("type") == "DELETED" or (event.get("object") or {}).get("status", {}).get("phase") in (
        "Succeeded",
        "Failed",
    ):
        wake_waiting_tasks(ctx, namespace, skip=name)


@kopf.on.event("", "v1", "pods", labels={names.L_MANAGED_BY: names.OPERATOR_NAME})
def pod_event(**kw: Any) -> None:
    """A child pod changed: reconcile the objects it belongs to."""
    ctx, labels, namespace = context(), dict(kw["labels"]), str(kw["namespace"])
    component = labels.get(names.L_COMPONENT)
    if component == names.COMPONENT_SN and labels.get(names.L_NETWORK):
        network.reconcile(ctx, namespace, labels[names.L_NETWORK])
    elif component == names.COMPONENT_TASK:
        if labels.get(names.L_TASK):
            task.reconcile(ctx, namespace, labels[names.L_TASK])
        if labels.get(names.L_NODE):
            learning_node.reconcile(ctx, namespace, labels[names.L_NODE])


# ------------------------------------------------------------------------------ startup / resync

_config: OperatorConfig | None = None


def configure(config: OperatorConfig) -> None:
    global _config
    _config = config


@kopf.on.startup()
def apply_settings(**kw: Any) -> None:
    apply(kw["settings"], _config or OperatorConfig())


@kopf.on.startup()
async def start_resync(**kw: Any) -> None:
    memo, logger = kw["memo"], kw["logger"]
    config = _config or OperatorConfig()
    memo["resync"] = asyncio.create_task(_resync_loop(config, logger))


@kopf.on.cleanup()
async def stop_resync(**kw: Any) -> None:
    job = kw["memo"].get("resync")
    if job is not None:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job


async def _resync_loop(config: OperatorConfig, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            await loop.run_in_executor(None, resync_once, context(), config.namespaces)
        except Exception:  # a failed pass is retried at the next period; log it and go on
            logger.exception("resync pass failed")


def resync_once(ctx: Context, namespaces: tuple[str, ...]) -> None:
    """Reconcile every object once: networks, then nodes, then tasks (each may depend on the former)."""
    for ns in namespaces or (None,):
        for plural, fn in (
            (names.NETWORKS, network.reconcile),
            (names.NODES, learning_node.reconcile),
            (names.TASKS, task.reconcile),
        ):
            for obj in ctx.kube.list_custom(plural, ns):
                meta = obj["metadata"]
                try:
                    fn(ctx, meta["namespace"], meta["name"])
                except Exception:
                    log.exception("resync of %s %s/%s failed", plural, meta["namespace"], meta["name"])
