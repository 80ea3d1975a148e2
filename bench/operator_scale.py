"""Part 4: the operator at scale on the test-bed control plane (real kube-apiserver, controller-manager,
scheduler and etcd; kwok simulates the nodes, so pods get scheduled and reach Running but run nothing).

One SwarmNetwork, ``count`` LearningNodes and one SwarmTask over all of them (beyond the CRD's 1,000
peers, several tasks that together cover them: ``tasks``) are applied at once. We
measure the time until every child exists (per LearningNode its SL Service and identity Secret, one
task pod per peer) and the task is Running, the operator's peak RSS (VmHWM of its process), and the
API requests served meanwhile, split by client. The API server writes an audit log (level Metadata, one
line per request: user and user agent); each line is attributed by ``client_of`` to the operator (its
own requests say ``swarm-operator/``, its Kopf watches ``kopf/``; the committed baseline's requests say
the kubernetes client's default ``OpenAPI-Generator/``), kwok (the node backend's identity), this
benchmark (kubectl apply and its own polls, user agent ``swarm-bench/``) and the rest (scheduler,
controller-manager, the API server itself).

``baseline_counts``: the same measurement of the operator before its watch-fed cache (``BASELINE_REF``,
per-reconcile GETs and lists; a ``git worktree`` of that commit, run from there by PYTHONPATH), so both
implementations meet the same machine load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.envs import REPO
from bench.procs import free_port, process_group, tail
from bench.results import PartResult, Row, fmt, log

NAMESPACE = "bench-scale"
CRD_DIR = REPO / "crds"
BENCH_USER_AGENT = "swarm-bench/operator-scale"
"""User agent of this benchmark's own polls (kubectl says ``kubectl/``): both count as ``bench``."""
CLIENTS = ("operator", "kwok", "bench", "other")
"""Clients the API requests are split by (``client_of``)."""
BASELINE_REF = "e871f0871d7bf008688e1d0c4753e3d11b3c3380"
"""The last commit whose operator read children with a GET or LIST per reconcile (the cache came next)."""
BASELINE_LABEL = "operator before the cache"


@dataclass(frozen=True)
class OperatorConfig:
    """LearningNode counts to measure with this operator (``counts``) and with the committed one
    (``baseline_counts``, empty = no baseline), the limit for one convergence and the poll period
    (seconds)."""

    counts: tuple[int, ...] = (100, 500, 2000)
    baseline_counts: tuple[int, ...] = (500,)
    timeout_s: float = 900.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        for name, counts in (("counts", self.counts), ("baseline_counts", self.baseline_counts)):
            if any(not 1 <= c <= 10_000 for c in counts):
                raise ValueError(f"OperatorConfig.{name}: every count must be 1-10000, got {counts}")
        if not self.counts:
            raise ValueError("OperatorConfig.counts: give at least one LearningNode count")
        if self.timeout_s <= 0 or self.poll_s <= 0:
            raise ValueError(
                f"OperatorConfig timeout_s and poll_s must be > 0 s, got {self.timeout_s}, {self.poll_s}"
            )


