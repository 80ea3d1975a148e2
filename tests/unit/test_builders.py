"""Builders produce the expected Kubernetes objects (pure functions; no cluster)."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest
from swarm_operator import names
from swarm_operator.builders import learning_node as lb
from swarm_operator.builders import network as nb
from swarm_operator.builders import task as tb
from swarm_operator.builders.task import Peer
from swarm_operator.specs import NetworkSpec, NodeSpec, ObjectRef, TaskSpec

pytestmark = pytest.mark.unit

K8S_SCHEMA = "1.34.0"

NET = ObjectRef("SwarmNetwork", "net", "ns1", "uid-net", 3)
NODE = ObjectRef("LearningNode", "site-a", "ns1", "uid-node", 1)
TASK = ObjectRef("SwarmTask", "train", "ns1", "uid-task", 2)


def valid(obj: dict[str, Any]) -> None:
    """The manifest passes the Kubernetes 1.34 OpenAPI schema, strictly (no unknown fields)."""
    kubernetes_validate.validate(obj, K8S_SCHEMA, strict=True)


def owned_by(obj: dict[str, Any], owner: ObjectRef) -> None:
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "swarmlearning.dev/v1alpha1",
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert obj["metadata"]["namespace"] == owner.namespace
    assert obj["metadata"]["labels"][names.L_MANAGED_BY] == "swarm-operator"


def hardened(pod: dict[str, Any]) -> None:
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{c['name']} needs a writable /tmp"


# ------------------------------------------------------------------------------------ network


def test_sn_sentinel_pod_ports_command_and_volumes() -> None:
    spec = NetworkSpec.parse({"members": 3})
    pod = nb.sn_pod(NET, spec, 0, join=[])
    valid(pod)
    owned_by(pod, NET)
    hardened(pod)
    assert pod["metadata"]["name"] == "net-sn-0"
    assert pod["metadata"]["labels"][names.L_MEMBER] == "0"
    assert pod["spec"]["hostname"] == "net-sn-0" and pod["spec"]["subdomain"] == "net-sn-peers"
    (c,) = pod["spec"]["containers"]
    assert {(p["name"], p["containerPort"]) for p in c["ports"]} == {("p2p", 30303), ("api", 30304)}
    cmd = c["command"]
    assert cmd[:3] == ["swarmctl", "sn", "start"]
    assert "--join" not in cmd
    assert cmd[cmd.index("--advertise-host") + 1] == "net-sn-0.net-sn-peers.ns1.svc"
    provisioned = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--provision"]
    assert "net-sn-1:sn" in provisioned and "net-sn-6:sn" in provisioned and "net-sn-0:sn" not in provisioned
    assert "swarm-operator:operator" in provisioned
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == "net-sn-data-0"
    assert vols["tls"]["secret"]["secretName"] == "net-sn-0-tls"


def test_sn_joiner_pod_joins_given_endpoints_and_ephemeral_storage() -> None:
    spec = NetworkSpec.parse({"members": 3, "storage": {"persistent": False}})
    pod = nb.sn_pod(NET, spec, 2, join=["a:30304", "b:30304"])
    valid(pod)
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--join") + 1] == "a:30304,b:30304"
    assert "--provision" not in cmd
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_sn_pvc_size_and_class() -> None:
    spec = NetworkSpec.parse({"storage": {"size": "5Gi", "storageClassName": "fast"}})
    pvc = nb.sn_pvc(NET, spec, 1)
    valid(pvc)
    owned_by(pvc, NET)
    assert pvc["metadata"]["name"] == "net-sn-data-1"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "fast"


def test_sn_services_ports_type_and_headless_discovery() -> None:
    spec = NetworkSpec.parse({"service": {"type": "NodePort", "annotations": {"a": "b"}}})
    svc = nb.sn_service(NET, spec)
    valid(svc)
    owned_by(svc, NET)
    assert svc["metadata"]["name"] == "net-sn"
    assert svc["spec"]["type"] == "NodePort"
    assert svc["metadata"]["annotations"] == {"a": "b"}
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("p2p", 30303, "p2p"),
        ("api", 30304, "api"),
    }
    assert svc["spec"]["selector"] == {names.L_NETWORK: "net", names.L_COMPONENT: "sn"}
    headless = nb.sn_headless_service(NET, spec)
    valid(headless)
    assert headless["metadata"]["name"] == "net-sn-peers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert "type" not in headless["spec"]


def test_sn_pods_have_no_rest_port_the_console_serves_it() -> None:
    spec = NetworkSpec.parse({"rest": {"enabled": True}})
    pod = nb.sn_pod(NET, spec, 0, [])
    assert {p["name"] for p in pod["spec"]["containers"][0]["ports"]} == {"p2p", "api"}


def test_ca_secret_holds_cert_and_key() -> None:
    s = nb.ca_secret(NET, "net-ca", b"CERT", b"KEY")
    valid(s)
    owned_by(s, NET)
    assert base64.b64decode(s["data"]["ca.crt"]) == b"CERT"
    assert base64.b64decode(s["data"]["ca.key"]) == b"KEY"


def test_network_endpoints_include_load_balancer_ingress() -> None:
    spec = NetworkSpec.parse({})
    svc = {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "sn.example"}]}}}
    assert nb.endpoints(NET, spec, svc) == ["net-sn.ns1.svc:30304", "1.2.3.4:30304", "sn.example:30304"]


# ------------------------------------------------------------------------------- learning node


def test_sl_service_and_identity_secret() -> None:
    spec = NodeSpec.parse({"network": "net", "data": {"emptyDir": True}, "service": {"type": "LoadBalancer"}})
    svc = lb.sl_service(NODE, spec)
    valid(svc)
    owned_by(svc, NODE)
    assert svc["metadata"]["name"] == "site-a-sl"
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("sl", 30305)]
    assert svc["spec"]["selector"] == {names.L_NODE: "site-a", names.L_COMPONENT: "task-peer"}
    sec = lb.identity_secret(NODE, spec, b"C", b"K", b"CA")
    valid(sec)
    assert sec["metadata"]["name"] == "site-a-identity"
    assert sec["type"] == "kubernetes.io/tls"
    assert set(sec["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert "site-a-sl.ns1.svc" in lb.sl_dns_names(NODE)


# ---------------------------------------------------------------------------------------- task


def _peer(**spec: Any) -> Peer:
    base: dict[str, Any] = {"network": "net", "data": {"claimName": "site-data"}}
    base.update(spec)
    return Peer(NODE, NodeSpec.parse(base))


def _task(**spec: Any) -> TaskSpec:
    base: dict[str, Any] = {"network": "net", "peers": 2, "sync": {"frequency": 8, "minPeers": 2}}
    base.update(spec)
    return TaskSpec.parse(base)


def _containers(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (sl,) = pod["spec"]["initContainers"]
    (ml,) = pod["spec"]["containers"]
    return sl, ml


def _env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def test_task_pod_shape_sidecar_channel_and_volumes() -> None:
    pod = tb.task_pod(TASK, _task(), _peer(), 0, ["net-sn.ns1.svc:30304"])
    valid(pod)
    owned_by(pod, TASK)
    hardened(pod)
    assert pod["metadata"]["name"] == "train-site-a-0"
    labels = pod["metadata"]["labels"]
    assert (
        labels[names.L_TASK] == "train"
        and labels[names.L_NODE] == "site-a"
        and labels[names.L_ATTEMPT] == "0"
    )
    assert pod["spec"]["restartPolicy"] == "Never"
    sl, ml = _containers(pod)
    assert sl["restartPolicy"] == "Always", "the SL node is a native sidecar of the ML container"
    assert sl["command"] == ["python", "-m", "swarmlearning.sl"]
    assert [(p["name"], p["containerPort"]) for p in sl["ports"]] == [("sl", 30305), ("metrics", 9464)]
    # Prometheus /metrics of the SL node on the port the chart's PodMonitor scrapes by name.
    assert (_env(sl)["SWARM_SL_METRICS_HOST"], _env(sl)["SWARM_SL_METRICS_PORT"]) == ("0.0.0.0", "9464")
    sl_mounts = {m["name"]: m for m in sl["volumeMounts"]}
    ml_mounts = {m["name"]: m for m in ml["volumeMounts"]}
    # The local channel: one emptyDir, same path in both containers, and the socket path in both envs.
    assert sl_mounts["channel"]["mountPath"] == ml_mounts["channel"]["mountPath"] == "/var/run/swarm"
    assert _env(sl)["SWARM_SL_SOCKET"] == _env(ml)["SWARM_SL_SOCKET"] == "/var/run/swarm/sl.sock"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["channel"] == {"name": "channel", "emptyDir": {}}
    # Certificates only for the SL container.
    assert vols["tls"]["secret"]["secretName"] == "site-a-identity"
    assert sl_mounts["tls"]["mountPath"] == "/etc/swarm/tls" and sl_mounts["tls"]["readOnly"] is True
    assert "tls" not in ml_mounts
    # Private data read-only for the ML container; the model output is a writable sub-path of it.
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "site-data"}
    data_mounts = [m for m in ml["volumeMounts"] if m["name"] == "data"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in data_mounts
    assert {"name": "data", "mountPath": "/data/swarm-output", "subPath": "swarm-output/train"} in data_mounts
    # The SL container sees only its model archive on the site volume, never the private data.
    assert sl_mounts["data"] == {
        "name": "data",
        "mountPath": "/swarm/models",
        "subPath": "swarm-output/train/sl-models",
    }
    assert _env(sl)["SWARM_SL_MODEL_DIR"] == "/swarm/models"


def test_task_pod_env_carries_sync_parameters() -> None:
    spec = _task(
        sync={
            "frequency": 8,
            "minPeers": 2,
            "maxPeers": 3,
            "mergeMethod": "trimmedmean",
            "trimFraction": 0.2,
            "fullQuorumWaitSeconds": 5,
            "leaderFailureTimeoutSeconds": 60,
            "quorumTimeoutSeconds": 120,
            "adaptive": True,
            "contract": "c1",
        },
        totalEpochs=4,
        env=[{"name": "EPOCHS", "value": "4"}],
    )
    pod = tb.task_pod(TASK, spec, _peer(leaderEligible=False, nodeWeightage=7), 0, ["net-sn.ns1.svc:30304"])
    sl, ml = _containers(pod)
    env = _env(ml)
    assert env["SWARM_SYNC_FREQUENCY"] == "8"
    assert env["SWARM_MIN_PEERS"] == "2" and env["SWARM_MAX_PEERS"] == "3"
    assert env["SWARM_MERGE_METHOD"] == "trimmedmean" and env["SWARM_TRIM_FRACTION"] == "0.2"
    assert env["SWARM_TRAINING_CONTRACT"] == "c1"
    assert env["SWARM_USE_ADAPTIVE_SYNC"] == "true"
    assert env["SWARM_NODE_WEIGHTAGE"] == "7"
    assert env["SWARM_TOTAL_EPOCHS"] == "4"
    assert env["SL_WAIT_FOR_FULL_QUORUM_SECONDS"] == "5"
    assert env["SL_LEADER_FAILURE_BASE_TIMEOUT"] == "60"
    assert env["SWARM_QUORUM_TIMEOUT_SECONDS"] == "120"
    assert env["SL_MAKE_ME_ADMIN"] == "false" and env["SWARM_LEADER_ELIGIBLE"] == "false"
    assert env["SWARM_PEER_INDEX"] == "0" and env["SWARM_PEER_COUNT"] == "1"
    assert ml["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert env["SWARM_MODEL_OUTPUT"] == "/data/swarm-output"
    assert env["EPOCHS"] == "4"
    senv = _env(sl)
    assert senv["SWARM_SN_ENDPOINTS"] == "net-sn.ns1.svc:30304"
    assert senv["SWARM_NODE_NAME"] == "site-a"
    assert senv["SWARM_SL_LISTEN"] == "0.0.0.0:30305"
    assert senv["SWARM_SL_ADVERTISE_HOST"] == "site-a-sl.ns1.svc"
    assert senv["SWARM_CERT_DIR"] == "/etc/swarm/tls"
    # HPE's ML-container conventions, for scripts that read them (os.getenv("DATA_DIR") ...); ML only.
    assert (env["DATA_DIR"], env["MODEL_DIR"]) == ("/data", "/data/swarm-output")
    assert env["SCRATCH_DIR"] == "/swarm/scratch"
    assert (env["MAX_EPOCHS"], env["MIN_PEERS"], env["NODE_ID"]) == ("4", "2", "site-a")
    assert "DATA_DIR" not in senv and "MAX_EPOCHS" not in senv
    assert {"name": "scratch", "mountPath": "/swarm/scratch"} in ml["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {}} in pod["spec"]["volumes"]
    assert "MAX_EPOCHS" not in _env(_containers(tb.task_pod(TASK, _task(), _peer(), 0, []))[1])
    # the task's nodeWeightage overrides the node's
    over = tb.task_pod(TASK, _task(sync={"frequency": 1, "minPeers": 1, "nodeWeightage": 50}), _peer(), 0, [])
    assert _env(_containers(over)[1])["SWARM_NODE_WEIGHTAGE"] == "50"


def test_gpu_limits_rendered_with_configured_resource_name() -> None:
    pod = tb.task_pod(
        TASK, _task(), _peer(gpus=2, gpuResourceName="amd.com/gpu", resources={"limits": {"cpu": "2"}}), 0, []
    )
    valid(pod)
    _, ml = _containers(pod)
    assert ml["resources"]["limits"] == {"cpu": "2", "amd.com/gpu": "2"}


def test_gpu_limits_absent_when_zero() -> None:
    pod = tb.task_pod(TASK, _task(), _peer(resources={"requests": {"memory": "1Gi"}}), 0, [])
    _, ml = _containers(pod)
    assert ml["resources"] == {"requests": {"memory": "1Gi"}}
    assert not any("gpu" in k for part in ml["resources"].values() for k in part)
    bare = tb.task_pod(TASK, _task(), _peer(), 0, [])
    assert "resources" not in _containers(bare)[1]


def test_task_overrides_node_resources_gpus_and_image() -> None:
    peer = _peer(gpus=4, resources={"limits": {"cpu": "8"}}, mlImage="ml:node")
    pod = tb.task_pod(
        TASK,
        _task(
            gpus=0,
            resources={"limits": {"cpu": "1"}},
            image="ml:task",
            command=["python"],
            args=["train.py"],
            workingDir="/app",
        ),
        peer,
        0,
        [],
    )
    _, ml = _containers(pod)
    assert ml["resources"] == {"limits": {"cpu": "1"}}
    assert ml["image"] == "ml:task"
    assert ml["command"] == ["python"] and ml["args"] == ["train.py"] and ml["workingDir"] == "/app"
    default = tb.task_pod(TASK, _task(), peer, 0, [])
    assert _containers(default)[1]["image"] == "ml:node"
    assert _containers(default)[1]["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_task_pod_placement_and_other_data_sources() -> None:
    tol = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    pod = tb.task_pod(
        TASK,
        _task(),
        _peer(
            data={"hostPath": "/srv/site", "mountPath": "/in", "readOnly": False},
            nodeSelector={"zone": "a"},
            tolerations=[tol],
        ),
        3,
        [],
    )
    valid(pod)
    assert pod["metadata"]["name"] == "train-site-a-3"
    assert pod["spec"]["nodeSelector"] == {"zone": "a"}
    assert pod["spec"]["tolerations"] == [tol]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["data"]["hostPath"] == {"path": "/srv/site", "type": "Directory"}
    _, ml = _containers(pod)
    assert {"name": "data", "mountPath": "/in", "readOnly": False} in ml["volumeMounts"]
    empty = tb.task_pod(TASK, _task(), _peer(data={"emptyDir": True}), 0, [])
    assert {v["name"]: v for v in empty["spec"]["volumes"]}["data"] == {"name": "data", "emptyDir": {}}


def test_model_location_per_data_source() -> None:
    assert tb.model_location("train", _peer(), "kwok-node-0") == "pvc://site-data/swarm-output/train"
    assert (
        tb.model_location("train", _peer(data={"hostPath": "/srv/site/"}), "node-1")
        == "hostpath://node-1/srv/site/swarm-output/train"
    )
    assert tb.model_location("train", _peer(data={"emptyDir": True}), "node-1") is None


def test_task_pod_env_is_what_the_callback_reads() -> None:
    """Contract between the operator and the node runtime: the ML container's sync variables are
    exactly the ones SwarmCallback reads, and parse to the task's values."""
    from swarmlearning.client.params import ENV_OVERRIDES, env_overrides

    spec = _task(
        sync={
            "frequency": 8,
            "minPeers": 2,
            "maxPeers": 3,
            "mergeMethod": "krum",
            "mergeMode": "single",
            "mergeFallback": "coordmedian",
            "serverOptimizer": "fedavgm",
            "serverLearningRate": 1.5,
            "serverMomentum": 0.3,
            "byzantine": 1,
            "fullQuorumWaitSeconds": 5,
            "leaderFailureTimeoutSeconds": 60,
            "quorumTimeoutSeconds": 120,
            "adaptive": True,
            "checkinModelOnTrainEnd": "inactive",
            "contract": "c1",
        },
        totalEpochs=4,
        privacy={
            "siteDp": {
                "clipNorm": 1.5,
                "noiseMultiplier": 0.8,
                "delta": 1e-6,
                "epsilonBudget": 8,
                "onBudgetSpent": "warn",
            }
        },
    )
    pod = tb.task_pod(TASK, spec, _peer(nodeWeightage=7), 0, ["net-sn.ns1.svc:30304"])
    _, ml = _containers(pod)
    env = _env(ml)
    rendered = {k for k in env if k.startswith("SWARM_")}
    unset = set(ENV_OVERRIDES) - rendered
    assert not unset, f"callback variables the operator does not set: {sorted(unset)}"
    params = env_overrides(env)
    assert params == {
        "trainingContract": "c1",
        "syncFrequency": 8,
        "minPeers": 2,
        "maxPeers": 3,
        "mergeMethod": "krum",
        "mergeMode": "single",
        "mergeFallback": "coordmedian",
        "trimFraction": 0.1,
        "byzantine": 1,
        "useAdaptiveSync": True,
        "checkinModelOnTrainEnd": "inactive",
        "nodeWeightage": 7,
        "totalEpochs": 4,
        "fullQuorumWaitSeconds": 5.0,
        "leaderFailureTimeoutSeconds": 60.0,
        "quorumTimeoutSeconds": 120.0,
        "siteDpClipNorm": 1.5,
        "siteDpNoiseMultiplier": 0.8,
        "siteDpDelta": 1e-6,
        "siteDpEpsilonBudget": 8.0,
        "siteDpOnBudgetSpent": "warn",
        "secureAggregation": False,
        "secaggThreshold": 0.0,
        "serverOptimizer": "fedavgm",
        "serverLearningRate": 1.5,
        "serverMomentum": 0.3,
    }
    secure = _task(
        sync={"frequency": 8, "minPeers": 2},
        privacy={"secureAggregation": {"enabled": True, "threshold": 0.75}},
    )
    params = env_overrides(
        _env(_containers(tb.task_pod(TASK, secure, _peer(), 0, ["net-sn.ns1.svc:30304"]))[1])
    )
    assert params["secureAggregation"] is True and params["secaggThreshold"] == 0.75, params


