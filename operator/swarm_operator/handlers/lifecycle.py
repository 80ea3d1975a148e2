"""Startup and shutdown: Kopf settings, and the periodic resync pass (ledger progress has no watch
event; Kopf timers would add finalizers to our objects, so the resync is a plain background task)."""

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
from .runtime import config, context

log = logging.getLogger(__name__)


@kopf.on.login()
def login(**kw: Any) -> kopf.ConnectionInfo | None:
    """Authenticate through the official client, like `kube.py`. Kopf's default prefers pykube-ng when
    it is installed, and pykube-ng writes inline kubeconfig certificates to temp files it never removes."""
    return kopf.login_via_client(**kw)


@kopf.on.startup()
def apply_settings(**kw: Any) -> None:
    apply(kw["settings"], config())


@kopf.on.startup()
async def start_resync(**kw: Any) -> None:
    kw["memo"]["resync"] = asyncio.create_task(_resync_loop(config(), kw["logger"]))


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
    # A network deleted while the operator was down leaves its console's ClusterRoleBinding behind.
    try:
        network.sweep_console_bindings(ctx)
    except Exception:
        log.exception("sweeping console ClusterRoleBindings of deleted networks failed")
