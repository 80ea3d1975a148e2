"""Part 4: the operator at scale on the test-bed control plane (real kube-apiserver, controller-manager,
scheduler and etcd; kwok simulates the nodes, so pods get scheduled and reach Running but run nothing).

One SwarmNetwork, ``count`` LearningNodes and one SwarmTask over all of them are applied at once. We
measure the time until every child exists (per LearningNode its SL Service and identity Secret, one
task pod per peer) and the task is Running, the operator's peak RSS (VmHWM of its process), and the
API requests served meanwhile (``apiserver_request_total`` from the API server's /metrics, before and
after, minus the requests this benchmark's own polling made). The delta counts every client: the
operator and the reactions it causes in the scheduler, controller-manager and kwok.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.envs import REPO
from bench.procs import free_port, process_group, tail
from bench.results import PartResult, Row, fmt, log

NAMESPACE = "bench-scale"
CRD_DIR = REPO / "crds"


@dataclass(frozen=True)
class OperatorConfig:
    """LearningNode counts to measure, and the limit for one convergence (seconds)."""

    counts: tuple[int, ...] = (100, 500)
    timeout_s: float = 900.0
    poll_s: float = 1.0


def parse_request_total(metrics_text: str) -> int:
    """Sum of every ``apiserver_request_total`` sample in Prometheus text format."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("apiserver_request_total{") or line.startswith("apiserver_request_total "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def manifests(count: int) -> list[dict[str, Any]]:
    """The SwarmNetwork ``net``, LearningNodes ``site-0000``..., and SwarmTask ``train`` over all."""
    api = "swarmlearning.dev/v1alpha1"
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": api,
            "kind": "SwarmNetwork",
            "metadata": {"name": "net"},
            "spec": {"members": 1, "storage": {"persistent": False}},
        },
    ]
    docs += [
        {
            "apiVersion": api,
            "kind": "LearningNode",
            "metadata": {"name": f"site-{i:04d}"},
            "spec": {"network": "net", "data": {"emptyDir": True}},
        }
        for i in range(count)
    ]
    docs.append(
        {
            "apiVersion": api,
            "kind": "SwarmTask",
            "metadata": {"name": "train"},
            "spec": {"network": "net", "peers": count, "sync": {"frequency": 4, "minPeers": 2}},
        }
    )
    return docs


def peak_rss_bytes(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"VmHWM missing from /proc/{pid}/status")


def wait(cond: Callable[[], bool], timeout_s: float, poll_s: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"timed out after {timeout_s:.0f} s waiting for {what}; operator log:\n{tail(log_path)}"
            )
        time.sleep(poll_s)


def run(config: OperatorConfig) -> PartResult:
    try:
        from tests.testbed import testbed_cluster
    except ImportError as exc:
        raise RuntimeError(f"the test bed (tests/testbed) is not importable: {exc}") from exc
    rows = []
    for count in config.counts:
        log(f"operator: starting a fresh test-bed control plane for {count} LearningNodes")
        with testbed_cluster() as cluster:
            rows.append(_measure(cluster, count, config))
    return PartResult(
        "operator",
        tuple(rows),
        summary=tuple(
            f"{r.case}: every child and the task Running after {fmt(r.metrics.get('ready_s'))} s, "
            f"operator peak RSS {fmt(r.metrics.get('peak_rss_MB'))} MB, "
            f"{fmt(r.metrics.get('api_requests'))} API requests"
            for r in rows
        ),
    )


def _measure(cluster: Any, count: int, config: OperatorConfig) -> Row:
    from kubernetes import client
    from kubernetes import config as kconfig

    applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR), check=False)
    if applied.returncode != 0:
        raise RuntimeError(f"kubectl apply -f crds/ failed: {applied.stderr}")
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    cluster.kubectl("create", "namespace", NAMESPACE)
    api_client = kconfig.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    polls = 0

    def task_running() -> bool:
        nonlocal polls
        polls += 1
        obj: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
            "swarmlearning.dev", "v1alpha1", NAMESPACE, "swarmtasks", "train"
        )
        return bool((obj.get("status") or {}).get("phase") == "Running")

    def children_exist() -> bool:
        nonlocal polls
        polls += 3
        services = {s.metadata.name for s in core.list_namespaced_service(NAMESPACE).items if s.metadata}
        secrets = {s.metadata.name for s in core.list_namespaced_secret(NAMESPACE).items if s.metadata}
        pods = [
            p
            for p in core.list_namespaced_pod(NAMESPACE, label_selector="swarmlearning.dev/task=train").items
            if p.metadata and p.metadata.deletion_timestamp is None
        ]
        sites = [f"site-{i:04d}" for i in range(count)]
        return all(f"{s}-sl" in services and f"{s}-identity" in secrets for s in sites) and len(pods) == count

    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp, process_group(Path(tmp)) as group:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "GRPC_VERBOSITY": "ERROR"}
        op = group.start(
            "operator",
            [
                sys.executable,
                "-m",
                "swarm_operator.main",
                "-n",
                NAMESPACE,
                "--metrics-port",
                str(free_port()),
                "--health-port",
                str(free_port()),
                "--ledger-poll-seconds",
                "0",
            ],
            env,
        )
        log_path = Path(tmp) / "operator.log"
        time.sleep(3)
        if op.poll() is not None:
            raise RuntimeError(f"swarm-operator exited with {op.returncode}:\n{tail(log_path)}")
        before = parse_request_total(cluster.kubectl("get", "--raw", "/metrics").stdout)
        t0 = time.perf_counter()
        created = cluster.kubectl(
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            "-",
            input=yaml.safe_dump_all(manifests(count)),
            check=False,
            timeout=600,
        )
        if created.returncode != 0:
            raise RuntimeError(f"kubectl apply of {count} LearningNodes failed: {created.stderr[-2000:]}")
        applied_s = time.perf_counter() - t0
        log(f"operator: {count} LearningNodes + network + task applied in {applied_s:.1f} s")
        wait(task_running, config.timeout_s, config.poll_s, "SwarmTask train Running", log_path)
        running_s = time.perf_counter() - t0
        wait(
            children_exist,
            config.timeout_s,
            config.poll_s,
            f"{count} SL Services, identity Secrets, task pods",
            log_path,
        )
        ready_s = time.perf_counter() - t0
        rss = peak_rss_bytes(op.pid)
        after = parse_request_total(cluster.kubectl("get", "--raw", "/metrics").stdout)
    # Our own requests: the kubectl apply (one per object, plus discovery), the polls, two /metrics reads.
    ours = (count + 2) + polls + 2
    log(
        f"operator: N={count}: ready after {ready_s:.1f} s (task Running at {running_s:.1f} s), "
        f"peak RSS {rss / 2**20:.0f} MB, {after - before - ours} API requests"
    )
    return Row(
        "operator",
        f"{count} LearningNodes",
        {"learning_nodes": count},
        {
            "ready_s": ready_s,
            "task_running_s": running_s,
            "apply_s": applied_s,
            "peak_rss_MB": rss / 2**20,
            "api_requests": after - before - ours,
            "requests_per_node": (after - before - ours) / count,
        },
        "requests: all clients minus this benchmark's own (kubectl apply, polls, metrics reads)",
    )