def test_task_pod_sl_env_is_what_the_sl_node_reads() -> None:
    """The SL container's variables cover everything `python -m swarmlearning.sl` requires."""
    import re
    from pathlib import Path

    import swarmlearning.sl.main as sl_main

    source = Path(sl_main.__file__).read_text()
    read = set(re.findall(r"\"(SWARM_[A-Z_]+)\"", source)) - {"SWARM_LOG_LEVEL"}
    pod = tb.task_pod(TASK, _task(), _peer(), 0, ["net-sn.ns1.svc:30304"])
    sl, _ = _containers(pod)
    missing = read - set(_env(sl))
    assert not missing, f"SL variables the operator does not set: {sorted(missing)}"


def test_task_pod_grace_period_outlasts_the_sl_linger() -> None:
    """The SL sidecar defers SIGTERM while peers still fetch the final model, for at most its linger;
    the kubelet must not kill it before that."""
    pod = tb.task_pod(TASK, _task(), _peer(), 0, ["net-sn.ns1.svc:30304"])
    sl, _ = _containers(pod)
    linger = int(_env(sl)["SWARM_SL_LINGER_SECONDS"])
    assert linger == tb.SL_LINGER_SECONDS
    assert pod["spec"]["terminationGracePeriodSeconds"] > linger
