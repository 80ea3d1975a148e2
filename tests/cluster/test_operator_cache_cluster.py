"""The operator's cache path against a real control plane: reconciles read from the watch-fed cache.

The operator runs with a resync period far beyond the test, so whatever it does here is driven by watch
events. Its own request counter (`swarm_operator_api_requests_total`, by verb and kind, on /metrics)
shows which requests its reconciles made: a child deleted behind its back is created again from the
DELETED event without a single GET or LIST, and idle objects cost no requests at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from swarm_operator import names
from swarm_operator.kube import Kube

from tests.cluster.operator_harness import (  # noqa: F401 (fixtures)
    OperatorProcess,
    kube_fixture,
    wait_for,
)
from tests.cluster.test_operator import T, apply, network, node, phase_is
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

NO_RESYNC = 3600.0
"""--resync-seconds for these tests: no periodic pass runs while they do."""


@pytest.fixture(name="watch_only_operator")
def watch_only_operator_fixture(
    cluster: Cluster, crds: tuple[str, ...], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path, resync_seconds=NO_RESYNC)
    try:
        op.start()
        yield op
    finally:
        op.stop()


def requests(op: OperatorProcess) -> dict[tuple[str, str], float]:
    """The operator's API requests so far: (verb, kind) -> count."""
    out: dict[tuple[str, str], float] = {}
    for line in op.metrics().splitlines():
        if line.startswith("swarm_operator_api_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels[labels.index("{") + 1 : -1].split(","))
            out[(parts["verb"].strip('"'), parts["kind"].strip('"'))] = float(value)
    return out


def reads(counts: dict[tuple[str, str], float]) -> float:
    return sum(n for (verb, _), n in counts.items() if verb in ("get", "list"))


def test_child_deleted_behind_the_operators_back_is_recreated_from_the_watch_without_reads(
    cluster: Cluster, kube: Kube, namespace: str, watch_only_operator: OperatorProcess
) -> None:
    op = watch_only_operator
    apply(cluster, namespace, network())
    wait_for(
        lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "SwarmNetwork net Ready", op
    )
    apply(cluster, namespace, node("site-a"), node("site-b"))
    for n in ("site-a", "site-b"):
        wait_for(partial(phase_is, kube, names.NODES, namespace, n, "Ready"), T, f"{n} Ready", op)
    svc = kube.get("Service", namespace, "site-a-sl")
    assert svc is not None
    old_uid = svc["metadata"]["uid"]
    # Everything converged: the operator is idle. Wait until its counters stop moving (the last
    # status writes' own watch events may still be reconciled, writing nothing).
    [before] = wait_for(lambda: _settled(op), T, "the operator's request counters to settle", op)

    assert kube.delete("Service", namespace, "site-a-sl")

    def recreated() -> dict[str, Any] | None:
        s = kube.get("Service", namespace, "site-a-sl")
        return s if s is not None and s["metadata"]["uid"] != old_uid else None

    again = wait_for(recreated, T, "Service site-a-sl created again by the operator", op)
    assert again is not None and again["metadata"]["ownerReferences"][0]["name"] == "site-a"
    [after] = wait_for(lambda: _settled(op), T, "the operator's request counters to settle", op)
    made = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    # The re-creation was one create of the Service (its owner read from the cache, no GET/LIST), and
    # site-b, untouched, cost nothing.
    assert made.get(("create", "Service"), 0) == 1, made
    assert reads(made) == 0, f"the operator read from the API server instead of its cache: {made}"


def test_a_second_operator_restart_resumes_from_a_fresh_cache_without_rewriting_status(
    cluster: Cluster, kube: Kube, namespace: str, watch_only_operator: OperatorProcess
) -> None:
    """A restarted operator fills its cache from the initial listing before any reconcile runs: nothing
    converged is created or patched again, and no object is read one by one."""
    op = watch_only_operator
    apply(cluster, namespace, network(), node("site-a"))
    wait_for(lambda: phase_is(kube, names.NODES, namespace, "site-a", "Ready"), T, "site-a Ready", op)
    wait_for(lambda: _settled(op), T, "the operator's request counters to settle", op)
    op.stop()
    op.start()
    [after] = wait_for(lambda: _settled(op), T, "the restarted operator's request counters to settle", op)
    writes = {k: n for k, n in after.items() if k[0] in ("create", "patch", "delete")}
    assert reads(after) == 0 and not writes, f"a restart over converged objects made requests: {after}"


def _settled(op: OperatorProcess) -> list[dict[tuple[str, str], float]]:
    """[the request counters] when two reads 1.5 s apart agree, else [] (poll again)."""
    first = requests(op)
    time.sleep(1.5)
    second = requests(op)
    return [second] if first == second else []
