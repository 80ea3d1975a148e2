"""`swarmctl get|wait|task progress|model fetch` against the real control plane, with the operator running.

The CLI runs as a real subprocess with the test cluster's kubeconfig.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from swarm_operator import names
from swarm_operator.kube import Kube

from tests.cluster.operator_harness import (  # noqa: F401 (fixtures)
    OperatorProcess,
    kube_fixture,
    operator_fixture,
    wait_for,
)
from tests.cluster.test_operator import apply, network, node, phase_is, task, task_pods
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

T = 60.0
SWARMCTL = [sys.executable, "-m", "swarmlearning.cli.swarmctl"]


def swarmctl(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([*SWARMCTL, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _running_task(cluster: Cluster, kube: Kube, ns: str, op: OperatorProcess) -> dict[str, dict[str, object]]:
    apply(cluster, ns, network(), node("site-a", data={"claimName": "site-a-data"}), node("site-b"))
    wait_for(lambda: phase_is(kube, names.NETWORKS, ns, "net", "Ready"), T, "network Ready", op)
    apply(cluster, ns, task("train", sync={"mergeMethod": "geomedian"}))
    wait_for(lambda: phase_is(kube, names.TASKS, ns, "train", "Running"), T, "task Running", op)
    return wait_for(
        lambda: task_pods(kube, ns, "train") if len(task_pods(kube, ns, "train")) == 2 else None,
        T,
        "2 task pods",
        op,
    )


def test_get_lists_status_columns(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _running_task(cluster, kube, namespace, operator)
    nets = swarmctl(cluster, "get", "networks", "-n", namespace)
    assert nets.returncode == 0, nets.stderr
    header, row = nets.stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "MEMBERS", "READY", "HEIGHT", "PHASE"]
    assert row.split()[:5] == ["net", "1", "1", "-", "Ready"]
    assert f"net-sn.{namespace}.svc:30304" in row
    nodes = swarmctl(cluster, "get", "nodes", "-n", namespace)
    assert nodes.returncode == 0, nodes.stderr
    by_name = {line.split()[0]: line.split() for line in nodes.stdout.splitlines()[1:]}
    assert by_name["site-a"][1:4] == ["net", "Training", "train"]
    tasks = swarmctl(cluster, "get", "tasks", "-n", namespace)
    assert tasks.returncode == 0, tasks.stderr
    cols = tasks.stdout.splitlines()[1].split()
    assert cols[:5] == ["train", "net", "Running", "2", "0/2"] and cols[6] == "geomedian"
    empty = swarmctl(cluster, "get", "tasks", "-n", "kube-public")
    assert empty.returncode == 0 and "No tasks found in namespace kube-public." in empty.stdout
    every = swarmctl(cluster, "get", "networks", "-A")
    assert every.returncode == 0 and every.stdout.splitlines()[0].startswith("NAMESPACE")


def test_wait_task_returns_when_succeeded_and_fails_on_timeout(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    pods = _running_task(cluster, kube, namespace, operator)
    short = swarmctl(cluster, "wait", "task", "train", "-n", namespace, "--timeout", "1.5")
    assert short.returncode == 1
    assert "timed out after 1.5s waiting for SwarmTask train to be Succeeded (phase Running" in short.stderr
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    waiter = subprocess.Popen(
        [*SWARMCTL, "wait", "task", "train", "-n", namespace, "--for", "Succeeded", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for name in pods:
            kube.patch_status("Pod", namespace, name, {"phase": "Succeeded"})
        out, err = waiter.communicate(timeout=90)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, err
    assert "SwarmTask train is Succeeded" in out
    # a finished task will not become Failed: the wait says so at once
    other = swarmctl(cluster, "wait", "task", "train", "-n", namespace, "--for", "Failed", "--timeout", "30")
    assert other.returncode == 1 and "ended Succeeded, not Failed" in other.stderr
    missing = swarmctl(cluster, "wait", "task", "nope", "-n", namespace, "--timeout", "5")
    assert missing.returncode == 2 and "SwarmTask nope not found" in missing.stderr


def test_task_progress_and_model_location(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    pods = _running_task(cluster, kube, namespace, operator)
    kube.patch_status("Pod", namespace, "train-site-b-0", {"phase": "Failed"})
    wait_for(lambda: "train-site-b-1" in task_pods(kube, namespace, "train"), T, "site-b restarted", operator)
    prog = swarmctl(cluster, "task", "progress", "train", "-n", namespace)
    assert prog.returncode == 0, prog.stderr
    lines = prog.stdout.splitlines()
    assert lines[0].startswith("task train: phase Running") and "merge geomedian" in lines[0]
    table = {line.split()[0]: line.split() for line in lines if line.startswith("  site-")}
    # site-a's pod waits for its data claim (none exists on the test bed); site-b restarted once
    assert table["site-a"][1] == "Pending" and table["site-b"][1:2] == ["Running"], prog.stdout
    assert table["site-b"][-1] == "1", prog.stdout
    assert "ledger: not read" in prog.stdout
    # no peer succeeded yet: nothing to fetch, and the CLI says why
    early = swarmctl(cluster, "model", "fetch", "train", "-n", namespace, "-o", "/dev/null")
    assert early.returncode == 2 and "has no status.modelLocation" in early.stderr
    for name in ("train-site-a-0", "train-site-b-1"):
        kube.patch_status("Pod", namespace, name, {"phase": "Succeeded"})
    wait_for(lambda: phase_is(kube, names.TASKS, namespace, "train", "Succeeded"), T, "Succeeded", operator)
    done = swarmctl(cluster, "task", "progress", "train", "-n", namespace)
    assert "model: pvc://site-a-data/swarm-output/train" in done.stdout, done.stdout
    assert pods  # the claim-backed site keeps the model; site-b (emptyDir) does not


def test_model_fetch_refuses_emptydir_only_tasks(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    apply(cluster, namespace, network(), node("site-b"))
    wait_for(lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "network Ready", operator)
    apply(cluster, namespace, task("solo", peers=1, min_peers=1))
    (pod,) = wait_for(lambda: task_pods(kube, namespace, "solo"), T, "task pod", operator)
    kube.patch_status("Pod", namespace, pod, {"phase": "Succeeded"})
    wait_for(lambda: phase_is(kube, names.TASKS, namespace, "solo", "Succeeded"), T, "Succeeded", operator)
    out = tmp_path / "model.safetensors"
    res = swarmctl(cluster, "model", "fetch", "solo", "-n", namespace, "-o", str(out))
    assert res.returncode == 2
    assert "emptyDir, which is gone with its pod" in res.stderr
    assert not out.exists()
