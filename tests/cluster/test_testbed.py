"""The test bed is a real Kubernetes: pinned versions, scheduling onto kwok nodes, garbage collection,
service-account tokens under RBAC, and helm releases; and its own lifecycle (startup errors, up/down).

Tests that check test-bed specifics (pinned versions, kwok nodes, the GPU node, the lifecycle) skip on an
external cluster (SWARM_TEST_EXISTING_CLUSTER=1), where those facts are not ours to assert.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.testbed import (
    DEFAULT_FAKE_NODES,
    GPU_RESOURCE,
    HELM_VERSION,
    KUBERNETES_VERSION,
    Binaries,
    Cluster,
    ControlPlane,
    TestbedError,
)

pytestmark = pytest.mark.cluster

T = TypeVar("T")
# Seconds to wait for the cluster to act (schedule, simulate a container start, collect garbage).
ACT_TIMEOUT = 60.0
# A real image on real clusters; kwok runs no containers, so the test bed never pulls it.
IMAGE = "registry.k8s.io/pause:3.10"
ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = os.environ.get("SWARM_TEST_EXISTING_CLUSTER") == "1"


def poll(what: str, probe: Callable[[], T | None], timeout: float = ACT_TIMEOUT) -> T:
    """Call ``probe`` every 0.3 s until it returns non-None; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (result := probe()) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)
    return result


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def skip_if_external(cluster: Cluster) -> None:
    if cluster.external:
        pytest.skip("checks a test-bed fact; not asserted on an external cluster")


def pod_spec(name: str, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": IMAGE}
    if resources:
        container["resources"] = resources
    return {"containers": [container], "terminationGracePeriodSeconds": 0}


def test_server_and_kubectl_report_pinned_kubernetes_version(cluster: Cluster) -> None:
    skip_if_external(cluster)
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_helm_reports_pinned_version(cluster: Cluster) -> None:
    skip_if_external(cluster)
    assert cluster.helm("version", "--template", "{{ .Version }}").stdout.strip() == HELM_VERSION


def test_deployment_pod_is_scheduled_and_runs_with_an_ip(cluster: Cluster, namespace: str) -> None:
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec("web")},
            },
        },
    )

    def running_pod() -> dict[str, Any] | None:
        for pod in get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]:
            if pod["status"].get("phase") == "Running" and pod["status"].get("podIP"):
                return pod
        return None

    pod = poll("the Deployment's pod to be Running with a pod IP", running_pod)
    assert pod["spec"]["nodeName"]
    if not cluster.external:
        node = get_json(cluster, "node", pod["spec"]["nodeName"])
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
    # The Deployment controller sees the pod as available (kwok reported it Ready).
    poll(
        "Deployment web to report 1 available replica",
        lambda: (
            True
            if get_json(cluster, "deployment", "web", "-n", namespace)["status"].get("availableReplicas") == 1
            else None
        ),
    )


