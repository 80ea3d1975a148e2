"""SwarmTask children: one pod per selected LearningNode with an SL sidecar and the ML container.

The SL container is a native sidecar (an init container with restartPolicy Always): it starts first,
keeps running beside the ML container and is stopped when the ML program exits, so the pod's phase is
the ML program's outcome. The two share an emptyDir holding the local Unix-socket channel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .. import names
from ..specs import NodeSpec, ObjectRef, TaskSpec
from . import common

SL_MODEL_DIR = "/swarm/models"
SL_METRICS_PORT = 9464
"""The SL container's plain HTTP Prometheus ``/metrics`` (container port ``metrics``; the chart's
PodMonitor scrapes it)."""
SCRATCH_DIR = "/swarm/scratch"
"""The ML container's writable scratch folder (an emptyDir; HPE's ``SCRATCH_DIR``)."""
"""The SL container's model archive: ``swarm-output/<task>/sl-models`` of the site's data volume."""
OUTPUT_SUBDIR = "swarm-output"
"""Directory, inside each site's data volume, holding one sub-directory per task's merged model."""


@dataclass(frozen=True)
class Peer:
    """One selected LearningNode: its identity, spec, and position among the task's peers.

    ``index`` (0-based) of ``count`` follows status.peers, fixed when the task chose its peers, so a
    restarted pod gets the same index (programs use it like torchrun's RANK/WORLD_SIZE, e.g. to pick a
    data share).
    """

    ref: ObjectRef
    spec: NodeSpec
    index: int = 0
    count: int = 1


def pod_labels(task: ObjectRef, spec: TaskSpec, node: str, attempt: int) -> dict[str, str]:
    return common.labels(
        task,
        names.COMPONENT_TASK,
        **{
            names.L_TASK: task.name,
            names.L_NODE: node,
            names.L_NETWORK: spec.network,
            names.L_ATTEMPT: str(attempt),
        },
    )


def task_selector(task: str) -> dict[str, str]:
    return {names.L_TASK: task, names.L_COMPONENT: names.COMPONENT_TASK}


def output_subpath(task: str) -> str:
    return f"{OUTPUT_SUBDIR}/{task}"


SL_LINGER_SECONDS = 60
"""Longest time an SL node keeps serving the final model to slower peers after its ML program ended."""


def sync_env(
    task: ObjectRef, spec: TaskSpec, peer: Peer, sn_endpoints: list[str]
) -> dict[str, str | int | float | bool]:
    """Environment shared by the SL and ML containers: identity, SN endpoints and sync parameters.

    Names are what `python -m swarmlearning.sl` and `SwarmCallback` read (SWARM_*); HPE's SL_* names
    are set too where HPE has them.
    """
    s = spec.sync
    weight = s.node_weightage if s.node_weightage is not None else peer.spec.node_weightage
    return {
        "SWARM_NODE_NAME": peer.ref.name,
        "SWARM_PEER_INDEX": peer.index,
        "SWARM_PEER_COUNT": peer.count,
        "SWARM_ORGANISATION": peer.spec.organisation or peer.ref.namespace,
        "SWARM_NETWORK": spec.network,
        "SWARM_TASK": task.name,
        "SWARM_TRAINING_CONTRACT": spec.contract(task.name),
        "SWARM_SN_ENDPOINTS": ",".join(sn_endpoints),
        "SWARM_CERT_DIR": names.TLS_DIR,
        "SWARM_SL_SOCKET": names.CHANNEL_SOCKET,
        "SWARM_SL_LISTEN": f"0.0.0.0:{peer.spec.port}",
        "SWARM_SL_ADVERTISE_HOST": f"{names.sl_service(peer.ref.name)}.{peer.ref.namespace}.svc",
        "SWARM_LEADER_ELIGIBLE": peer.spec.leader_eligible,
        "SL_MAKE_ME_ADMIN": peer.spec.leader_eligible,
        "SWARM_SYNC_FREQUENCY": s.frequency,
        "SWARM_MIN_PEERS": s.min_peers,
        "SWARM_MAX_PEERS": s.max_peers,
        "SWARM_MERGE_METHOD": s.merge_method,
        "SWARM_MERGE_MODE": s.merge_mode,
        "SWARM_MERGE_FALLBACK": s.merge_fallback,
        "SWARM_SERVER_OPTIMIZER": s.server_optimizer,
        "SWARM_SERVER_LEARNING_RATE": s.server_learning_rate,
        "SWARM_SERVER_MOMENTUM": s.server_momentum,
        "SWARM_TRIM_FRACTION": s.trim_fraction,
        "SWARM_BYZANTINE": s.byzantine,
        "SWARM_USE_ADAPTIVE_SYNC": s.adaptive,
        "SWARM_CHECKIN_MODEL_ON_TRAIN_END": s.checkin_model_on_train_end,
        "SWARM_NODE_WEIGHTAGE": weight,
        "SWARM_TOTAL_EPOCHS": spec.total_epochs,
        "SWARM_QUORUM_TIMEOUT_SECONDS": s.quorum_timeout_seconds,
        "SWARM_FULL_QUORUM_WAIT_SECONDS": s.full_quorum_wait_seconds,
        "SWARM_LEADER_FAILURE_TIMEOUT_SECONDS": s.leader_failure_timeout_seconds,
        "SL_WAIT_FOR_FULL_QUORUM_SECONDS": s.full_quorum_wait_seconds,
        "SL_LEADER_FAILURE_BASE_TIMEOUT": s.leader_failure_timeout_seconds,
        "SWARM_SITE_DP_CLIP_NORM": spec.privacy.clip_norm,
        "SWARM_SITE_DP_NOISE_MULTIPLIER": spec.privacy.noise_multiplier,
        "SWARM_SITE_DP_DELTA": spec.privacy.delta,
        "SWARM_SITE_DP_EPSILON_BUDGET": spec.privacy.epsilon_budget,
        "SWARM_SITE_DP_ON_BUDGET_SPENT": spec.privacy.on_budget_spent,
        "SWARM_SECURE_AGGREGATION": spec.privacy.secure_aggregation,
        "SWARM_SECAGG_THRESHOLD": spec.privacy.threshold,
        "SWARM_MODEL_OUTPUT": spec.model_output_path,
        "SWARM_DATA_DIR": peer.spec.data.mount_path,
    }


def hpe_ml_env(spec: TaskSpec, peer: Peer) -> dict[str, Any]:
    """The variables HPE's ML containers get, which its users' scripts read (``os.getenv('DATA_DIR')``
    …): the site's data, the model output folder, a scratch folder, the epochs and the quorum size."""
    env: dict[str, Any] = {
        "DATA_DIR": peer.spec.data.mount_path,
        "MODEL_DIR": spec.model_output_path,
        "SCRATCH_DIR": SCRATCH_DIR,
        "MIN_PEERS": spec.sync.min_peers,
        "NODE_ID": peer.ref.name,
    }
    if spec.total_epochs:
        env["MAX_EPOCHS"] = spec.total_epochs
    return env