def parse_request_total(metrics_text: str) -> int:
    """Sum of every ``apiserver_request_total`` sample in Prometheus text format."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("apiserver_request_total{") or line.startswith("apiserver_request_total "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def client_of(event: Mapping[str, Any]) -> str:
    """Which client made the request of one audit event: operator, kwok, bench or other."""
    agent = str(event.get("userAgent") or "")
    user = str((event.get("user") or {}).get("username") or "")
    if agent.startswith((BENCH_USER_AGENT, "kubectl/")):
        return "bench"
    if agent.startswith(("swarm-operator/", "kopf/", "OpenAPI-Generator/")):
        return "operator"
    if "node-agent" in user or "kwok" in agent:
        return "kwok"
    return "other"


VERB_CLASS = {
    "get": "reads",
    "list": "reads",
    "watch": "watches",
    "create": "writes",
    "update": "writes",
    "patch": "writes",
    "delete": "writes",
    "deletecollection": "writes",
}


def count_requests(lines: Iterator[str]) -> dict[str, Counter[str]]:
    """Audit log lines (JSON) -> per client: ``requests``, ``reads``/``writes``/``watches`` and per
    ``<verb> <resource>[/<subresource>]`` counts (keys with a space; see :func:`top_requests`).
    Lines that are not audit events (a torn last line) are skipped."""
    out: dict[str, Counter[str]] = {c: Counter() for c in CLIENTS}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("kind") != "Event" or event.get("stage") not in (None, "ResponseComplete", "Panic"):
            continue
        counts = out[client_of(event)]
        counts["requests"] += 1
        counts[VERB_CLASS.get(str(event.get("verb")), "other")] += 1
        ref = event.get("objectRef") or {}
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        counts[f"{event.get('verb')} {ref.get('resource') or '-'}{sub}"] += 1
    return out


def top_requests(counts: Counter[str], count: int, most: int = 6) -> str:
    """The ``most`` commonest kinds of request of one client, per LearningNode: ``create pods 2.00, ...``."""
    kinds = [(k, n) for k, n in counts.most_common() if " " in k][:most]
    return ", ".join(f"{k} {n / count:.2f}" for k, n in kinds)


def manifests(count: int) -> list[dict[str, Any]]:
    """The SwarmNetwork ``net``, LearningNodes ``site-0000``..., and the SwarmTasks of ``tasks`` (one,
    ``train``, over all of them for up to MAX_PEERS)."""
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
    docs += [
        {
            "apiVersion": api,
            "kind": "SwarmTask",
            "metadata": {"name": name},
            "spec": {"network": "net", "peers": peers, "sync": {"frequency": 4, "minPeers": 2}},
        }
        for name, peers in tasks(count)
    ]
    return docs


MAX_PEERS = 1000
"""The CRD's maximum of spec.peers: more LearningNodes are covered by several tasks."""


def tasks(count: int) -> list[tuple[str, int]]:
    """(name, peers) of the tasks that together run on all ``count`` LearningNodes: ``train`` over all
    of them up to MAX_PEERS, else ``train-0``, ``train-1``, ... of at most MAX_PEERS each."""
    if count <= MAX_PEERS:
        return [("train", count)]
    full, rest = divmod(count, MAX_PEERS)
    sizes = [MAX_PEERS] * full + ([rest] if rest else [])
    return [(f"train-{i}", n) for i, n in enumerate(sizes)]


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


@contextmanager
def baseline_checkout() -> Iterator[Path]:
    """A detached ``git worktree`` of BASELINE_REF in a temp dir; removed on exit. RuntimeError when the
    checkout lacks that commit (a shallow clone: fetch the history)."""
    parent = Path(tempfile.mkdtemp(prefix="bench-op-base-"))
    tree = parent / "tree"
    made = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), BASELINE_REF],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if made.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise RuntimeError(
            f"cannot check out the baseline operator {BASELINE_REF[:12]}: {made.stderr.strip()}"
        )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False, capture_output=True)


@contextmanager
def audited_cluster() -> Iterator[tuple[Any, Path]]:
    """A fresh test-bed control plane whose API server writes an audit log: (Cluster, audit log path)."""
    try:
        from tests.testbed import Cluster, ControlPlane
        from tests.testbed.cluster import STATE_DIR_PREFIX
    except ImportError as exc:
        raise RuntimeError(f"the test bed (tests/testbed) is not importable: {exc}") from exc
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX)), audit_log=True)
    try:
        plane.start()
        yield Cluster.for_testbed(plane.kubeconfig, plane.binaries, plane.state_dir), plane.audit_log_path
    finally:
        try:
            plane.stop()
        finally:
            shutil.rmtree(plane.state_dir, ignore_errors=True)


