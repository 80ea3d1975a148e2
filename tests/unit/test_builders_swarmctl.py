"""Pure parts of `swarmctl`'s cluster commands: tables, progress text, the model-fetch helper pod."""

from __future__ import annotations

import kubernetes_validate
import pytest
from swarmlearning.cli.cluster import ClusterError, helper_pod, parse_location, progress_lines, rows

pytestmark = pytest.mark.unit


def test_model_location_parsing() -> None:
    assert parse_location("pvc://data/swarm-output/t") == ("pvc", "data", "swarm-output/t")
    assert parse_location("hostpath://node-1/srv/x/swarm-output/t") == (
        "hostpath",
        "node-1",
        "srv/x/swarm-output/t",
    )
    for bad in ("", "s3://bucket/x", "pvc://claim-only"):
        with pytest.raises(ClusterError, match="expected pvc://<claim>/<path> or hostpath://<node>/<path>"):
            parse_location(bad)


def test_fetch_helper_pod_mounts_the_model_read_only() -> None:
    pod = helper_pod("t-fetch-1", "ns", "pvc://data/swarm-output/t", "swarmlearning/sl:0.1.0")
    kubernetes_validate.validate(pod, "1.34.0", strict=True)
    (c,) = pod["spec"]["containers"]
    assert c["volumeMounts"] == [
        {"name": "model", "mountPath": "/model", "readOnly": True, "subPath": "swarm-output/t"}
    ]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    host = helper_pod("t-fetch-2", "ns", "hostpath://node-1/srv/x/swarm-output/t", "img")
    kubernetes_validate.validate(host, "1.34.0", strict=True)
    assert host["spec"]["nodeName"] == "node-1"
    assert host["spec"]["volumes"][0]["hostPath"] == {"path": "/srv/x/swarm-output/t", "type": "Directory"}


def test_task_rows_and_progress_text() -> None:
    task = {
        "metadata": {"name": "train", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"network": "net", "peers": 2, "totalEpochs": 5, "sync": {"mergeMethod": "krum"}},
        "status": {
            "phase": "Running",
            "round": 3,
            "nodes": [
                {"name": "a", "phase": "Succeeded", "round": 3, "loss": 0.25, "restarts": 0},
                {"name": "b", "phase": "Running", "round": 2, "restarts": 1},
            ],
            "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning"}],
        },
    }
    table = rows("tasks", [task])
    assert table[0][:4] == ["NAME", "NETWORK", "PHASE", "PEERS"]
    assert table[1][:7] == ["train", "net", "Running", "2", "1/2", "3", "krum"]
    text = progress_lines(task)
    assert text[0] == "task train: phase Running, round 3 (5 epochs), merge krum"
    assert any(line.split()[:5] == ["a", "Succeeded", "3", "0.2500", "-"] for line in text)
    waiting = {
        **task,
        "status": {
            "phase": "Waiting",
            "conditions": [
                {
                    "type": "PeersAssigned",
                    "status": "False",
                    "reason": "InsufficientPeers",
                    "message": "only 1",
                }
            ],
        },
    }
    assert rows("tasks", [waiting])[1][-1] == "InsufficientPeers: only 1"