def ml_resources(spec: TaskSpec, peer: Peer) -> dict[str, Any]:
    """ML resources: the task's, else the LearningNode's; GPUs as limits of the node's resource name."""
    resources = copy.deepcopy(spec.resources if spec.resources is not None else peer.spec.resources)
    gpus = spec.gpus if spec.gpus is not None else peer.spec.gpus
    if gpus > 0:
        # Extended resources are limits only; the scheduler uses the limit as the request. A request
        # given in spec.resources must equal it, or the API server refuses the pod.
        resources.setdefault("limits", {})[peer.spec.gpu_resource_name] = str(gpus)
        if peer.spec.gpu_resource_name in resources.get("requests", {}):
            resources["requests"][peer.spec.gpu_resource_name] = str(gpus)
    return resources


def data_volume(peer: Peer) -> dict[str, Any]:
    """The site's data volume. Writable at volume level: the model output is a writable sub-path of it;
    the data mount itself is read-only per spec.data.readOnly."""
    d = peer.spec.data
    if d.claim_name:
        return {"name": "data", "persistentVolumeClaim": {"claimName": d.claim_name}}
    if d.host_path:
        return {"name": "data", "hostPath": {"path": d.host_path, "type": "Directory"}}
    return {"name": "data", "emptyDir": {}}