def run(config: OperatorConfig) -> PartResult:
    rows: list[Row] = []
    cases: list[tuple[int, Path | None]] = [(c, None) for c in config.counts]
    with contextlib.ExitStack() as stack:
        if config.baseline_counts:
            base = stack.enter_context(baseline_checkout())
            cases += [(c, base) for c in config.baseline_counts]
        for count, tree in cases:
            label = f"{BASELINE_LABEL} ({BASELINE_REF[:7]})" if tree else "this operator"
            log(f"operator: fresh test-bed control plane for {count} LearningNodes, {label}")
            with audited_cluster() as (cluster, audit):
                rows += _measure(cluster, audit, count, config, tree)
    main = [r for r in rows if "requests_per_node" in r.metrics]
    return PartResult(
        "operator",
        tuple(rows),
        summary=tuple(
            f"{r.case}: every child and the task Running after {fmt(r.metrics.get('ready_s'))} s, "
            f"operator peak RSS {fmt(r.metrics.get('peak_rss_MB'))} MB, "
            f"{fmt(r.metrics.get('operator_requests'))} operator API requests "
            f"({fmt(r.metrics.get('operator_requests_per_node'))} per LearningNode)"
            for r in main
        ),
    )


def _operator_env(cluster: Any, tree: Path | None) -> dict[str, str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "GRPC_VERBOSITY": "ERROR"}
    if tree is not None:
        # The committed package first on sys.path, ahead of the editable install of this checkout.
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "operator"), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    return env


def _measure(cluster: Any, audit: Path, count: int, config: OperatorConfig, tree: Path | None) -> list[Row]:
    from kubernetes import client
    from kubernetes import config as kconfig

    applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR), check=False)
    if applied.returncode != 0:
        raise RuntimeError(f"kubectl apply -f crds/ failed: {applied.stderr}")
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    cluster.kubectl("create", "namespace", NAMESPACE)
    api_client = kconfig.new_client_from_config(config_file=str(cluster.kubeconfig))
    api_client.user_agent = BENCH_USER_AGENT
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)

    def task_running() -> bool:
        for name, _ in tasks(count):
            obj: dict[str, Any] = custom.get_namespaced_custom_object(  # type: ignore[assignment]
                "swarmlearning.dev", "v1alpha1", NAMESPACE, "swarmtasks", name
            )
            if (obj.get("status") or {}).get("phase") != "Running":
                return False
        return True

    def names_of(resp: Any, live_only: bool = False) -> set[str]:
        # Raw JSON: the client's typed models take seconds to build for 2,000 pods, on every poll.
        items = json.loads(resp.data).get("items") or []
        return {
            i["metadata"]["name"] for i in items if not (live_only and i["metadata"].get("deletionTimestamp"))
        }

    def children_exist() -> bool:
        services = names_of(core.list_namespaced_service(NAMESPACE, _preload_content=False))
        secrets = names_of(core.list_namespaced_secret(NAMESPACE, _preload_content=False))
        pods = names_of(
            core.list_namespaced_pod(
                NAMESPACE, label_selector="app.kubernetes.io/component=task-peer", _preload_content=False
            ),
            live_only=True,
        )
        sites = [f"site-{i:04d}" for i in range(count)]
        return all(f"{s}-sl" in services and f"{s}-identity" in secrets for s in sites) and len(pods) == count

    impl = "baseline" if tree is not None else "cache"
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp, process_group(Path(tmp)) as group:
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
            _operator_env(cluster, tree),
        )
        log_path = Path(tmp) / "operator.log"
        time.sleep(3)
        if op.poll() is not None:
            raise RuntimeError(f"swarm-operator exited with {op.returncode}:\n{tail(log_path)}")
        start_offset = audit.stat().st_size
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
        wait(task_running, config.timeout_s, config.poll_s, "every SwarmTask Running", log_path)
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
        end_offset = audit.stat().st_size
    with audit.open("rb") as f:
        f.seek(start_offset)
        chunk = f.read(end_offset - start_offset).decode(errors="replace")
    by_client = count_requests(iter(chunk.splitlines()))
    ops = by_client["operator"]
    log(
        f"operator ({impl}): N={count}: ready after {ready_s:.1f} s (task Running at {running_s:.1f} s), "
        f"peak RSS {rss / 2**20:.0f} MB, requests by client: "
        + ", ".join(f"{c} {by_client[c]['requests']}" for c in CLIENTS)
        + f"; operator per LearningNode: {top_requests(ops, count)}"
    )
    case = f"{count} LearningNodes" + (f", {BASELINE_LABEL}" if tree is not None else "")
    rows = [
        Row(
            "operator",
            case,
            {"learning_nodes": count, "impl": impl},
            {
                "ready_s": ready_s,
                "task_running_s": running_s,
                "apply_s": applied_s,
                "peak_rss_MB": rss / 2**20,
                "operator_requests": ops["requests"],
                "operator_requests_per_node": ops["requests"] / count,
                "requests_per_node": sum(by_client[c]["requests"] for c in CLIENTS) / count,
            },
            "requests from the API server's audit log between the apply and convergence; "
            + (
                f"the {BASELINE_LABEL}, {BASELINE_REF[:7]}, from a git worktree"
                if tree is not None
                else "this checkout"
            ),
        )
    ]
    for c in CLIENTS:
        n = by_client[c]
        rows.append(
            Row(
                "operator",
                f"{case}: requests of {c}",
                {"learning_nodes": count, "impl": impl, "client": c},
                {
                    "requests": n["requests"],
                    "per_node": n["requests"] / count,
                    "reads": n["reads"],
                    "writes": n["writes"],
                    "watches": n["watches"],
                    "top_per_node": top_requests(n, count),
                },
                {
                    "operator": "swarm-operator and its Kopf watches",
                    "kwok": "the node backend: pod and node status",
                    "bench": "kubectl apply and this benchmark's polls",
                    "other": "kube-scheduler, kube-controller-manager, the API server itself",
                }[c],
            )
        )
    return rows


