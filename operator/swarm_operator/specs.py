"""Typed, validated views of the three custom resources' specs (field contract: docs/api.md).

The API server applies the CRD defaults and most rules; parsing repeats the defaults so builders can be
used on hand-written dicts (tests, dry runs), and rejects what the schema cannot express, with an error
naming the field and the allowed range.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import names


class SpecError(ValueError):
    """A spec field is missing or out of range; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ObjectRef:
    """Identity of a custom resource: what its children's owner references and names derive from."""

    kind: str
    name: str
    namespace: str
    uid: str
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObjectRef:
        meta = body.get("metadata") or {}
        return cls(
            kind=str(body.get("kind", "")),
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
        )


def _int(spec: Mapping[str, Any], key: str, default: int | None, lo: int, hi: int, path: str) -> int:
    value = spec.get(key, default)
    if value is None:
        raise SpecError(f"{path}.{key} is required (an integer {lo}-{hi})")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{path}.{key} must be an integer {lo}-{hi}, got {value!r}")
    return value


def _float(spec: Mapping[str, Any], key: str, default: float, lo: float, hi: float, path: str) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise SpecError(f"{path}.{key} must be a number {lo}-{hi}, got {value!r}")
    return float(value)


def _enum(spec: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...], path: str) -> str:
    value = spec.get(key, default)
    if value not in allowed:
        raise SpecError(f"{path}.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _merge_method(sync: Mapping[str, Any]) -> str:
    """spec.sync.mergeMethod: a built-in, or ``plugin:<name>`` (not a built-in's name)."""
    value = sync.get("mergeMethod", "mean")
    if value in MERGE_METHODS:
        return str(value)
    if not isinstance(value, str) or not PLUGIN_METHOD_RE.match(value) or value[7:] in MERGE_METHODS:
        raise SpecError(
            f"spec.sync.mergeMethod must be one of {', '.join(MERGE_METHODS)} or plugin:<name> (name: "
            "1-63 lower-case letters, digits, '.', '_', '-', starting alphanumeric, not a built-in's), "
            f"got {value!r}"
        )
    return value


def _map(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key} must be an object, got {type(value).__name__}")
    return dict(value)


def default_image(role: str, builtin: str) -> str:
    """Image used when a spec leaves it unset: $SWARM_<ROLE>_IMAGE (set by the chart), else `builtin`.

    The CRDs default these fields server-side, so this applies to objects stored without that default
    (e.g. created before the CRD had it) and to hand-written specs.
    """
    return os.environ.get(f"SWARM_{role.upper()}_IMAGE") or builtin


PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
MERGE_METHODS = ("mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum")
MERGE_MODES = ("auto", "single", "sharded")
MERGE_FALLBACKS = ("none", *MERGE_METHODS)
SERVER_OPTIMIZERS = ("none", "fedavgm")
PLUGIN_METHOD_RE = re.compile(r"^plugin:[a-z0-9][a-z0-9._-]{0,62}$")
"""``mergeMethod: plugin:<name>``: swarmlearning.client.params's rule, repeated (no runtime import)."""
CHECKIN_MODES = ("snapshot", "active", "inactive")
CONTRACT_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
"""The ledger's contract-name rule (swarmlearning.ledger refuses any other name)."""


@dataclass(frozen=True)
class NetworkSpec:
    """SwarmNetwork.spec: the SN members (an etcd cluster). Ports are TCP port numbers."""

    members: int = 1
    image: str = "swarmlearning/sn:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_type: str = "ClusterIP"
    p2p_port: int = names.P2P_PORT
    api_port: int = names.API_PORT
    service_annotations: dict[str, str] = field(default_factory=dict)
    persistent: bool = True
    storage_size: str = "1Gi"
    storage_class: str | None = None
    join_endpoints: tuple[str, ...] = ()
    ca_secret_name: str | None = None
    rest_enabled: bool = False
    rest_port: int = names.REST_PORT
    resources: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> NetworkSpec:
        p = "spec"
        service = _map(spec, "service")
        storage = _map(spec, "storage")
        join = _map(spec, "join")
        ca = _map(spec, "ca")
        rest = _map(spec, "rest")
        endpoints = tuple(str(e) for e in join.get("endpoints") or ())
        for e in endpoints:
            host, sep, port = e.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise SpecError(f"spec.join.endpoints entries must be host:port with port 1-65535, got {e!r}")
        return cls(
            members=_int(spec, "members", 1, 1, 7, p),
            image=str(spec.get("image") or default_image("sn", cls.image)),
            image_pull_policy=_enum(spec, "imagePullPolicy", "IfNotPresent", PULL_POLICIES, p),
            service_type=_enum(service, "type", "ClusterIP", SERVICE_TYPES, "spec.service"),
            p2p_port=_int(service, "p2pPort", names.P2P_PORT, 1, 65535, "spec.service"),
            api_port=_int(service, "apiPort", names.API_PORT, 1, 65535, "spec.service"),
            service_annotations={str(k): str(v) for k, v in (service.get("annotations") or {}).items()},
            persistent=bool(storage.get("persistent", True)),
            storage_size=str(storage.get("size") or "1Gi"),
            storage_class=storage.get("storageClassName") or None,
            join_endpoints=endpoints,
            ca_secret_name=ca.get("secretName") or None,
            rest_enabled=bool(rest.get("enabled", False)),
            rest_port=_int(rest, "port", names.REST_PORT, 1, 65535, "spec.rest"),
            resources=_map(spec, "resources"),
        )


@dataclass(frozen=True)
class DataSource:
    """Where a site's private data comes from: exactly one of claim_name, host_path, empty_dir."""

    claim_name: str | None = None
    host_path: str | None = None
    empty_dir: bool = False
    mount_path: str = "/data"
    read_only: bool = True


@dataclass(frozen=True)
class NodeSpec:
    """LearningNode.spec: one site (SL node + ML container defaults)."""

    network: str
    data: DataSource
    organisation: str | None = None
    sl_image: str = "swarmlearning/sl:0.1.0"
    ml_image: str = "swarmlearning/ml:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    service_type: str = "ClusterIP"
    port: int = names.SL_PORT
    resources: dict[str, Any] = field(default_factory=dict)
    gpus: int = 0
    gpu_resource_name: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    leader_eligible: bool = True
    node_weightage: int = 1

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> NodeSpec:
        p = "spec"
        network = spec.get("network")
        if not network or not isinstance(network, str):
            raise SpecError("spec.network is required: the name of a SwarmNetwork in the same namespace")
        data = _map(spec, "data")
        sources = [k for k in ("claimName", "hostPath") if data.get(k)] + (
            ["emptyDir"] if data.get("emptyDir") else []
        )
        if len(sources) != 1:
            raise SpecError(
                "spec.data must set exactly one of claimName, hostPath, emptyDir"
                f" (got {', '.join(sources) or 'none'})"
            )
        service = _map(spec, "service")
        return cls(
            network=network,
            data=DataSource(
                claim_name=data.get("claimName") or None,
                host_path=data.get("hostPath") or None,
                empty_dir=bool(data.get("emptyDir")),
                mount_path=str(data.get("mountPath") or "/data"),
                read_only=bool(data.get("readOnly", True)),
            ),
            organisation=spec.get("organisation") or None,
            sl_image=str(spec.get("slImage") or default_image("sl", cls.sl_image)),
            ml_image=str(spec.get("mlImage") or default_image("ml", cls.ml_image)),
            image_pull_policy=_enum(spec, "imagePullPolicy", "IfNotPresent", PULL_POLICIES, p),
            service_type=_enum(service, "type", "ClusterIP", SERVICE_TYPES, "spec.service"),
            port=_int(service, "port", names.SL_PORT, 1, 65535, "spec.service"),
            resources=_map(spec, "resources"),
            gpus=_int(spec, "gpus", 0, 0, 16, p),
            gpu_resource_name=str(spec.get("gpuResourceName") or cls.gpu_resource_name),
            node_selector={str(k): str(v) for k, v in _map(spec, "nodeSelector").items()},
            tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
            leader_eligible=bool(spec.get("leaderEligible", True)),
            node_weightage=_int(spec, "nodeWeightage", 1, 1, 100, p),
        )


@dataclass(frozen=True)
class SyncSpec:
    """SwarmTask.spec.sync: HPE SwarmCallback parameters plus our timeouts (seconds)."""

    frequency: int
    min_peers: int
    max_peers: int = 0
    contract: str | None = None
    merge_method: str = "mean"
    merge_mode: str = "auto"
    merge_fallback: str = "none"
    """With a ``plugin:<name>`` merge_method, the built-in merged with when the plugin fails."""
    server_optimizer: str = "none"
    """The round leader's step on the merged update: none or fedavgm (server lr and momentum)."""
    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    trim_fraction: float = 0.1
    byzantine: int = 0
    adaptive: bool = False
    checkin_model_on_train_end: str = "snapshot"
    node_weightage: int | None = None
    full_quorum_wait_seconds: int = 30
    leader_failure_timeout_seconds: int = 600
    quorum_timeout_seconds: int = 1800


@dataclass(frozen=True)
class PrivacySpec:
    """SwarmTask.spec.privacy: site-level DP (``clip_norm`` 0 = off) and secure aggregation."""

    clip_norm: float = 0.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    epsilon_budget: float = 0.0
    on_budget_spent: str = "stop"
    secure_aggregation: bool = False
    threshold: float = 0.0

    @classmethod
    def parse(cls, spec: Mapping[str, Any], merge_method: str, merge_mode: str) -> PrivacySpec:
        privacy = _map(spec, "privacy")
        p = "spec.privacy"
        site = privacy.get("siteDp") or {}
        secagg = privacy.get("secureAggregation") or {}
        if not isinstance(site, Mapping) or not isinstance(secagg, Mapping):
            raise SpecError(f"{p}.siteDp and {p}.secureAggregation must be objects")
        clip = 0.0
        if site:
            clip = _float(site, "clipNorm", 0.0, 0.0, 1e6, f"{p}.siteDp")
            if clip <= 0:
                raise SpecError(f"{p}.siteDp.clipNorm must be a number > 0 (up to 1e6), got {clip!r}")
        delta = _float(site, "delta", 1e-5, 0.0, 0.1, f"{p}.siteDp")
        if delta <= 0:
            raise SpecError(f"{p}.siteDp.delta must be a number in (0, 0.1], got {delta!r}")
        enabled = bool(secagg.get("enabled", False))
        if enabled and merge_method != "mean":
            raise SpecError(
                f"{p}.secureAggregation.enabled needs spec.sync.mergeMethod mean, got {merge_method!r}"
            )
        if enabled and merge_mode == "sharded":
            raise SpecError(f"{p}.secureAggregation.enabled needs spec.sync.mergeMode auto or single")
        threshold = _float(secagg, "threshold", 0.0, 0.0, 1.0, f"{p}.secureAggregation")
        if threshold and threshold < 0.5:
            raise SpecError(f"{p}.secureAggregation.threshold must be 0 (= 2/3) or 0.5-1, got {threshold}")
        return cls(
            clip_norm=clip,
            noise_multiplier=_float(site, "noiseMultiplier", 1.0, 0.1, 100.0, f"{p}.siteDp"),
            delta=delta,
            epsilon_budget=_float(site, "epsilonBudget", 0.0, 0.0, 1e4, f"{p}.siteDp"),
            on_budget_spent=_enum(site, "onBudgetSpent", "stop", ("stop", "warn"), f"{p}.siteDp"),
            secure_aggregation=enabled,
            threshold=threshold,
        )


@dataclass(frozen=True)
class TaskSpec:
    """SwarmTask.spec: one training run."""

    network: str
    peers: int
    sync: SyncSpec
    node_selector: dict[str, Any] = field(default_factory=dict)
    image: str | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    working_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    total_epochs: int = 0
    prerequisites: tuple[str, ...] = ()
    pod_failed: str = "Restart"
    max_restarts: int = 3
    resources: dict[str, Any] | None = None
    gpus: int | None = None
    model_output_path: str = "/data/swarm-output"
    privacy: PrivacySpec = PrivacySpec()

    def contract(self, task_name: str) -> str:
        """The training contract: spec.sync.contract, defaulting to the task name."""
        return self.sync.contract or task_name

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> TaskSpec:
        p = "spec"
        network = spec.get("network")
        if not network or not isinstance(network, str):
            raise SpecError("spec.network is required: the name of a SwarmNetwork in the same namespace")
        sync = spec.get("sync")
        if not isinstance(sync, Mapping):
            raise SpecError("spec.sync is required (at least frequency and minPeers)")
        s = "spec.sync"
        min_peers = _int(sync, "minPeers", None, 1, 1000, s)
        max_peers = _int(sync, "maxPeers", 0, 0, 1000, s)
        if max_peers and max_peers < min_peers:
            raise SpecError(
                f"spec.sync.maxPeers must be 0 (no limit) or >= minPeers ({min_peers}), got {max_peers}"
            )
        peers = _int(spec, "peers", None, 1, 1000, p)
        if peers < min_peers:
            raise SpecError(f"spec.peers must be >= spec.sync.minPeers ({min_peers}), got {peers}")
        weightage = sync.get("nodeWeightage")
        merge_method = _merge_method(sync)
        byzantine = _int(sync, "byzantine", 0, 0, 498, s)
        contract = sync.get("contract") or None
        if contract is not None and not (isinstance(contract, str) and CONTRACT_RE.match(contract)):
            raise SpecError(
                "spec.sync.contract must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and"
                f" ending alphanumeric, got {contract!r}"
            )
        failure = _map(spec, "failurePolicy")
        output = _map(spec, "modelOutput")
        out_path = str(output.get("path") or "/data/swarm-output")
        if not out_path.startswith("/"):
            raise SpecError(f"spec.modelOutput.path must be an absolute path, got {out_path!r}")
        env = []
        for item in spec.get("env") or ():
            if not isinstance(item, Mapping) or not item.get("name"):
                raise SpecError(f"spec.env entries need a name, got {item!r}")
            env.append((str(item["name"]), str(item.get("value", ""))))
        gpus = spec.get("gpus")
        merge_mode = _enum(sync, "mergeMode", "auto", MERGE_MODES, s)
        server_optimizer = _enum(sync, "serverOptimizer", "none", SERVER_OPTIMIZERS, s)
        if server_optimizer != "none" and merge_mode == "sharded":
            raise SpecError(
                f"spec.sync.mergeMode must be auto or single with serverOptimizer {server_optimizer} (its "
                "state is whole-model), got 'sharded'"
            )
        if merge_method.startswith("plugin:") and merge_mode == "sharded":
            raise SpecError(
                "spec.sync.mergeMode must be auto or single for a plugin:<name> mergeMethod (a plugin "
                f"merges whole models on the round's leader), got {merge_mode!r}"
            )
        return cls(
            network=network,
            peers=peers,
            sync=SyncSpec(
                frequency=_int(sync, "frequency", None, 1, 2**31 - 1, s),
                min_peers=min_peers,
                max_peers=max_peers,
                contract=contract,
                merge_method=merge_method,
                merge_mode=merge_mode,
                merge_fallback=_enum(sync, "mergeFallback", "none", MERGE_FALLBACKS, s),
                server_optimizer=server_optimizer,
                server_learning_rate=_float(sync, "serverLearningRate", 1.0, 0.01, 10.0, s),
                server_momentum=_float(sync, "serverMomentum", 0.0, 0.0, 0.99, s),
                trim_fraction=_float(sync, "trimFraction", 0.1, 0.0, 0.49, s),
                byzantine=byzantine,
                adaptive=bool(sync.get("adaptive", False)),
                checkin_model_on_train_end=_enum(
                    sync, "checkinModelOnTrainEnd", "snapshot", CHECKIN_MODES, s
                ),
                node_weightage=None if weightage is None else _int(sync, "nodeWeightage", None, 1, 100, s),
                full_quorum_wait_seconds=_int(sync, "fullQuorumWaitSeconds", 30, 0, 3600, s),
                leader_failure_timeout_seconds=_int(sync, "leaderFailureTimeoutSeconds", 600, 5, 86400, s),
                quorum_timeout_seconds=_int(sync, "quorumTimeoutSeconds", 1800, 10, 86400, s),
            ),
            node_selector=_map(spec, "nodeSelector"),
            image=spec.get("image") or None,
            command=tuple(spec["command"]) if spec.get("command") else None,
            args=tuple(spec["args"]) if spec.get("args") else None,
            working_dir=spec.get("workingDir") or None,
            env=tuple(env),
            total_epochs=_int(spec, "totalEpochs", 0, 0, 2**31 - 1, p),
            prerequisites=tuple(str(x) for x in spec.get("prerequisites") or ()),
            pod_failed=_enum(failure, "podFailed", "Restart", ("Restart", "FailTask"), "spec.failurePolicy"),
            max_restarts=_int(failure, "maxRestarts", 3, 0, 100, "spec.failurePolicy"),
            resources=dict(spec["resources"]) if spec.get("resources") else None,
            gpus=None if gpus is None else _int(spec, "gpus", None, 0, 16, p),
            model_output_path=out_path,
            privacy=PrivacySpec.parse(spec, merge_method, merge_mode),
        )
