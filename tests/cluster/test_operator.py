"""The operator against a real control plane (kube-apiserver, controller-manager with its garbage
collector, scheduler; kwok simulates the nodes, so pods are scheduled and Running but run nothing).

Pod outcomes are driven by patching `status.phase` through the pods/status subresource, which is what
a kubelet would report when the ML program exits.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from swarm_operator import names
from swarm_operator.kube import Kube
from swarmlearning import pki

from tests.cluster.operator_harness import (  # noqa: F401 (fixtures)
    OperatorProcess,
    events,
    kube_fixture,
    operator_fixture,
    wait_for,
)
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

T = 60.0
"""Seconds any single convergence may take (normally 1-5 s on the test bed)."""


def apply(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def network(name: str = "net", **spec: Any) -> dict[str, Any]:
    spec.setdefault("storage", {"persistent": False})  # the test bed has no volume provisioner
    return {"apiVersion": names.API_VERSION, "kind": "SwarmNetwork", "metadata": {"name": name}, "spec": spec}


def node(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("network", "net")
    spec.setdefault("data", {"emptyDir": True})
    return {
        "apiVersion": names.API_VERSION,
        "kind": "LearningNode",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def task(name: str, peers: int = 2, min_peers: int = 2, **spec: Any) -> dict[str, Any]:
    spec.setdefault("network", "net")
    spec.update(peers=peers, sync={"frequency": 4, "minPeers": min_peers, **spec.pop("sync", {})})
    return {"apiVersion": names.API_VERSION, "kind": "SwarmTask", "metadata": {"name": name}, "spec": spec}


def status(kube: Kube, plural: str, ns: str, name: str) -> dict[str, Any]:
    obj = kube.get_custom(plural, ns, name)
    return (obj or {}).get("status") or {}


def phase_is(kube: Kube, plural: str, ns: str, name: str, phase: str) -> Any:
    s = status(kube, plural, ns, name)
    return s if s.get("phase") == phase else None


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def pods(kube: Kube, ns: str, **labels: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.find("Pod", ns, labels)}


def task_pods(kube: Kube, ns: str, task_name: str) -> dict[str, dict[str, Any]]:
    return {
        n: p
        for n, p in pods(kube, ns, **{names.L_TASK: task_name}).items()
        if not p["metadata"].get("deletionTimestamp")
    }


def set_phase(kube: Kube, ns: str, pod: str, phase: str) -> None:
    kube.patch_status("Pod", ns, pod, {"phase": phase})


def owner_uid(obj: dict[str, Any]) -> str:
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["controller"] is True
    return str(ref["uid"])


def ready_network(cluster: Cluster, kube: Kube, ns: str, op: OperatorProcess, members: int = 1) -> None:
    apply(cluster, ns, network(members=members))
    wait_for(lambda: phase_is(kube, names.NETWORKS, ns, "net", "Ready"), T, "SwarmNetwork net Ready", op)


# ------------------------------------------------------------------------------ SwarmNetwork


def test_network_creates_members_services_ca_with_owner_refs(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, network(members=3, service={"type": "NodePort"}, rest={"enabled": True}))
    st = wait_for(
        lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "network Ready", operator
    )
    net = kube.get_custom(names.NETWORKS, namespace, "net")
    assert net is not None
    uid = net["metadata"]["uid"]
    assert st["membersReady"] == 3 and st["observedGeneration"] == net["metadata"]["generation"]
    assert st["endpoints"][0] == f"net-sn.{namespace}.svc:30304"
    assert condition(st, "Ready")["status"] == "True" and condition(st, "CAReady")["status"] == "True"

    members = pods(kube, namespace, **{names.L_NETWORK: "net", names.L_COMPONENT: "sn"})
    assert sorted(members) == ["net-sn-0", "net-sn-1", "net-sn-2"]
    for p in members.values():
        assert owner_uid(p) == uid
    cmd0 = members["net-sn-0"]["spec"]["containers"][0]["command"]
    cmd2 = members["net-sn-2"]["spec"]["containers"][0]["command"]
    assert "--join" not in cmd0, "member 0 is the sentinel"
    assert cmd2[cmd2.index("--join") + 1] == (
        f"net-sn-0.net-sn-peers.{namespace}.svc:30304,net-sn-1.net-sn-peers.{namespace}.svc:30304"
    )

    sn = kube.get("Service", namespace, "net-sn")
    headless = kube.get("Service", namespace, "net-sn-peers")
    rest = kube.get("Service", namespace, "net-rest")
    assert sn and headless and rest
    assert sn["spec"]["type"] == "NodePort"
    assert {p["port"] for p in sn["spec"]["ports"]} == {30303, 30304}
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert [p["port"] for p in rest["spec"]["ports"]] == [30306]
    for svc in (sn, headless, rest):
        assert owner_uid(svc) == uid
    ca = kube.get("Secret", namespace, "net-ca")
    assert ca is not None and owner_uid(ca) == uid
    ca_pem = base64.b64decode(ca["data"]["ca.crt"])
    tls = kube.get("Secret", namespace, "net-sn-1-tls")
    assert tls is not None
    info = pki.check_cert(base64.b64decode(tls["data"]["tls.crt"]), ca_pem)
    assert (info.name, info.role) == ("net-sn-1", "sn")
    reasons = [e["reason"] for e in events(kube, namespace, "net")]
    assert "CACreated" in reasons and reasons.count("MemberCreated") == 3 and "NetworkReady" in reasons


def test_network_members_start_in_order_with_persistent_ledger(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """Default storage: a PVC per member. The test bed binds no volumes, so the sentinel stays Pending,
    and no other member may be created before it is ready."""
    apply(cluster, namespace, network(members=3, storage={"persistent": True, "size": "2Gi"}))
    pvc = wait_for(
        lambda: kube.get("PersistentVolumeClaim", namespace, "net-sn-data-0"), T, "PVC of member 0", operator
    )
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod0 = wait_for(lambda: kube.get("Pod", namespace, "net-sn-0"), T, "sentinel pod", operator)
    vol = next(v for v in pod0["spec"]["volumes"] if v["name"] == "data")
    assert vol["persistentVolumeClaim"]["claimName"] == "net-sn-data-0"
    st = wait_for(
        lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Pending"), T, "phase Pending", operator
    )
    assert condition(st, "MembersReady")["reason"] == "WaitingForSentinel"
    # several reconciles later, still only the sentinel
    wait_for(
        lambda: 'swarm_operator_reconciles_total{kind="SwarmNetwork"}' in operator.metrics(), T, "metrics"
    )
    assert kube.get("Pod", namespace, "net-sn-1") is None
    assert kube.get("PersistentVolumeClaim", namespace, "net-sn-data-1") is None


def test_network_scales_up_and_down_highest_ordinal_first(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator, members=1)
    sn = {names.L_NETWORK: "net", names.L_COMPONENT: "sn"}
    apply(cluster, namespace, network(members=3))

    def three_ready() -> bool:
        s = status(kube, names.NETWORKS, namespace, "net")
        return s.get("membersReady") == 3 and s.get("phase") == "Ready"

    wait_for(three_ready, T, "3 ready members", operator)
    assert sorted(pods(kube, namespace, **sn)) == ["net-sn-0", "net-sn-1", "net-sn-2"]
    sentinel_uid = pods(kube, namespace, **sn)["net-sn-0"]["metadata"]["uid"]

    apply(cluster, namespace, network(members=1))
    wait_for(
        lambda: (
            [n for n, p in pods(kube, namespace, **sn).items() if not p["metadata"].get("deletionTimestamp")]
            == ["net-sn-0"]
        ),
        T,
        "members 1 and 2 removed",
        operator,
    )
    st = wait_for(
        lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "Ready with 1", operator
    )
    assert st["membersReady"] == 1
    assert pods(kube, namespace, **sn)["net-sn-0"]["metadata"]["uid"] == sentinel_uid, "the sentinel stays"
    removed = [e["message"] for e in events(kube, namespace, "net") if e["reason"] == "MemberRemoved"]
    assert [m.rsplit(" ", 1)[-1] for m in removed] == ["2", "1"], removed
    wait_for(
        lambda: kube.get("Secret", namespace, "net-sn-2-tls") is None, T, "certificate of member 2 deleted"
    )


def test_joining_network_has_no_sentinel(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    remote = ["sn.other-site.example:30304", "10.1.2.3:30304"]
    apply(cluster, namespace, network(members=2, join={"endpoints": remote}))
    wait_for(lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "network Ready", operator)
    for i in (0, 1):
        cmd = kube.get("Pod", namespace, f"net-sn-{i}")["spec"]["containers"][0]["command"]  # type: ignore[index]
        assert cmd[cmd.index("--join") + 1] == ",".join(remote), f"member {i} joins the remote swarm"
        assert "--provision" not in cmd


def test_lost_sentinel_is_replaced_by_a_member_joining_the_others(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator, members=3)
    old_uid = kube.get("Pod", namespace, "net-sn-0")["metadata"]["uid"]  # type: ignore[index]
    kube.delete("Pod", namespace, "net-sn-0")

    def replaced() -> dict[str, Any] | None:
        p = kube.get("Pod", namespace, "net-sn-0")
        return (
            p
            if p and p["metadata"]["uid"] != old_uid and not p["metadata"].get("deletionTimestamp")
            else None
        )

    pod = wait_for(replaced, T, "a new net-sn-0", operator)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--join") + 1] == (
        f"net-sn-1.net-sn-peers.{namespace}.svc:30304,net-sn-2.net-sn-peers.{namespace}.svc:30304"
    ), "a recreated sentinel joins the surviving members instead of bootstrapping a second ledger"
    assert "--provision" not in cmd
    wait_for(lambda: phase_is(kube, names.NETWORKS, namespace, "net", "Ready"), T, "Ready again", operator)
    assert "NetworkDegraded" in [e["reason"] for e in events(kube, namespace, "net")]


# ------------------------------------------------------------------------------ LearningNode


def test_learning_node_gets_identity_and_sl_service(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator)
    apply(cluster, namespace, node("site-a", organisation="hospital-a"))
    st = wait_for(
        lambda: phase_is(kube, names.NODES, namespace, "site-a", "Ready"), T, "node Ready", operator
    )
    assert st["certificateSecret"] == "site-a-identity"
    assert st["endpoint"] == f"site-a-sl.{namespace}.svc:30305"
    ln = kube.get_custom(names.NODES, namespace, "site-a")
    assert ln is not None
    svc = kube.get("Service", namespace, "site-a-sl")
    assert svc is not None and owner_uid(svc) == ln["metadata"]["uid"]
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("sl", 30305)]
    secret = kube.get("Secret", namespace, "site-a-identity")
    ca = kube.get("Secret", namespace, "net-ca")
    assert secret is not None and ca is not None and owner_uid(secret) == ln["metadata"]["uid"]
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    info = pki.check_cert(base64.b64decode(secret["data"]["tls.crt"]), base64.b64decode(ca["data"]["ca.crt"]))
    assert (info.name, info.organisation, info.role) == ("site-a", "hospital-a", "sl")


def test_learning_node_without_network_is_error_and_creates_nothing(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, node("lonely", network="nowhere"))
    st = wait_for(
        lambda: phase_is(kube, names.NODES, namespace, "lonely", "Error"), T, "node Error", operator
    )
    cond = condition(st, "NetworkFound")
    assert cond["status"] == "False" and cond["reason"] == "NetworkNotFound" and "nowhere" in cond["message"]
    wait_for(
        lambda: any(
            e["reason"] == "NetworkNotFound" and e["type"] == "Warning"
            for e in events(kube, namespace, "lonely")
        ),
        T,
        "a NetworkNotFound Event",
    )
    assert kube.get("Service", namespace, "lonely-sl") is None
    assert kube.get("Secret", namespace, "lonely-identity") is None


# ------------------------------------------------------------------------------ SwarmTask


def _start_task(
    cluster: Cluster, kube: Kube, ns: str, op: OperatorProcess, *extra: dict[str, Any], **task_spec: Any
) -> dict[str, dict[str, Any]]:
    ready_network(cluster, kube, ns, op)
    apply(cluster, ns, node("site-a", gpus=1), node("site-b"), *extra)
    for n in ("site-a", "site-b"):
        wait_for(lambda n=n: phase_is(kube, names.NODES, ns, n, "Ready"), T, f"{n} Ready", op)
    apply(cluster, ns, task("train", **task_spec))
    wait_for(lambda: phase_is(kube, names.TASKS, ns, "train", "Running"), T, "task Running", op)

    def two_pods() -> dict[str, dict[str, Any]] | None:
        found = task_pods(kube, ns, "train")
        return found if len(found) == 2 else None

    return wait_for(two_pods, T, "2 task pods", op)


def test_task_runs_one_pod_per_peer_and_succeeds_on_quorum(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    running = _start_task(cluster, kube, namespace, operator)
    swt = kube.get_custom(names.TASKS, namespace, "train")
    assert swt is not None
    assert sorted(running) == ["train-site-a-0", "train-site-b-0"]
    pod = running["train-site-a-0"]
    assert owner_uid(pod) == swt["metadata"]["uid"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["sl"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["ml"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeName"] == "kwok-gpu-node-0", "the GPU request lands on the GPU node"
    st = status(kube, names.TASKS, namespace, "train")
    assert st["peers"] == ["site-a", "site-b"] and st["startTime"]
    for n in ("site-a", "site-b"):
        ln = wait_for(lambda n=n: phase_is(kube, names.NODES, namespace, n, "Training"), T, f"{n} Training")
        assert ln["currentTask"] == "train"

    for name in running:
        set_phase(kube, namespace, name, "Succeeded")
    st = wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "train", "Succeeded"), T, "Succeeded", operator
    )
    assert condition(st, "Complete")["status"] == "True" and st["completionTime"]
    assert {n["name"]: n["phase"] for n in st["nodes"]} == {"site-a": "Succeeded", "site-b": "Succeeded"}
    for n in ("site-a", "site-b"):
        ln = wait_for(lambda n=n: phase_is(kube, names.NODES, namespace, n, "Idle"), T, f"{n} Idle", operator)
        assert "currentTask" not in ln
    assert "Succeeded" in [e["reason"] for e in events(kube, namespace, "train")]


def test_failed_pod_is_restarted_until_max_restarts_then_task_fails(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    running = _start_task(cluster, kube, namespace, operator, failurePolicy={"maxRestarts": 1})
    set_phase(kube, namespace, "train-site-a-0", "Failed")
    wait_for(
        lambda: "train-site-a-1" in task_pods(kube, namespace, "train"), T, "attempt 1 of site-a", operator
    )

    def restarted_once() -> dict[str, Any] | None:
        s = status(kube, names.TASKS, namespace, "train")
        return (
            s if any(n["name"] == "site-a" and n.get("restarts") == 1 for n in s.get("nodes") or ()) else None
        )

    st = wait_for(restarted_once, T, "status.nodes[site-a].restarts == 1", operator)
    assert st["phase"] == "Running"
    assert set(task_pods(kube, namespace, "train")) == {*running, "train-site-a-1"}, "the failed pod is kept"
    set_phase(kube, namespace, "train-site-a-1", "Failed")
    st = wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "train", "Failed"), T, "task Failed", operator
    )
    assert condition(st, "Failed")["reason"] == "QuorumNotReached"
    assert "train-site-a-2" not in task_pods(kube, namespace, "train")
    # the other peer's pod is stopped: a failed task holds no LearningNode
    wait_for(
        lambda: (
            "train-site-b-0" not in task_pods(kube, namespace, "train")
            or task_pods(kube, namespace, "train")["train-site-b-0"]["status"].get("phase") != "Running"
        ),
        T,
        "site-b's pod stopped",
        operator,
    )
    assert "PodRestarted" in [e["reason"] for e in events(kube, namespace, "train")]


def test_fail_task_policy_fails_on_first_pod_failure(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _start_task(cluster, kube, namespace, operator, failurePolicy={"podFailed": "FailTask"}, min_peers=1)
    set_phase(kube, namespace, "train-site-b-0", "Failed")
    st = wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "train", "Failed"), T, "task Failed", operator
    )
    assert condition(st, "Failed")["reason"] == "PodFailed"
    assert "train-site-b-1" not in task_pods(kube, namespace, "train")


def test_deleting_a_task_removes_its_pods(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _start_task(cluster, kube, namespace, operator)
    swt = kube.get_custom(names.TASKS, namespace, "train")
    assert swt is not None and not swt["metadata"].get("finalizers"), "no Kopf finalizer on our objects"
    cluster.kubectl("delete", "swarmtask", "train", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: not pods(kube, namespace, **{names.L_TASK: "train"}),
        T,
        "the garbage collector to delete the task's pods",
        operator,
    )
    # the site holds no task any more (Ready: no pod of any task is left on it)
    wait_for(
        lambda: phase_is(kube, names.NODES, namespace, "site-a", "Ready"), T, "site-a free again", operator
    )


def test_task_naming_a_missing_network_waits_and_creates_nothing(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, task("orphan", network="ghost"))
    st = wait_for(lambda: phase_is(kube, names.TASKS, namespace, "orphan", "Waiting"), T, "Waiting", operator)
    cond = condition(st, "NetworkReady")
    assert cond["reason"] == "NetworkNotFound" and "ghost" in cond["message"]
    wait_for(
        lambda: any(e["reason"] == "NetworkNotFound" for e in events(kube, namespace, "orphan")), T, "Event"
    )
    assert not pods(kube, namespace, **{names.L_TASK: "orphan"})
    assert "peers" not in st


def test_task_with_more_peers_than_nodes_waits_then_runs_when_a_node_appears(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator)
    apply(cluster, namespace, node("site-a"), task("big", peers=2))

    def insufficient() -> dict[str, Any] | None:
        s = phase_is(kube, names.TASKS, namespace, "big", "Waiting")
        return s if s and condition(s, "PeersAssigned").get("reason") == "InsufficientPeers" else None

    st = wait_for(insufficient, T, "Waiting with reason InsufficientPeers", operator)
    assert "only 1 LearningNode" in condition(st, "PeersAssigned")["message"]
    wait_for(
        lambda: any(
            e["reason"] == "InsufficientPeers" and e["type"] == "Warning"
            for e in events(kube, namespace, "big")
        ),
        T,
        "an InsufficientPeers Event",
    )
    assert not pods(kube, namespace, **{names.L_TASK: "big"}), "nothing is created half-way"
    apply(cluster, namespace, node("site-b"))
    wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "big", "Running"),
        T,
        "Running once site-b exists",
        operator,
    )
    assert len(task_pods(kube, namespace, "big")) == 2


def test_a_site_runs_one_task_at_a_time(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator)
    apply(cluster, namespace, node("site-a"))
    wait_for(lambda: phase_is(kube, names.NODES, namespace, "site-a", "Ready"), T, "site-a Ready", operator)
    apply(cluster, namespace, task("one", peers=1, min_peers=1), task("two", peers=1, min_peers=1))

    def one_runs_one_waits() -> tuple[str, str] | None:
        phases = {t: status(kube, names.TASKS, namespace, t).get("phase") for t in ("one", "two")}
        running = [t for t, p in phases.items() if p == "Running"]
        waiting = [t for t, p in phases.items() if p == "Waiting"]
        return (running[0], waiting[0]) if len(running) == 1 and len(waiting) == 1 else None

    first, second = wait_for(one_runs_one_waits, T, "one task Running and the other Waiting", operator)
    cond = condition(status(kube, names.TASKS, namespace, second), "PeersAssigned")
    assert cond["reason"] == "PeersBusy" and "busy: site-a" in cond["message"]
    assert not task_pods(kube, namespace, second)
    (pod,) = task_pods(kube, namespace, first)
    set_phase(kube, namespace, pod, "Succeeded")
    wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, second, "Running"), T, f"{second} Running", operator
    )
    (pod2,) = task_pods(kube, namespace, second)
    assert pod2 == f"{second}-site-a-0"


def test_prerequisites_hold_a_task_until_they_succeed(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator)
    apply(
        cluster,
        namespace,
        node("site-a"),
        task("first", peers=1, min_peers=1),
        task("second", peers=1, min_peers=1, prerequisites=["first"]),
    )
    st = wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "second", "Waiting"), T, "second Waiting", operator
    )
    assert condition(st, "PrerequisitesMet")["reason"] in ("PrerequisitesPending",)
    first = wait_for(lambda: task_pods(kube, namespace, "first"), T, "first's pod", operator)
    assert not task_pods(kube, namespace, "second")
    (pod,) = first
    set_phase(kube, namespace, pod, "Succeeded")
    wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "first", "Succeeded"), T, "first Succeeded", operator
    )
    wait_for(lambda: task_pods(kube, namespace, "second"), T, "second's pod after first succeeded", operator)


def test_operator_restart_mid_task_resumes_without_duplicates(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    running = _start_task(cluster, kube, namespace, operator)
    uids = {n: p["metadata"]["uid"] for n, p in running.items()}
    before = status(kube, names.TASKS, namespace, "train")
    operator.stop()
    # while the operator is down, a peer fails
    set_phase(kube, namespace, "train-site-b-0", "Failed")
    operator.start()
    wait_for(lambda: "train-site-b-1" in task_pods(kube, namespace, "train"), T, "site-b restarted", operator)
    # let a few resync passes run, then check nothing was duplicated
    reconciles = 'swarm_operator_reconciles_total{kind="SwarmTask"}'
    wait_for(
        lambda: any(
            line.startswith(reconciles) and float(line.split()[-1]) >= 5
            for line in operator.metrics().splitlines()
        ),
        T,
        "5 task reconciles after restart",
    )
    now = task_pods(kube, namespace, "train")
    assert set(now) == {"train-site-a-0", "train-site-b-0", "train-site-b-1"}
    assert {n: now[n]["metadata"]["uid"] for n in uids} == uids, "the running pods were not recreated"
    st = status(kube, names.TASKS, namespace, "train")
    assert st["peers"] == before["peers"] and st["startTime"] == before["startTime"]
    assert (
        condition(st, "PeersAssigned")["lastTransitionTime"]
        == condition(before, "PeersAssigned")["lastTransitionTime"]
    )
    assert [e["reason"] for e in events(kube, namespace, "train")].count("PeersAssigned") == 1
    for n in ("train-site-a-0", "train-site-b-1"):
        set_phase(kube, namespace, n, "Succeeded")
    st = wait_for(
        lambda: phase_is(kube, names.TASKS, namespace, "train", "Succeeded"), T, "Succeeded", operator
    )
    assert {n["name"]: n["restarts"] for n in st["nodes"]} == {"site-a": 0, "site-b": 1}


def test_metrics_and_health_endpoints(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    ready_network(cluster, kube, namespace, operator)
    text = operator.metrics()
    for metric in (
        "swarm_operator_reconciles_total",
        "swarm_operator_reconcile_duration_seconds_bucket",
        "swarm_operator_tasks",
        "swarm_operator_rounds_completed_total",
        "swarm_operator_network_members_ready",
    ):
        assert metric in text, metric
    assert f'swarm_operator_network_members_ready{{namespace="{namespace}",network="net"}} 1.0' in text
