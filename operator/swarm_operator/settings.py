"""Kopf settings applied at startup, each with the reason it is set."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import kopf

from .kube import CACHED_CORE, CHILD_SELECTOR


@dataclass(frozen=True)
class OperatorConfig:
    """Command-line configuration of one operator process."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty = cluster-wide."""
    resync_seconds: float = 30.0
    """Period of the full re-reconcile of every object (ledger progress has no watch event), seconds."""
    ledger_timeout_seconds: float = 3.0
    """Bound of one ledger read, seconds."""
    ledger_poll_seconds: float = 15.0
    """Minimum time between two ledger reads for one object, seconds; 0 disables ledger reads."""
    workers: int = 8
    """Threads running reconciles (they block on the API server and the ledger)."""
    metrics_port: int = 8080
    """Prometheus /metrics port; 0 disables."""
    health_port: int = 8081
    """Liveness endpoint port (/healthz); 0 disables."""
    verbose: bool = False
    """Debug logging, including one line per Kopf handler run."""


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingError(ValueError):
    """An operator setting (environment variable) is out of range; the message names it."""


@dataclass(frozen=True)
class ConsoleImage:
    """Image of the swarm console Deployments (`spec.rest.enabled`), from the chart's environment:
    $SWARM_CONSOLE_IMAGE (default `swarmlearning/console:0.1.0`) and $SWARM_CONSOLE_IMAGE_PULL_POLICY
    (Always, IfNotPresent or Never; default IfNotPresent)."""

    image: str = "swarmlearning/console:0.1.0"
    pull_policy: str = "IfNotPresent"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleImage:
        env = os.environ if environ is None else environ
        policy = env.get("SWARM_CONSOLE_IMAGE_PULL_POLICY") or cls.pull_policy
        if policy not in PULL_POLICIES:
            raise SettingError(
                f"SWARM_CONSOLE_IMAGE_PULL_POLICY must be one of {', '.join(PULL_POLICIES)}, got {policy!r}"
            )
        return cls(image=env.get("SWARM_CONSOLE_IMAGE") or cls.image, pull_policy=policy)


def apply(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Configure Kopf for long-lived watches and our event and threading model."""
    # Watch streams can go silent without disconnecting (load balancers, API server restarts). Ask
    # the server to end each watch after 5 minutes so it is re-established regularly ...
    settings.watching.server_timeout = 300
    # ... and give up on the client side a little later if the server does not close it.
    settings.watching.client_timeout = 330
    # A dead TCP connect should fail fast and be retried, not block the watcher.
    settings.watching.connect_timeout = 10
    # A stream delivering nothing (not even bookmarks, sent every ~60 s) for 90 s is dead: reconnect.
    if hasattr(settings.watching, "inactivity_timeout"):
        settings.watching.inactivity_timeout = 90
    # Short API requests (not watches) must not hang a handler forever.
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Reconciles are synchronous (kubernetes client, ledger reads): size the thread pool for them.
    settings.execution.max_workers = config.workers
    # Per-object workers: bounded so a burst of pod events cannot spawn unbounded asyncio tasks.
    settings.queueing.worker_limit = 64
    # We post our own Events on state transitions (kube.post_event); Kopf's own event posting is kept
    # for warnings and errors only (a failed handler), so `kubectl describe` is not flooded.
    settings.posting.level = logging.WARNING
    # Handler progress only in annotations: we use no change handlers, and the CRDs' status schema is
    # ours (kopf's status field exists but stays empty).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="swarmlearning.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="swarmlearning.dev")
    # The core kinds are watched for the cache (handlers/cache.py): only the operator's own children,
    # selected on the server, so other pods and Secrets (tokens, Helm releases) are neither sent nor kept.
    for group, version, plural in CACHED_CORE.values():
        settings.watching.label_selectors[(group, version, plural)] = CHILD_SELECTOR
    # No peering objects: one operator replica, run with --standalone (see docs/operator.md).
    settings.peering.standalone = True