def test_gpu_requests_are_scheduled_only_where_gpus_fit(cluster: Cluster, namespace: str) -> None:
    skip_if_external(cluster)
    gpu_nodes = {
        n["metadata"]["name"]: int(n["status"]["allocatable"][GPU_RESOURCE])
        for n in get_json(cluster, "nodes")["items"]
        if GPU_RESOURCE in n["status"].get("allocatable", {})
    }
    assert len(gpu_nodes) == 1, f"expected exactly one GPU node, got {gpu_nodes}"
    ((gpu_node, gpus),) = gpu_nodes.items()

    def pod(name: str, count: int) -> dict[str, Any]:
        limits = {GPU_RESOURCE: str(count)}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": pod_spec(name, {"limits": limits, "requests": limits}),
        }

    apply(cluster, namespace, pod("fits", 1), pod("too-big", gpus + 1))
    fits = poll(
        "pod 'fits' (1 GPU) to be Running",
        lambda: (
            p
            if (p := get_json(cluster, "pod", "fits", "-n", namespace))["status"].get("phase") == "Running"
            else None
        ),
    )
    assert fits["spec"]["nodeName"] == gpu_node

    def unschedulable() -> str | None:
        for cond in get_json(cluster, "pod", "too-big", "-n", namespace)["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return str(cond.get("reason"))
        return None

    assert poll(f"the scheduler to reject pod 'too-big' ({gpus + 1} GPUs)", unschedulable) == "Unschedulable"


def test_deleting_an_owner_garbage_collects_its_dependent(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=k=v")
    owner_uid = get_json(cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
            "data": {"k": "v"},
        },
    )
    assert get_json(cluster, "configmap", "dependent", "-n", namespace)["metadata"]["name"] == "dependent"

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    poll(
        "the garbage collector to delete configmap 'dependent' after its owner was deleted",
        lambda: (
            True
            if not cluster.kubectl(
                "get", "configmap", "dependent", "-n", namespace, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            else None
        ),
    )


def test_service_account_token_is_authorized_by_rbac(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    apply(
        cluster,
        namespace,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    token = cluster.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()

    # A kubeconfig with only the token: same server and CA as the admin's, no client certificate.
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    token_config = tmp_path / "reader.kubeconfig"
    token_config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
                "users": [{"name": "reader", "user": {"token": token}}],
                "contexts": [
                    {"name": "c", "context": {"cluster": "c", "user": "reader", "namespace": namespace}}
                ],
                "current-context": "c",
            }
        )
    )

    def as_reader(*args: str) -> Any:
        return cluster.kubectl(f"--kubeconfig={token_config}", *args, check=False)

    whoami = as_reader("auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert (
        json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:reader"
    )

    allowed = as_reader("get", "configmaps", "-o", "name")
    assert allowed.returncode == 0, allowed.stderr
    assert "configmap/kube-root-ca.crt" in allowed.stdout.split()  # published by kube-controller-manager

    forbidden = as_reader("get", "secrets")
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower()
    assert f"system:serviceaccount:{namespace}:reader" in forbidden.stderr


def test_helm_installs_and_uninstalls_a_release(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    cluster.helm(
        "install", "hello", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait", "--timeout=60s"
    )
    data = get_json(cluster, "configmap", "hello-greeting", "-n", namespace)["data"]
    assert data == {"greeting": "hi"}
    assert json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)[0]["status"] == "deployed"

    cluster.helm("uninstall", "hello", "-n", namespace, "--wait", "--timeout=60s")
    assert not cluster.kubectl(
        "get", "configmap", "hello-greeting", "-n", namespace, "--ignore-not-found", "-o", "name"
    ).stdout.strip()


def processes_using(path: Path) -> list[str]:
    """Command lines of running processes that mention ``path`` (the test bed's state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline:
                found.append(cmdline)
    return found


class BrokenApiserverPlane(ControlPlane):
    def _apiserver_argv(self, *args: Any, **kwargs: Any) -> list[str]:
        return [*super()._apiserver_argv(*args, **kwargs), "--no-such-flag"]


@pytest.mark.skipif(EXTERNAL, reason="checks the test bed itself; not run against an external cluster")
def test_a_component_that_fails_to_start_is_named_with_its_log_and_nothing_is_left_running(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    plane = BrokenApiserverPlane(state)
    with pytest.raises(TestbedError) as failure:
        plane.start(timeout=60)
    message = str(failure.value)
    assert "kube-apiserver exited with code" in message
    assert "unknown flag: --no-such-flag" in message  # the tail of kube-apiserver.log
    assert processes_using(state) == []  # etcd, started first, was stopped again
    shutil.rmtree(state)


@pytest.mark.skipif(EXTERNAL, reason="checks the test bed itself; not run against an external cluster")
def test_cli_up_prints_the_kubeconfig_and_down_stops_every_process(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    cli = [sys.executable, "-m", "tests.testbed"]
    try:
        up = subprocess.run(
            [*cli, "up", f"--state-dir={state}"], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stderr
        kubeconfig = state / "admin.kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in up.stdout
        assert len(processes_using(state)) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
        # The processes outlive `up`; the printed kubeconfig reaches the API server.
        nodes = subprocess.run(
            [str(Binaries.in_cache().kubectl), f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        assert sorted(nodes) == sorted(f"node/{n.name}" for n in DEFAULT_FAKE_NODES)
    finally:
        down = subprocess.run(
            [*cli, "down", f"--state-dir={state}"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert "Stopped kwok, kube-scheduler, kube-controller-manager, kube-apiserver, etcd." in down.stdout
    assert processes_using(state) == []
    shutil.rmtree(state)