def task_pod(
    task: ObjectRef, spec: TaskSpec, peer: Peer, attempt: int, sn_endpoints: list[str]
) -> dict[str, Any]:
    """Pod `<task>-<node>-<attempt>` running the task on one LearningNode.

    restartPolicy Never: the operator applies spec.failurePolicy itself (a new attempt is a new pod, the
    failed one is kept for its logs).
    """
    env = sync_env(task, spec, peer, sn_endpoints)
    downward = [
        {"name": "SWARM_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SWARM_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    channel_mount = {"name": "channel", "mountPath": names.CHANNEL_DIR}
    tmp_mount = {"name": "tmp", "mountPath": "/tmp"}
    sl: dict[str, Any] = {
        "name": "sl",
        "image": peer.spec.sl_image,
        "imagePullPolicy": peer.spec.image_pull_policy,
        "restartPolicy": "Always",  # native sidecar: stopped (SIGTERM) when the ML container exits
        "command": ["python", "-m", "swarmlearning.sl"],
        "ports": [
            {"name": "sl", "containerPort": peer.spec.port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": SL_METRICS_PORT, "protocol": "TCP"},
        ],
        "env": common.env(
            {
                "HOME": "/tmp",
                "SWARM_SL_LINGER_SECONDS": SL_LINGER_SECONDS,
                # A native sidecar that exits on its own is restarted: it waits for the kubelet's SIGTERM.
                "SWARM_SL_STAY_UNTIL_STOPPED": True,
                # Merged models kept on the site's volume: a restarted attempt rejoins and serves from it.
                "SWARM_SL_MODEL_DIR": SL_MODEL_DIR,
                "SWARM_SL_KEEP_ROUND_MODELS": False,
                "SWARM_SL_METRICS_HOST": "0.0.0.0",
                "SWARM_SL_METRICS_PORT": SL_METRICS_PORT,
                **env,
            }
        )
        + downward,
        "securityContext": common.container_security_context(),
        "volumeMounts": [
            channel_mount,
            tmp_mount,
            {"name": "tls", "mountPath": names.TLS_DIR, "readOnly": True},
            {"name": "data", "mountPath": SL_MODEL_DIR, "subPath": f"{output_subpath(task.name)}/sl-models"},
        ],
    }
    ml: dict[str, Any] = {
        "name": "ml",
        "image": spec.image or peer.spec.ml_image,
        "imagePullPolicy": peer.spec.image_pull_policy,
        "env": common.env({"HOME": "/tmp", **hpe_ml_env(spec, peer), **env})
        + downward
        + common.env(dict(spec.env)),
        # A failed program's log tail becomes its termination message: the task's Failed condition quotes it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": common.container_security_context(),
        "volumeMounts": [
            channel_mount,
            tmp_mount,
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            {"name": "data", "mountPath": peer.spec.data.mount_path, "readOnly": peer.spec.data.read_only},
            {"name": "data", "mountPath": spec.model_output_path, "subPath": output_subpath(task.name)},
        ],
    }
    if spec.command:
        ml["command"] = list(spec.command)
    if spec.args:
        ml["args"] = list(spec.args)
    if spec.working_dir:
        ml["workingDir"] = spec.working_dir
    resources = ml_resources(spec, peer)
    if resources:
        ml["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # After the ML program ends, the SL sidecar defers SIGTERM until every peer has the final model
        # (at most SL_LINGER_SECONDS): the grace period must outlast that, or the kubelet kills it.
        "terminationGracePeriodSeconds": SL_LINGER_SECONDS + 30,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": common.pod_security_context(),
        "initContainers": [sl],
        "containers": [ml],
        "volumes": [
            {"name": "channel", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "tls",
                "secret": {"secretName": names.identity_secret(peer.ref.name), "defaultMode": 0o440},
            },
            data_volume(peer),
        ],
    }
    if peer.spec.node_selector:
        pod_spec["nodeSelector"] = dict(peer.spec.node_selector)
    if peer.spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in peer.spec.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": common.metadata(
            names.task_pod(task.name, peer.ref.name, attempt),
            task,
            pod_labels(task, spec, peer.ref.name, attempt),
            annotations={f"{names.GROUP}/contract": spec.contract(task.name)},
        ),
        "spec": pod_spec,
    }


def model_location(task: str, peer: Peer, k8s_node: str | None) -> str | None:
    """Where a peer's merged model is kept after its pod ended, or None when it is not kept (emptyDir).

    `pvc://<claim>/<subpath>` or `hostpath://<kubernetes-node>/<path>`; `swarmctl model fetch` reads both.
    """
    d = peer.spec.data
    if d.claim_name:
        return f"pvc://{d.claim_name}/{output_subpath(task)}"
    if d.host_path and k8s_node:
        return f"hostpath://{k8s_node}{d.host_path.rstrip('/')}/{output_subpath(task)}"
    return None


def node_pods_selector(node: str) -> dict[str, str]:
    """Selects every task pod (any task, any attempt) that ran or runs on LearningNode `node`."""
    return {names.L_NODE: node, names.L_COMPONENT: names.COMPONENT_TASK}
