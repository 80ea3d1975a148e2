"""`swarm-operator`: runs the Kopf controller (standalone, one replica) with metrics and a liveness probe."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf
import prometheus_client

from . import handlers
from .kube import Kube, ObjectCache
from .ledger_reader import LedgerReader
from .reconcile.context import Context
from .settings import OperatorConfig


def _port(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535 (0 = disabled), got {n}")
    return n


def _positive(value: str) -> float:
    x = float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {x}")
    return x


def parse_args(argv: list[str] | None = None) -> OperatorConfig:
    p = argparse.ArgumentParser(prog="swarm-operator", description=__doc__)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="namespace to watch (repeatable); default: $WATCH_NAMESPACE (comma-separated), "
        "else every namespace",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument(
        "--metrics-port", type=_port, default=8080, help="Prometheus /metrics port, 0 = off (8080)"
    )
    p.add_argument("--health-port", type=_port, default=8081, help="liveness /healthz port, 0 = off (8081)")
    p.add_argument(
        "--resync-seconds", type=_positive, default=30.0, help="period of the full re-reconcile, seconds (30)"
    )
    p.add_argument(
        "--ledger-poll-seconds",
        type=float,
        default=15.0,
        help="min seconds between ledger reads per object; 0 = never read the ledger (15)",
    )
    p.add_argument(
        "--ledger-timeout-seconds", type=_positive, default=3.0, help="one ledger read, seconds (3)"
    )
    p.add_argument("--workers", type=int, default=8, help="reconcile threads, 1-256 (8)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    if not 1 <= a.workers <= 256:
        p.error(f"--workers must be 1-256, got {a.workers}")
    if a.ledger_poll_seconds < 0:
        p.error(f"--ledger-poll-seconds must be >= 0, got {a.ledger_poll_seconds}")
    namespaces = list(a.namespace)
    if not namespaces and not a.all_namespaces and os.environ.get("WATCH_NAMESPACE"):
        namespaces = [n.strip() for n in os.environ["WATCH_NAMESPACE"].split(",") if n.strip()]
    return OperatorConfig(
        verbose=a.verbose,
        namespaces=tuple(namespaces),
        resync_seconds=a.resync_seconds,
        ledger_timeout_seconds=a.ledger_timeout_seconds,
        ledger_poll_seconds=a.ledger_poll_seconds,
        workers=a.workers,
        metrics_port=a.metrics_port,
        health_port=a.health_port,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if config.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not config.verbose:
        # One line per handler run would drown our transition logs; Kopf's warnings and errors stay.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # every liveness probe
    kube = Kube.connect(cache=ObjectCache())
    ledger = None
    if config.ledger_poll_seconds > 0:
        ledger = LedgerReader(
            timeout_s=config.ledger_timeout_seconds, min_interval_s=config.ledger_poll_seconds
        )
    handlers.install(Context(kube=kube, ledger=ledger), config)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    try:
        kopf.run(
            standalone=True,
            namespaces=list(config.namespaces),
            clusterwide=not config.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None,
        )
    finally:
        if ledger is not None:
            ledger.close()
        kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
