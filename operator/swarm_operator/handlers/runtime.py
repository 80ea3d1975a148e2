"""What the handlers share: the reconcile context of this process and its configuration."""

from __future__ import annotations

from .. import names
from ..reconcile import task
from ..reconcile.context import Context
from ..settings import OperatorConfig

_context: Context | None = None
_config: OperatorConfig | None = None


def install(ctx: Context, config: OperatorConfig) -> None:
    """Give the handlers their context and configuration (main calls it before Kopf starts)."""
    global _context, _config
    _context, _config = ctx, config


def context() -> Context:
    if _context is None:
        raise RuntimeError("swarm_operator.handlers.install() was not called before the operator started")
    return _context


def config() -> OperatorConfig:
    return _config or OperatorConfig()


def wake_waiting_tasks(ctx: Context, namespace: str, skip: str | None = None) -> None:
    """Re-reconcile tasks that wait on something another object's change may have provided."""
    for t in ctx.kube.list_custom(names.TASKS, namespace):
        phase = (t.get("status") or {}).get("phase")
        if t["metadata"]["name"] != skip and phase in (None, "Pending", "Waiting"):
            task.reconcile(ctx, namespace, t["metadata"]["name"])
