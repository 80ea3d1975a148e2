"""The chart installs, and the operator it deploys reconciles the minimal example with the chart's RBAC.

The test bed's kwok nodes run no containers, so the operator pod the chart creates never executes. The
test therefore runs the same program the way that pod would: the Deployment's `command`, `args` and
`env` (read back from the cluster after `helm install`) as a local `swarm-operator` process, whose only
credential is a token of the chart's ServiceAccount. Everything the operator does then passes the API
server's RBAC with exactly the chart's (Cluster)Roles, and any missing rule shows up as a 403 in its log.

The chart watches the test's namespace only (watchNamespaces): an all-namespaces operator would also act
on other tests' namespaces (whose deletion turns writes there into 403s of its own) and, on an existing
cluster, on its users' objects. Both modes render the same rules (`swarm-learning.namespacedRules`), in a
Role or in a ClusterRole; test_chart.py checks the ClusterRole's grants with `kubectl auth can-i`.
The example is applied unchanged: its SwarmNetwork keeps the ledger on a PersistentVolumeClaim, so the
test provides the PersistentVolume a provisioner would (the test bed has none).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from swarm_operator import names
from swarm_operator.kube import Kube

from tests.cluster.operator_harness import (  # noqa: F401 (fixture)
    OperatorProcess,
    free_port,
    kube_fixture,
    wait_for,
)
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "swarm-learning"
EXAMPLE = ROOT / "examples" / "k8s" / "minimal-swarm.yaml"
T = 60.0
"""Seconds any single convergence may take (normally 1-5 s on the test bed)."""
TOKEN_DURATION = "30m"
"""Lifetime of the ServiceAccount token (the API server's minimum is 10 minutes)."""
# An API refusal as the operator, Kopf and the kubernetes client log it ("... is forbidden: ...",
# "HTTP 403", "(403)"); a bare 403 would also match log timestamps' milliseconds.
FORBIDDEN = re.compile(r"forbidden|HTTP 403|\(403\)", re.IGNORECASE)


class DeployedOperator(OperatorProcess):
    """The operator started from a Deployment's container: its argv and env, not the harness's own."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        ports: tuple[int, int],
    ) -> None:
        """`ports`: (metrics, health) as the args give them; `env` is the process's whole environment."""
        super().__init__(kubeconfig, namespace, log_dir)
        self.argv = argv
        self.env = env
        self.metrics_port, self.health_port = ports

    def start(self) -> None:
        assert self.proc is None, "operator already running"
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        wait_for(self._healthy, T, "the operator's /healthz to answer", self)


@dataclass(frozen=True)
class Release:
    """One helm release of the chart and the operator running with its ServiceAccount's token."""

    name: str
    namespace: str
    service_account: str
    container: dict[str, Any]
    operator: DeployedOperator


def container_env(container: dict[str, Any], namespace: str) -> dict[str, str]:
    """The container's env as the kubelet would set it (only the sources the chart uses)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            pytest.fail(f"env {var['name']} of the operator container has a source this test cannot resolve")
    return env


def token_kubeconfig(cluster: Cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig with the test cluster's server and CA and a token of the ServiceAccount as its user."""
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, f"--duration={TOKEN_DURATION}"
    ).stdout.strip()
    assert token, f"kubectl create token {service_account} returned no token"
    view = json.loads(
        cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout
    )
    (entry,) = view["clusters"]
    server = entry["cluster"]["server"]
    ca = entry["cluster"].get("certificate-authority-data")
    assert ca, "the test kubeconfig's cluster has no CA data"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def release(cluster: Cluster, crds: tuple[str, ...], namespace: str, tmp_path: Path) -> Iterator[Release]:
    """`helm install` (watching `namespace`), then the operator from its Deployment, as its ServiceAccount."""
    name = f"cop-{secrets.token_hex(3)}"  # cluster-scoped RBAC objects carry the release name
    fullname = f"{name}-swarm-learning"
    # Free loopback ports as the chart's metrics/health ports: the local process binds what the args say.
    metrics_port, health_port = free_port(), free_port()
    values = [
        f"watchNamespaces={{{namespace}}}",
        f"metrics.port={metrics_port}",
        f"health.port={health_port}",
        # One operator only: the local process stands in for the pod (on a cluster with real nodes the
        # pod would run as well; test_chart.py checks the pod the Deployment creates).
        "replicas=0",
    ]
    sets = [arg for value in values for arg in ("--set", value)]
    cluster.helm("install", name, str(CHART), "-n", namespace, "--skip-crds", "--timeout", "120s", *sets)
    operator: DeployedOperator | None = None
    kubeconfig = tmp_path / "operator.kubeconfig"
    try:
        deployment = json.loads(
            cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout
        )
        pod_spec = deployment["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        service_account = pod_spec["serviceAccountName"]
        kubeconfig = token_kubeconfig(cluster, namespace, service_account, kubeconfig)
        # The console script the image runs, from this venv.
        command = [str(Path(sys.executable).parent / container["command"][0]), *container["command"][1:]]
        assert Path(command[0]).is_file(), f"{command[0]} missing: install the project (pip install -e .)"
        # The pod's environment: the container's env only (plus PATH/HOME a process needs locally).
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        env |= container_env(container, namespace) | {"KUBECONFIG": str(kubeconfig)}
        argv = [*command, *container.get("args", [])]
        operator = DeployedOperator(argv, env, kubeconfig, namespace, tmp_path, (metrics_port, health_port))
        operator.start()
        yield Release(name, namespace, service_account, container, operator)
    finally:
        if operator is not None:
            operator.stop()
        kubeconfig.unlink(missing_ok=True)  # holds the token
        cluster.helm("uninstall", name, "-n", namespace, "--wait", "--timeout", "60s", check=False)


def has_default_storage_class(cluster: Cluster) -> bool:
    classes = json.loads(cluster.kubectl("get", "storageclasses", "-o", "json").stdout)["items"]
    default = "storageclass.kubernetes.io/is-default-class"
    return any(c["metadata"].get("annotations", {}).get(default) == "true" for c in classes)


@pytest.fixture
def ledger_volume(cluster: Cluster, namespace: str) -> Iterator[str | None]:
    """A PersistentVolume pre-bound to the example's SN ledger claim, standing in for the volume
    provisioner the test bed lacks; None on a cluster with a default StorageClass (it provisions one)."""
    if has_default_storage_class(cluster):
        yield None
        return
    name = f"{namespace}-ledger"
    claim = names.sn_pvc("demo", 0)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "hostPath": {"path": f"/var/lib/swarm-test/{name}"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    try:
        yield name
    finally:
        # Deleted once the namespace's deletion has removed the claim (pv-protection).
        cluster.kubectl("delete", "pv", name, "--wait=false", "--ignore-not-found", check=False)


def reconciled(kube: Kube, plural: str, ns: str, name: str, *phases: str) -> dict[str, Any]:
    """The object's status once it is in one of `phases` and reports its current generation, else {}."""
    obj = kube.get_custom(plural, ns, name)
    if obj is None:
        return {}
    st: dict[str, Any] = obj.get("status") or {}
    current = st.get("phase") in phases and st.get("observedGeneration") == obj["metadata"]["generation"]
    return st if current else {}


def conditions(st: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in st.get("conditions") or ()}


def task_pods(kube: Kube, ns: str, task: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.find("Pod", ns, {names.L_TASK: task})}


def test_chart_operator_reconciles_minimal_example_with_chart_rbac(
    cluster: Cluster, kube: Kube, namespace: str, release: Release, ledger_volume: str | None
) -> None:
    op = release.operator
    ns = namespace
    # The process really is the chart's ServiceAccount, and that identity is not an administrator.
    as_sa = ["--kubeconfig", str(op.kubeconfig)]
    whoami = json.loads(cluster.kubectl(*as_sa, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:{release.service_account}"
    can_i = cluster.kubectl(*as_sa, "auth", "can-i", "create", "pods", "-n", "default", check=False)
    assert can_i.stdout.strip() == "no", "the operator's token may create pods outside its namespace"
    assert op.argv[1:] == release.container["args"] and f"--namespace={ns}" in op.argv

    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    assert sorted(d["kind"] for d in docs) == (
        ["LearningNode"] * 3 + ["PersistentVolumeClaim"] * 3 + ["SwarmNetwork", "SwarmTask"]
    )
    # kwok nodes have no volume provisioner: the example's swarm with one SN member (on the pre-bound ledger
    # volume) and scratch data instead of the sites' PVCs. The example as it is runs in tests/e2e.
    swarm_docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
    for d in swarm_docs:
        if d["kind"] == "SwarmNetwork":
            d["spec"]["members"] = 1
        if d["kind"] == "LearningNode":
            d["spec"]["data"] = {"emptyDir": True, "readOnly": False}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(swarm_docs))

    # SwarmNetwork demo: sentinel pod on its ledger volume, Services 30303/30304, CA and member certificate.
    st = wait_for(
        lambda: reconciled(kube, names.NETWORKS, ns, "demo", "Ready"), T, "SwarmNetwork demo Ready", op
    )
    assert st["membersReady"] == 1 and conditions(st)["Ready"] == "True"
    sn_pods = kube.find("Pod", ns, {names.L_NETWORK: "demo", names.L_COMPONENT: names.COMPONENT_SN})
    assert [p["metadata"]["name"] for p in sn_pods] == [names.sn_pod("demo", 0)]
    pvc = kube.get("PersistentVolumeClaim", ns, names.sn_pvc("demo", 0))
    assert pvc is not None and pvc["spec"].get("volumeName"), "the sentinel runs without its ledger volume"
    assert ledger_volume is None or pvc["spec"]["volumeName"] == ledger_volume
    sn = kube.get("Service", ns, names.sn_service("demo"))
    assert sn is not None and {p["port"] for p in sn["spec"]["ports"]} == {30303, names.API_PORT}
    assert kube.get("Service", ns, names.sn_headless("demo")) is not None
    assert kube.get("Secret", ns, names.ca_secret("demo")) is not None
    assert kube.get("Secret", ns, names.sn_tls_secret("demo", 0)) is not None

    # LearningNodes: identity Secret and SL Service each; Ready, or already Training for the task.
    for site in ("site-a", "site-b", "site-c"):
        st = wait_for(
            partial(reconciled, kube, names.NODES, ns, site, "Ready", "Training"),
            T,
            f"{site} Ready",
            op,
        )
        assert st["certificateSecret"] == names.identity_secret(site) and conditions(st)
        svc = kube.get("Service", ns, names.sl_service(site))
        assert svc is not None and [p["port"] for p in svc["spec"]["ports"]] == [names.SL_PORT]
        secret = kube.get("Secret", ns, names.identity_secret(site))
        assert secret is not None and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}

    # SwarmTask digits: one pod per site, Running; then the pods succeed and so does the task.
    st = wait_for(lambda: reconciled(kube, names.TASKS, ns, "digits", "Running"), T, "SwarmTask Running", op)
    assert st["peers"] == ["site-a", "site-b", "site-c"] and conditions(st)["PeersAssigned"] == "True"

    def three_pods() -> dict[str, dict[str, Any]]:
        found = task_pods(kube, ns, "digits")
        return found if len(found) == 3 else {}

    pods = wait_for(three_pods, T, "3 task pods", op)
    assert sorted(pods) == [names.task_pod("digits", s, 0) for s in ("site-a", "site-b", "site-c")]
    for pod in pods:
        kube.patch_status("Pod", ns, pod, {"phase": "Succeeded"})  # what the kubelet reports when ML exits
    st = wait_for(
        lambda: reconciled(kube, names.TASKS, ns, "digits", "Succeeded"), T, "SwarmTask Succeeded", op
    )
    assert conditions(st)["Complete"] == "True"
    for site in ("site-a", "site-b", "site-c"):
        wait_for(partial(reconciled, kube, names.NODES, ns, site, "Idle"), T, f"{site} Idle", op)

    # Every request above passed RBAC with the chart's rules only.
    log = op.log_path.read_text(errors="replace")
    denied = [line for line in log.splitlines() if FORBIDDEN.search(line)]
    assert not denied, "the chart's RBAC refused the operator:\n" + "\n".join(denied[:20])