def plot(rows: list[Row] | tuple[Row, ...]) -> Any:
    """Figure of the part (matplotlib, for bench/plots.py's ``_operator``): left, convergence time and
    peak RSS per case; right, API requests per LearningNode by client, stacked. None without rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if isinstance(r.metrics.get("ready_s"), int | float)]
    if not main:
        return None
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r.case.replace(" LearningNodes", " LN") for r in main]
    xs = range(len(main))
    ax_t.bar([x - 0.2 for x in xs], [_num(r, "ready_s") for r in main], 0.4, label="converged (s)")
    ax_t.bar([x + 0.2 for x in xs], [_num(r, "peak_rss_MB") for r in main], 0.4, label="peak RSS (MB)")
    ax_t.axhline(60, color="tab:blue", ls=":", lw=1, label="goal 60 s")
    ax_t.axhline(200, color="tab:orange", ls=":", lw=1, label="goal 200 MB")
    ax_t.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=7)
    ax_t.set_title("operator: time to converge and peak RSS")
    ax_t.legend(fontsize=7)
    bottom = [0.0] * len(main)
    for client in CLIENTS:
        per = []
        for r in main:
            match = [
                x
                for x in rows
                if x.params.get("client") == client
                and x.params.get("learning_nodes") == r.params.get("learning_nodes")
                and x.params.get("impl") == r.params.get("impl")
            ]
            per.append(_num(match[0], "per_node") if match else 0.0)
        ax_r.bar(list(xs), per, 0.6, bottom=bottom, label=client)
        bottom = [b + p for b, p in zip(bottom, per, strict=True)]
    ax_r.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=7)
    ax_r.set_ylabel("API requests per LearningNode")
    ax_r.set_title("requests by client (audit log)")
    ax_r.legend(fontsize=7)
    return fig


def _num(row: Row, key: str) -> float:
    v = row.metrics.get(key)
    return float(v) if isinstance(v, int | float) else 0.0
