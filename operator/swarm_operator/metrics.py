"""Prometheus metrics of the operator (prometheus-client), served by `main` on --metrics-port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("swarm_operator_reconciles_total", "Reconciles run, by kind.", ["kind"])
ERRORS = Counter("swarm_operator_reconcile_errors_total", "Reconciles that raised, by kind.", ["kind"])
LATENCY = Histogram(
    "swarm_operator_reconcile_duration_seconds",
    "Wall time of one reconcile, seconds, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TASKS = Gauge("swarm_operator_tasks", "SwarmTasks by phase (as last observed).", ["phase"])
ROUNDS = Counter(
    "swarm_operator_rounds_completed_total", "Sync rounds seen completed by this operator process, all tasks."
)
TASK_ROUND = Gauge("swarm_operator_task_round", "Latest completed round of a task.", ["namespace", "task"])
NETWORK_MEMBERS_READY = Gauge(
    "swarm_operator_network_members_ready", "Ready SN members of a network.", ["namespace", "network"]
)

API_REQUESTS = Counter(
    "swarm_operator_api_requests_total",
    "Kubernetes API requests of the reconcilers (kube.py; not Kopf's watches), by verb and kind.",
    ["verb", "kind"],
)

_PHASES = ("Pending", "Waiting", "Running", "Succeeded", "Failed")
_lock = threading.Lock()
_task_phase: dict[tuple[str, str], str] = {}
_task_round: dict[tuple[str, str], int] = {}


@contextmanager
def reconcile(kind: str) -> Iterator[None]:
    """Count and time one reconcile of `kind`; an exception counts as an error and propagates."""
    RECONCILES.labels(kind).inc()
    start = time.perf_counter()
    try:
        yield
    except Exception:
        ERRORS.labels(kind).inc()
        raise
    finally:
        LATENCY.labels(kind).observe(time.perf_counter() - start)


def observe_task(namespace: str, name: str, phase: str | None, round_no: int | None) -> None:
    """Record a task's phase and round; phase None = the task is gone."""
    key = (namespace, name)
    with _lock:
        if phase is None:
            _task_phase.pop(key, None)
            _task_round.pop(key, None)
            with suppress(KeyError):
                TASK_ROUND.remove(namespace, name)
        else:
            _task_phase[key] = phase
            if round_no is not None:
                before = _task_round.get(key)
                # The first sighting is a baseline: rounds finished before this process started are not
                # counted again after an operator restart.
                if before is not None and round_no > before:
                    ROUNDS.inc(round_no - before)
                _task_round[key] = round_no
                TASK_ROUND.labels(namespace, name).set(round_no)
        counts = dict.fromkeys(_PHASES, 0)
        for p in _task_phase.values():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            TASKS.labels(p).set(n)


def observe_network(namespace: str, name: str, members_ready: int | None) -> None:
    """Record a network's ready members; None = the network is gone."""
    if members_ready is None:
        with suppress(KeyError):
            NETWORK_MEMBERS_READY.remove(namespace, name)
    else:
        NETWORK_MEMBERS_READY.labels(namespace, name).set(members_ready)
