"""Fuzzing the three custom resources: the API server refuses bad values naming the field, and whatever it
accepts the operator reconciles or reports, never crashes on, never half-builds.

The generator walks each CRD's openAPIV3Schema (crds/*.yaml) together with a complete valid object of
that kind and makes, for every field (nested objects, array items, map keys and values), invalid and odd
values: wrong types, out-of-range numbers, empty/huge strings, spaces, unicode, newlines and NUL, bad
quantities, image references, paths, label keys and values, endpoints; plus hand-written cross-field
cases (selectors, tolerations, data sources, ports, the merge methods' parameters). Deterministic: the
random choices come from one seeded generator (``SWARM_FUZZ_SEED``, default 20261201) and the number of
variants is bounded (``MAX_PER_FIELD`` per field; ``LIVE_LIMIT`` accepted variants run for real).

Phase 1 (admission): every variant is created with a server-side dry run; a refusal must name the field.
Phase 2 (operator): every accepted variant, re-applied onto a runnable object of its kind, is created
for real with the operator running. Each object must settle either reconciled (Ready/Running with all
its children) or reported (a condition with a reason and a message naming a spec field, plus a Warning
Event, and no children or a message saying which child is missing); the operator stays up and logs no
traceback.

The regression tests at the end pin the operator fixes the fuzzing led to (see the report in
docs/api.md's validation section).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from swarm_operator import names
from swarm_operator.kube import Kube, Rejected

from tests.cluster.operator_harness import (  # noqa: F401 (fixtures)
    OperatorProcess,
    events,
    kube_fixture,
    operator_fixture,
    wait_for,
)
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = {
    "SwarmNetwork": ROOT / "crds" / "swarmnetworks.yaml",
    "LearningNode": ROOT / "crds" / "learningnodes.yaml",
    "SwarmTask": ROOT / "crds" / "swarmtasks.yaml",
}
PLURAL = {"SwarmNetwork": names.NETWORKS, "LearningNode": names.NODES, "SwarmTask": names.TASKS}
SEED = int(os.environ.get("SWARM_FUZZ_SEED", "20261201"))
MAX_PER_FIELD = 8
"""Most generated variants per field (chosen by the seeded generator when a field has more)."""
LIVE_LIMIT = 16
"""Most accepted variants per kind that phase 2 creates for real (seeded choice when more)."""
SETTLE_TIMEOUT = 120.0
"""Seconds for every phase-2 object to settle (normally 10-30 s on the test bed)."""
T = 60.0
"""Seconds any single convergence of the regression tests may take."""

PROBE = " (task on it)"
"""Label suffix of the one-peer task phase 2 runs on each accepted LearningNode variant."""
Path_ = tuple[str | int, ...]
DELETE = object()
"""Mutation value meaning: remove the field."""


# ------------------------------------------------------------------------------------------ objects


def obj(kind: str, name: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": names.API_VERSION, "kind": kind, "metadata": {"name": name}}
    if spec is not None:
        out["spec"] = spec
    return out


QTY = {"cpu": "500m", "memory": "512Mi"}
# Complete valid objects: every field of the schema has a value, so every field gets mutated in context.
COMPLETE: dict[str, dict[str, Any]] = {
    "SwarmNetwork": obj(
        "SwarmNetwork",
        "net",
        {
            "members": 3,
            "image": "registry.example:5000/swarm/sn:0.1.0",
            "imagePullPolicy": "IfNotPresent",
            "service": {
                "type": "NodePort",
                "p2pPort": 30303,
                "apiPort": 30304,
                "annotations": {"example.com/lb": "internal"},
            },
            "storage": {"persistent": False, "size": "2Gi", "storageClassName": "standard"},
            "join": {"endpoints": ["sn.example.org:30304"]},
            "ca": {"secretName": "net-ca"},
            "rest": {"enabled": True, "port": 30306},
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": dict(QTY)},
        },
    ),
    "LearningNode": obj(
        "LearningNode",
        "site",
        {
            "network": "net",
            "organisation": "hospital-a",
            "slImage": "swarmlearning/sl:0.1.0",
            "mlImage": "swarmlearning/ml:0.1.0",
            "imagePullPolicy": "Never",
            "service": {"type": "ClusterIP", "port": 30305},
            "data": {"hostPath": "/srv/data", "mountPath": "/data", "readOnly": True},
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": dict(QTY)},
            "gpus": 1,
            "gpuResourceName": "nvidia.com/gpu",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {
                    "key": "nvidia.com/gpu",
                    "operator": "Equal",
                    "value": "present",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                }
            ],
            "leaderEligible": True,
            "nodeWeightage": 2,
        },
    ),
    "SwarmTask": obj(
        "SwarmTask",
        "train",
        {
            "network": "net",
            "type": "RUN_SWARM",
            "nodeSelector": {
                "matchLabels": {"swarmlearning.dev/site": "a"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}],
            },
            "peers": 3,
            "image": "swarmlearning/ml:0.1.0",
            "command": ["python", "-m", "train"],
            "args": ["--epochs", "2"],
            "workingDir": "/app",
            "env": [{"name": "LR", "value": "0.01"}],
            "sync": {
                "frequency": 10,
                "minPeers": 3,
                "maxPeers": 3,
                "contract": "train-v1",
                "mergeMethod": "krum",
                "mergeFallback": "mean",
                "serverOptimizer": "fedavgm",
                "serverLearningRate": 1.5,
                "serverMomentum": 0.3,
                "trimFraction": 0.1,
                "byzantine": 0,
                "adaptive": False,
                "checkinModelOnTrainEnd": "snapshot",
                "nodeWeightage": 1,
                "fullQuorumWaitSeconds": 30,
                "leaderFailureTimeoutSeconds": 600,
                "quorumTimeoutSeconds": 1800,
            },
            "totalEpochs": 2,
            "prerequisites": ["warmup"],
            "failurePolicy": {"podFailed": "Restart", "maxRestarts": 3},
            "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": 1}, "requests": {"cpu": "1"}},
            "gpus": 0,
            "modelOutput": {"path": "/data/swarm-output"},
            # Secure aggregation off: the complete task merges with krum, which it cannot run under.
            "privacy": {
                "siteDp": {
                    "clipNorm": 2.0,
                    "noiseMultiplier": 0.8,
                    "delta": 1e-5,
                    "epsilonBudget": 50,
                    "onBudgetSpent": "warn",
                },
                "secureAggregation": {"enabled": False, "threshold": 0.75},
            },
        },
    ),
}


def live_base(kind: str, name: str) -> dict[str, Any]:
    """The complete object of `kind` made runnable on the kwok test bed (network `net`, no remote join,
    small requests, no prerequisites, peers chosen by the label fuzz-task=<name>): phase 2 applies an
    accepted mutation onto it, so a mutated field keeps the context phase 1 saw."""
    out = copy.deepcopy(COMPLETE[kind])
    out["metadata"]["name"] = name
    spec = out["spec"]
    if kind == NET:
        for key in ("join", "ca"):
            del spec[key]
        spec["members"] = 1
        spec["resources"] = {"requests": {"cpu": "10m"}}
    elif kind == LN:
        spec["data"] = {"emptyDir": True, "mountPath": "/data", "readOnly": True}
        spec["gpus"] = 0
    else:
        spec.update(peers=2, prerequisites=[], nodeSelector={"matchLabels": {"fuzz-task": name}})
        spec["sync"].update(minPeers=2, maxPeers=2, mergeMethod="mean")
        del spec["resources"]
    return out


def runnable(kind: str, name: str, net: str) -> dict[str, Any]:
    """A minimal object the test bed can run (regression tests, the networks and sites of phase 2)."""
    if kind == "SwarmNetwork":
        return obj(kind, name, {"members": 1, "storage": {"persistent": False}})
    if kind == "LearningNode":
        return obj(kind, name, {"network": net, "data": {"emptyDir": True}})
    return obj(
        kind,
        name,
        {
            "network": net,
            "peers": 2,
            "sync": {"frequency": 4, "minPeers": 1},
            "nodeSelector": {"matchLabels": {"fuzz-task": name}},
        },
    )


# ---------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One mutation of one kind: set `path` (from the object root) to `value` (DELETE removes it).

    `field` is what the API server's refusal must name (and `says`, when set, a phrase of the rule that
    must have refused it); `expect` is "refused", "accepted" or "either" (generated odd values may be
    legal)."""

    id: str
    kind: str
    path: Path_
    value: Any
    field: str
    expect: str = "either"
    fixup: Callable[[dict[str, Any]], None] | None = None
    says: str = ""

    def apply(self, base: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        if self.fixup is not None:
            self.fixup(out)
        set_path(out, self.path, self.value)
        return out


def set_path(target: Any, path: Path_, value: Any) -> None:
    """Set (or with DELETE remove) the value at `path`, creating missing dicts and lists on the way."""
    for i, part in enumerate(path[:-1]):
        nxt: Any = [] if isinstance(path[i + 1], int) else {}
        if isinstance(part, int):
            while len(target) <= part:
                target.append(copy.deepcopy(nxt))
            if not isinstance(target[part], type(nxt)):
                target[part] = nxt
        elif not isinstance(target.get(part), type(nxt)):
            target[part] = nxt
        target = target[part]
    last = path[-1]
    if value is DELETE:
        if isinstance(last, int):
            del target[last]
        else:
            target.pop(last, None)
    elif isinstance(last, int):
        while len(target) <= last:
            target.append(None)
        target[last] = copy.deepcopy(value)
    else:
        target[last] = copy.deepcopy(value)


def render(path: Path_) -> str:
    """The field path as the API server writes it: `spec.join.endpoints[0]`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def get_path(target: Any, path: Path_) -> Any:
    for part in path:
        target = target[part]
    return target


QUANTITIES_BAD = ["1.5.3Gi", "-1", "1e100", "+1", "1 Gi", "Gi", "0x10", "1.5Ki.", "∞"]
IMAGES_BAD = ["UPPER:tag", "a b", ":x", "x:", "a//b", "-a", "x@sha256:12", " x", "x\n"]
PATHS_BAD = ["relative", "/a/../b", "/a/./b", "/", "/a/", "//a", "/a\nb", "/a\u0000b"]
LABEL_KEYS_BAD = ["a b", "", "UPPER.io/x", "-x", "a/b/c", "x/" + "a" * 64, "x.io/", "é"]
LABEL_VALUES_BAD = ["x y", "-x", "x-", "a" * 64, "é", "a\nb"]
ODD_STRINGS = [
    "",
    " ",
    " leading",
    "a b",
    "ünïcødé ☃ 模型",
    "line\nbreak",
    "tab\there",
    "nul\u0000",
    "x" * 5000,
]


def kind_of_string(path: Path_) -> str:
    """Which family of bad values suits a string field, from its name."""
    last = next((p for p in reversed(path) if isinstance(p, str)), "")
    if last in ("image", "slImage", "mlImage"):
        return "image"
    if last in ("hostPath", "mountPath", "workingDir") or path[-2:] == ("modelOutput", "path"):
        return "path"
    if last == "size":
        return "quantity"
    if last in ("endpoints",) or "endpoints" in path:
        return "endpoint"
    return "plain"


def bad_values(schema: dict[str, Any], path: Path_) -> list[tuple[str, Any]]:
    """(label, value) of invalid and odd values for a field with `schema`."""
    out: list[tuple[str, Any]] = []
    if schema.get("x-kubernetes-int-or-string"):
        out += [(f"qty {v!r}", v) for v in QUANTITIES_BAD] + [("int -1", -1), ("float", 1.5), ("bool", True)]
        return out
    t = schema.get("type")
    if t == "integer":
        out += [("string", "1"), ("float", 1.5), ("bool", True), ("list", [1]), ("int64", 2**63 - 1)]
        out += [("int32+1", 2**31), ("negative", -1)]
        if "minimum" in schema:
            out.append(("below-min", schema["minimum"] - 1))
        if "maximum" in schema:
            out.append(("above-max", schema["maximum"] + 1))
    elif t == "number":
        out += [("string", "0.1"), ("bool", True), ("huge", 1e308), ("negative", -0.01)]
        if "maximum" in schema:
            out.append(("above-max", schema["maximum"] + 0.01))
    elif t == "boolean":
        out += [("string", "true"), ("int", 1), ("null-ish", "")]
    elif t == "string":
        out += [("int", 1), ("bool", True), ("object", {})]
        out += [(f"odd {v[:12]!r}", v) for v in ODD_STRINGS]
        if "maxLength" in schema:
            out.append(("too-long", "a" * (schema["maxLength"] + 1)))
        if "enum" in schema:
            out += [("not-in-enum", "bogus"), ("wrong-case", str(schema["enum"][0]).swapcase())]
        family = kind_of_string(path)
        if family == "image":
            out += [(f"image {v!r}", v) for v in IMAGES_BAD]
        elif family == "path":
            out += [(f"path {v!r}", v) for v in PATHS_BAD]
        elif family == "quantity":
            out += [(f"qty {v!r}", v) for v in [*QUANTITIES_BAD, "0", "0Gi", "1m"]]
        elif family == "endpoint":
            out += [(f"endpoint {v!r}", v) for v in ["host", "host:0", "host:99999", ":30304", "a b:1"]]
        elif "pattern" in schema:
            out += [("upper", "UPPER"), ("leading-dash", "-x"), ("trailing-dot", "x.")]
    elif t == "array":
        out += [("string", "x"), ("object", {})]
        if "maxItems" in schema:
            out.append(("too-many", ["x"] * (schema["maxItems"] + 1)))
    elif t == "object":
        out += [("string", "x"), ("list", [])]
        if "properties" in schema and "additionalProperties" not in schema and path[-1] != "metadata":
            out.append(("unknown-field", {"bogusField": 1}))
    return out


def generate(kind: str, rng: random.Random) -> Iterator[Variant]:
    """Variants of every field below `spec` of `kind`, walking schema and complete object together."""
    root = yaml.safe_load(CRD_FILES[kind].read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    base = COMPLETE[kind]

    def pick(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return items if len(items) <= MAX_PER_FIELD else rng.sample(items, MAX_PER_FIELD)

    def visit(schema: dict[str, Any], path: Path_, value: Any) -> Iterator[Variant]:
        fixup = DATA_FIXUPS.get(path)
        for label, bad in pick(bad_values(schema, path)):
            yield Variant(f"{kind}:{render(path)}:{label}", kind, path, bad, render(path), fixup=fixup)
        if isinstance(value, dict) and "properties" in schema:
            for name, sub in schema["properties"].items():
                # A field the complete object leaves out (one of exclusive alternatives) still gets its
                # bad values, without descending into it.
                yield from visit(sub, (*path, name), value.get(name))
            for name in schema.get("required", []):
                where = (*path, name)
                yield Variant(
                    f"{kind}:{render(where)}:missing", kind, where, DELETE, render(where), "refused"
                )
        elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
            key = next(iter(value))
            for bad_key in pick([(f"key {k!r}", k) for k in LABEL_KEYS_BAD]):
                label, bad = bad_key
                yield Variant(f"{kind}:{render(path)}:{label}", kind, path, {bad: value[key]}, render(path))
            if "maxProperties" in schema:
                many = {f"k{i}": value[key] for i in range(schema["maxProperties"] + 1)}
                yield Variant(f"{kind}:{render(path)}:too-many", kind, path, many, render(path))
            yield from visit(schema["additionalProperties"], (*path, key), value[key])
        elif isinstance(value, list) and value and "items" in schema:
            yield from visit(schema["items"], (*path, 0), value[0])

    yield from visit(root["properties"]["spec"], ("spec",), base["spec"])


def _only(source: str) -> Callable[[dict[str, Any]], None]:
    """Fixup for a data-source field: keep that source only (exactly one is allowed)."""

    def fix(o: dict[str, Any]) -> None:
        data = o["spec"]["data"]
        for k in ("claimName", "hostPath", "emptyDir"):
            if k != source:
                data.pop(k, None)

    return fix


DATA_FIXUPS: dict[Path_, Callable[[dict[str, Any]], None]] = {
    ("spec", "data", source): _only(source) for source in ("claimName", "hostPath", "emptyDir")
}


def v(kind: str, id_: str, path: Path_, value: Any, field: str, expect: str, says: str = "") -> Variant:
    return Variant(f"{kind}:{id_}", kind, path, value, field, expect, says=says)


KRUM = "2 * spec.sync.byzantine + 3"


NET, LN, SWT = "SwarmNetwork", "LearningNode", "SwarmTask"
# Cross-field and semantic cases the schema walk cannot produce.
HANDWRITTEN: list[Variant] = [
    # SwarmNetwork
    v(NET, "p2p-equals-api", ("spec", "service", "p2pPort"), 30304, "spec.service.apiPort", "refused"),
    v(NET, "rest-equals-api", ("spec", "rest", "port"), 30304, "spec.rest.port", "refused"),
    v(NET, "join-empty-object", ("spec", "join"), {}, "spec.join.endpoints", "refused"),
    v(NET, "join-no-endpoints", ("spec", "join", "endpoints"), [], "spec.join.endpoints", "refused"),
    v(NET, "storage-size-zero", ("spec", "storage", "size"), "0", "spec.storage.size", "refused"),
    v(
        NET,
        "annotation-value-odd",
        ("spec", "service", "annotations"),
        {"example.com/note": "ünï\ncødé ☃" + "x" * 3000},
        "",
        "accepted",
    ),
    v(NET, "name-41", ("metadata", "name"), "n" * 41, "metadata.name", "refused"),
    v(NET, "name-40", ("metadata", "name"), "n" * 40, "", "accepted"),
    v(NET, "members-7", ("spec", "members"), 7, "", "accepted"),
    # LearningNode
    v(LN, "no-spec", ("spec",), DELETE, "spec", "refused"),
    v(LN, "two-data-sources", ("spec", "data", "emptyDir"), True, "spec.data", "refused"),
    v(LN, "organisation-65", ("spec", "organisation"), "o" * 65, "spec.organisation", "refused"),
    v(LN, "organisation-unicode-64", ("spec", "organisation"), "Hôpital ☃ " + "é" * 54, "", "accepted"),
    v(LN, "mountPath-tmp", ("spec", "data", "mountPath"), "/tmp", "spec.data.mountPath", "refused"),
    v(LN, "mountPath-dotdot", ("spec", "data", "mountPath"), "/x/../tmp", "spec.data.mountPath", "refused"),
    v(LN, "hostPath-dotdot", ("spec", "data", "hostPath"), "/srv/../etc", "spec.data.hostPath", "refused"),
    v(
        LN,
        "toleration-exists-with-value",
        ("spec", "tolerations", 0, "operator"),
        "Exists",
        "spec.tolerations[0]",
        "refused",
    ),
    v(
        LN,
        "toleration-no-key-equal",
        ("spec", "tolerations", 0),
        {"operator": "Equal", "value": "x"},
        "spec.tolerations[0]",
        "refused",
    ),
    v(
        LN,
        "toleration-seconds-noschedule",
        ("spec", "tolerations", 0, "effect"),
        "NoSchedule",
        "spec.tolerations[0]",
        "refused",
    ),
    v(
        LN,
        "gpu-requests-prefix",
        ("spec", "gpuResourceName"),
        "requests.nvidia.com/gpu",
        "spec.gpuResourceName",
        "refused",
    ),
    v(
        LN,
        "resources-requests-over-limits",
        ("spec", "resources", "requests", "cpu"),
        "3",
        "spec.resources.requests",
        "refused",
    ),
    v(
        LN,
        "resources-unknown-name",
        ("spec", "resources", "limits"),
        {"gpu": "1"},
        "spec.resources.limits",
        "refused",
    ),
    v(
        LN,
        "resources-extended-fraction",
        ("spec", "resources", "limits"),
        {"example.com/fpga": "1.5"},
        "spec.resources.limits",
        "refused",
    ),
    v(
        LN,
        "resources-extended-request-only",
        ("spec", "resources"),
        {"requests": {"example.com/fpga": 1}},
        "spec.resources.requests",
        "refused",
    ),
    # SwarmTask
    v(SWT, "no-spec", ("spec",), DELETE, "spec", "refused"),
    v(SWT, "peers-below-minPeers", ("spec", "peers"), 2, "spec.peers", "refused", "spec.peers must be >="),
    v(
        SWT,
        "maxPeers-below-minPeers",
        ("spec", "sync", "maxPeers"),
        2,
        "spec.sync.maxPeers",
        "refused",
        "must be 0 (no limit)",
    ),
    v(
        SWT,
        "krum-minPeers-2",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 2, "mergeMethod": "krum"},
        "spec.sync.minPeers",
        "refused",
        KRUM,
    ),
    v(
        SWT,
        "krum-byzantine-1-minPeers-3",
        ("spec", "sync", "byzantine"),
        1,
        "spec.sync.minPeers",
        "refused",
        KRUM,
    ),
    v(
        SWT,
        "multikrum-byzantine-2-minPeers-6",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 3, "mergeMethod": "multikrum", "byzantine": 2},
        "spec.sync.minPeers",
        "refused",
        KRUM,
    ),
    v(
        SWT,
        "krum-byzantine-0-minPeers-3",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 3, "mergeMethod": "krum", "byzantine": 0},
        "",
        "accepted",
    ),
    v(
        SWT,
        "trimmedmean-trim-0.5",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 3, "mergeMethod": "trimmedmean", "trimFraction": 0.5},
        "spec.sync.trimFraction",
        "refused",
    ),
    v(
        SWT,
        "trimmedmean-trim-0.49",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 1, "mergeMethod": "trimmedmean", "trimFraction": 0.49},
        "",
        "accepted",
    ),
    v(
        SWT,
        "plugin-with-fallback",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 3, "mergeMethod": "plugin:clipped.mean_v2", "mergeFallback": "mean"},
        "",
        "accepted",
    ),
    v(
        SWT,
        "plugin-empty-name",
        ("spec", "sync", "mergeMethod"),
        "plugin:",
        "spec.sync.mergeMethod",
        "refused",
    ),
    v(SWT, "plugin-upper", ("spec", "sync", "mergeMethod"), "plugin:Bad", "spec.sync.mergeMethod", "refused"),
    v(
        SWT,
        "plugin-builtin-name",
        ("spec", "sync", "mergeMethod"),
        "plugin:mean",
        "spec.sync.mergeMethod",
        "refused",
        "must not name a built-in",
    ),
    v(
        SWT,
        "plugin-sharded",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 3, "mergeMethod": "plugin:x", "mergeMode": "sharded"},
        "spec.sync.mergeMode",
        "refused",
        "for a plugin:<name> mergeMethod",
    ),
    v(
        SWT,
        "fallback-krum-minPeers-2",
        ("spec", "sync"),
        {"frequency": 1, "minPeers": 2, "mergeMethod": "plugin:x", "mergeFallback": "krum"},
        "spec.sync.minPeers",
        "refused",
        KRUM,
    ),
    Variant(
        f"{SWT}:plugin-secagg",
        SWT,
        ("spec", "privacy", "secureAggregation", "enabled"),
        True,
        "spec.privacy.secureAggregation.enabled",
        "refused",
        fixup=lambda o: o["spec"]["sync"].update(mergeMethod="plugin:x"),
        says="needs spec.sync.mergeMethod mean",
    ),
    Variant(
        f"{SWT}:fedavgm-sharded",
        SWT,
        ("spec", "sync", "mergeMode"),
        "sharded",
        "spec.sync.mergeMode",
        "refused",
        says="with a serverOptimizer",
    ),
    v(SWT, "contract-upper", ("spec", "sync", "contract"), "Train-V1", "spec.sync.contract", "refused"),
    v(SWT, "contract-64", ("spec", "sync", "contract"), "c" * 64, "spec.sync.contract", "refused"),
    v(
        SWT,
        "selector-in-no-values",
        ("spec", "nodeSelector", "matchExpressions", 0, "values"),
        [],
        "spec.nodeSelector.matchExpressions[0]",
        "refused",
    ),
    v(
        SWT,
        "selector-exists-with-values",
        ("spec", "nodeSelector", "matchExpressions", 0, "operator"),
        "Exists",
        "spec.nodeSelector.matchExpressions[0]",
        "refused",
    ),
    v(
        SWT,
        "selector-operator-equals",
        ("spec", "nodeSelector", "matchExpressions", 0, "operator"),
        "Equals",
        "spec.nodeSelector.matchExpressions[0].operator",
        "refused",
    ),
    v(
        SWT,
        "selector-matches-nothing",
        ("spec", "nodeSelector", "matchLabels"),
        {"no-such": "label"},
        "",
        "accepted",
    ),
    v(SWT, "prerequisite-self", ("spec", "prerequisites"), ["train"], "spec.prerequisites", "refused"),
    v(SWT, "prerequisite-missing", ("spec", "prerequisites"), ["never-created"], "", "accepted"),
    v(SWT, "modelOutput-tmp", ("spec", "modelOutput", "path"), "/tmp", "spec.modelOutput.path", "refused"),
    v(SWT, "env-value-odd", ("spec", "env"), [{"name": "NOTE", "value": "ünï\ncødé ☃"}], "", "accepted"),
    v(SWT, "command-odd", ("spec", "command"), ["python", "-c", "print('☃')\n", ""], "", "accepted"),
    v(SWT, "name-63", ("metadata", "name"), "t" * 63, "", "accepted"),
    v(SWT, "peers-1000", ("spec", "peers"), 1000, "", "accepted"),
]


def all_variants() -> list[Variant]:
    rng = random.Random(SEED)
    out = [x for kind in CRD_FILES for x in generate(kind, rng)] + HANDWRITTEN
    assert len({x.id for x in out}) == len(out), "variant ids must be unique"
    return out


# -------------------------------------------------------------------------------- admission helpers


def dry_run(kube: Kube, namespace: str, body: dict[str, Any]) -> str | None:
    """None when the API server would accept `body`, else its refusal (strict field validation)."""
    try:
        kube.request(
            "POST",
            f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{PLURAL[body['kind']]}",
            f"dry-run create {body['kind']}",
            body=body,
            query={"dryRun": "All", "fieldValidation": "Strict"},
        )
    except Rejected as e:
        return e.detail
    return None


def test_generator_covers_every_field() -> None:
    """Every field of every CRD below spec (leaves, objects, arrays, maps) gets variants."""
    ids = {x.id for x in all_variants()}
    for kind, path in CRD_FILES.items():
        root = yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        missing = []
        for field_path in schema_fields(root["properties"]["spec"], "spec"):
            if not any(i.startswith(f"{kind}:{field_path}:") for i in ids):
                missing.append(field_path)
        assert not missing, f"{kind}: no variants for {missing} (add the field to COMPLETE[{kind!r}])"
    assert len(ids) == len(all_variants()) and len(ids) < 1500, len(ids)


def schema_fields(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}"
        yield from schema_fields(sub, f"{path}.{name}")
    if "items" in schema:
        yield from schema_fields(schema["items"], f"{path}[0]")


def test_generator_is_deterministic() -> None:
    first, second = all_variants(), all_variants()
    assert [(x.id, json.dumps(x.value, default=str)) for x in first] == [
        (x.id, json.dumps(x.value, default=str)) for x in second
    ]


# ----------------------------------------------------------------------------------- the fuzz test


@dataclass
class Outcome:
    variant: Variant
    refusal: str | None


def admission(kube: Kube, namespace: str) -> list[Outcome]:
    return [Outcome(x, dry_run(kube, namespace, x.apply(COMPLETE[x.kind]))) for x in all_variants()]


def check_admission(outcomes: list[Outcome]) -> list[str]:
    """Problems: refusals not naming the field, expectations not met."""
    problems = []
    for o in outcomes:
        x = o.variant
        if o.refusal is not None:
            if x.expect == "accepted":
                problems.append(f"{x.id}: refused but expected to be accepted: {o.refusal}")
            elif x.field and x.field not in o.refusal:
                problems.append(f"{x.id}: the refusal does not name {x.field}: {o.refusal[:600]}")
            elif x.says and x.says not in o.refusal:
                problems.append(f"{x.id}: refused, but not by the rule saying {x.says!r}: {o.refusal[:600]}")
        elif x.expect == "refused":
            problems.append(f"{x.id}: accepted, expected a refusal naming {x.field}")
    return problems


def test_crd_fuzz(cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    # ------------------------------------------------------------------ phase 1: admission (dry run)
    outcomes = admission(kube, namespace)
    problems = check_admission(outcomes)
    refused = sum(1 for o in outcomes if o.refusal is not None)
    accepted = [o.variant for o in outcomes if o.refusal is None]
    print(f"\nfuzz seed {SEED}: {len(outcomes)} variants, {refused} refused, {len(accepted)} accepted")
    assert not problems, "\n".join(problems)
    assert refused > len(outcomes) * 0.8, (
        f"only {refused} of {len(outcomes)} refused: the generator lost its bite"
    )

    # ------------------------------------------------------- phase 2: accepted variants, for real
    rng = random.Random(SEED)
    live: list[tuple[str, dict[str, Any]]] = []  # (variant id, object to create)
    support: list[dict[str, Any]] = []
    skipped = []
    for kind, prefix in ((NET, "net"), (LN, "ln"), (SWT, "task")):
        chosen = sorted((x for x in accepted if x.kind == kind), key=lambda x: x.id)
        if len(chosen) > LIVE_LIMIT:
            chosen = sorted(rng.sample(chosen, LIVE_LIMIT), key=lambda x: x.id)
        for i, x in enumerate(chosen):
            body = x.apply(live_base(kind, f"{prefix}-{i}"))
            name = body["metadata"]["name"]  # a name variant sets its own
            if kind == SWT:
                selector = body["spec"].setdefault("nodeSelector", {})
                selector.setdefault("matchLabels", {})["fuzz-task"] = name
                for site in ("a", "b"):
                    ln = runnable(LN, f"{name[:36]}-{site}", "net")
                    ln["metadata"]["labels"] = {"fuzz-task": name}
                    support.append(ln)
            refusal = dry_run(kube, namespace, body)
            if refusal is None:
                live.append((x.id, body))
                if kind == LN:
                    # A site's fields matter once a task runs on it: a one-peer task on just this site.
                    body["metadata"]["labels"] = {"fuzz-site": name}
                    probe = _task(f"{name}-probe", peers=1, sync={"frequency": 4, "minPeers": 1})
                    probe["spec"]["nodeSelector"] = {"matchLabels": {"fuzz-site": name}}
                    live.append((x.id + PROBE, probe))
            else:  # legal on the complete object only (e.g. needs its peers): phase 1 covered it
                skipped.append(f"{x.id}: {refusal[:200]}")
    print(f"phase 2: {len(live)} accepted variants created for real, {len(skipped)} not runnable here")
    assert len(live) >= 10, f"phase 2 needs accepted variants to run; skipped: {skipped}"
    apply(cluster, namespace, runnable(NET, "net", "net"))
    wait_for(lambda: phase(kube, namespace, NET, "net") == "Ready", T, "SwarmNetwork net Ready", operator)
    apply(cluster, namespace, *support)
    for ln in support:
        wait_ready(kube, namespace, LN, ln["metadata"]["name"], operator)
    for _, body in live:
        create(kube, namespace, body)

    # Level-based: a task waiting for its sites moves on once they are Ready, so a verdict counts only
    # when every object has one and the children agree with it in the same pass.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        verdicts = {label: settled(kube, namespace, body) for label, body in live}
        failures = [
            f"{label} ({body['metadata']['name']}): not settled: {state(kube, namespace, body)}"
            for label, body in live
            if verdicts[label] is None
        ]
        if not failures:
            for label, body in live:
                verdict = verdicts[label]
                assert verdict is not None
                failures += [f"{label}: {p}" for p in consistent(kube, namespace, body, verdict)]
                # A site that reconciled must also run its task: that is where its fields reach a pod.
                site = label.removesuffix(PROBE)
                if site != label and verdicts[site] == "reconciled" and verdict != "reconciled":
                    failures.append(f"{label}: the site is Ready, its task is not Running")
        if not failures or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert operator.proc is not None and operator.proc.poll() is None, "the operator exited"
    log = operator.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"the operator logged a traceback:\n{traceback_excerpt(log)}"
    assert not failures, "\n".join(failures) + f"\n--- operator log ---\n{operator.log_tail()}"
    counts = {k: sum(1 for v in verdicts.values() if v == k) for k in ("reconciled", "reported")}
    print(f"phase 2: {counts['reconciled']} reconciled, {counts['reported']} reported with a condition")


# ------------------------------------------------------------------------------ phase-2 judgement

ERROR_REASONS = {
    NET: {"InvalidSpec", "ChildRejected", "InvalidCASecret", "CASecretMissing"},
    LN: {"InvalidSpec", "NetworkNotFound", "CAUnavailable", "ChildRejected"},
    SWT: {
        "InvalidSpec",
        "NetworkNotFound",
        "NetworkNotReady",
        "PrerequisitesPending",
        "PrerequisiteFailed",
        "InsufficientPeers",
        "PeersBusy",
        "PeersNotReady",
        "PodRejected",
    },
}


def apply(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def create(kube: Kube, namespace: str, body: dict[str, Any]) -> None:
    kube.request(
        "POST",
        f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{PLURAL[body['kind']]}",
        f"create {body['kind']} {body['metadata']['name']}",
        body=body,
    )


def current(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    got = kube.get_custom(PLURAL[kind], namespace, name)
    assert got is not None, f"{kind} {name} vanished"
    return got


def phase(kube: Kube, namespace: str, kind: str, name: str) -> str | None:
    return (current(kube, namespace, kind, name).get("status") or {}).get("phase")


def wait_ready(kube: Kube, namespace: str, kind: str, name: str, op: OperatorProcess) -> None:
    wait_for(lambda: phase(kube, namespace, kind, name) == "Ready", T, f"{kind} {name} Ready", op)


def error_condition(kind: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """The condition reporting a problem: an error reason, status False (or True for type Failed)."""
    for c in status.get("conditions") or ():
        if c.get("reason") in ERROR_REASONS[kind] and c.get("status") == (
            "True" if c["type"] == "Failed" else "False"
        ):
            return dict(c)
    return None


def settled(kube: Kube, namespace: str, body: dict[str, Any]) -> str | None:
    """ "reconciled", "reported", or None while the operator is still at it."""
    kind, name = body["kind"], body["metadata"]["name"]
    got = current(kube, namespace, kind, name)
    status = got.get("status") or {}
    if status.get("observedGeneration") != got["metadata"]["generation"]:
        return None
    done = {NET: ("Ready",), LN: ("Ready", "Training", "Idle"), SWT: ("Running", "Succeeded")}[kind]
    if status.get("phase") in done and error_condition(kind, status) is None:
        if kind == SWT and len(task_pods(kube, namespace, name)) < len(status.get("peers") or ()):
            return None
        return "reconciled"
    if error_condition(kind, status) is not None:
        return "reported"
    return None


def state(kube: Kube, namespace: str, body: dict[str, Any]) -> str:
    got = kube.get_custom(PLURAL[body["kind"]], namespace, body["metadata"]["name"]) or {}
    st = got.get("status") or {}
    conds = [(c.get("type"), c.get("status"), c.get("reason")) for c in st.get("conditions") or ()]
    return f"phase={st.get('phase')} conditions={conds}"


def task_pods(kube: Kube, namespace: str, task: str) -> list[str]:
    return [p["metadata"]["name"] for p in kube.find("Pod", namespace, {names.L_TASK: task})]


def owned(kube: Kube, namespace: str, uid: str) -> list[str]:
    """Children (pods, Services, Secrets, PVCs) with a controller owner reference to `uid`."""
    out = []
    for kind in ("Pod", "Service", "Secret", "PersistentVolumeClaim"):
        for o in kube.find(kind, namespace, {}):
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or ()):
                out.append(f"{kind}/{o['metadata']['name']}")
    return sorted(out)


def consistent(kube: Kube, namespace: str, body: dict[str, Any], verdict: str) -> list[str]:
    """Problems with a settled object: its children against its verdict, the condition, the Event."""
    kind, name = body["kind"], body["metadata"]["name"]
    got = current(kube, namespace, kind, name)
    status, spec = got.get("status") or {}, got["spec"]
    children = owned(kube, namespace, got["metadata"]["uid"])
    problems = []
    if verdict == "reconciled":
        if kind == NET:
            want = [f"Service/{name}-sn", f"Service/{name}-sn-peers"]
            want += [f"Pod/{name}-sn-{i}" for i in range(spec["members"])]
            want += [f"Secret/{name}-sn-{i}-tls" for i in range(spec["members"])]
            want += [f"Service/{name}-rest"] if spec["rest"]["enabled"] else []
        elif kind == LN:
            want = [f"Secret/{name}-identity", f"Service/{name}-sl"]
        else:
            want = [f"Pod/{name}-{peer}-0" for peer in status["peers"]]
            if len(status["peers"]) != spec["peers"]:
                problems.append(f"Running with {status['peers']} for spec.peers={spec['peers']}")
        missing = sorted(set(want) - set(children))
        if missing:
            problems.append(f"reconciled ({status.get('phase')}) but children missing: {missing}")
        return problems
    cond = error_condition(kind, status)
    if cond is None:
        return [f"moved on from {verdict} ({state(kube, namespace, body)})"]
    message = cond.get("message") or ""
    if not re.search(r"\bspec\.[A-Za-z]", message):
        problems.append(f"condition {cond['type']}/{cond['reason']} does not name a spec field: {message!r}")
    if cond["reason"] in ("ChildRejected", "PodRejected"):
        # Reported properly, yet a hole: the CRD accepted a value the API server refuses in a child.
        problems.append(f"the CRD let through a value a child cannot have ({cond['reason']}): {message!r}")
    elif kind == SWT and [c for c in children if c.startswith("Pod/")]:
        problems.append(f"reported {cond['reason']} but has pods: {children}")
    elif kind != SWT and children and cond["reason"] not in ("CAUnavailable",):
        problems.append(f"reported {cond['reason']} but has children: {children}")
    reasons = [(e["type"], e["reason"]) for e in events(kube, namespace, name)]
    if ("Warning", cond["reason"]) not in reasons:
        problems.append(f"no Warning Event {cond['reason']} (events: {reasons})")
    return problems


def traceback_excerpt(log: str) -> str:
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "Traceback" in line)
    return "\n".join(lines[max(0, at - 3) : at + 30])


# ---------------------------------------------------------------- regression tests of operator fixes


def no_traceback(op: OperatorProcess) -> None:
    log = op.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"the operator logged a traceback:\n{traceback_excerpt(log)}"


def condition(kube: Kube, namespace: str, kind: str, name: str, type_: str) -> dict[str, Any]:
    st = current(kube, namespace, kind, name).get("status") or {}
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def warning_event(kube: Kube, namespace: str, name: str, reason: str) -> bool:
    return any(e["type"] == "Warning" and e["reason"] == reason for e in events(kube, namespace, name))


def test_network_with_the_longest_name_gets_its_ca(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """A 40-character network name plus the namespace made the CA's CN longer than X.509's 64: the
    reconcile raised on every retry and nothing was created. The CN is cut to 64 now."""
    name = "n" * 40
    apply(cluster, namespace, runnable(NET, name, name))
    wait_for(lambda: phase(kube, namespace, NET, name) == "Ready", T, f"{name} Ready", operator)
    assert kube.get("Secret", namespace, f"{name}-ca") is not None
    no_traceback(operator)


def test_unusable_ca_secret_is_reported_and_nothing_is_built(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """spec.ca.secretName naming a Secret that holds no usable CA crashed member certificate issuing."""
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "byo-ca", "namespace": namespace},
            "stringData": {"ca.crt": "not a certificate", "ca.key": "not a key"},
        }
    )
    net = runnable(NET, "net", "net")
    net["spec"]["ca"] = {"secretName": "byo-ca"}
    apply(cluster, namespace, net, runnable(LN, "site", "net"))

    def reported() -> dict[str, Any]:
        c = condition(kube, namespace, NET, "net", "CAReady")
        return c if c.get("reason") == "InvalidCASecret" else {}

    cond = wait_for(reported, T, "CAReady=False InvalidCASecret", operator)
    assert "spec.ca.secretName" in cond["message"] and "ca.crt is not a PEM certificate" in cond["message"]
    wait_for(lambda: warning_event(kube, namespace, "net", "InvalidCASecret"), T, "an InvalidCASecret Event")
    node = wait_for(
        lambda: condition(kube, namespace, LN, "site", "CertificateReady").get("reason") == "CAUnavailable",
        T,
        "LearningNode site CAUnavailable",
        operator,
    )
    assert node
    net_uid = current(kube, namespace, NET, "net")["metadata"]["uid"]
    assert owned(kube, namespace, net_uid) == [], "nothing is built on an unusable CA"
    no_traceback(operator)


def test_refused_service_is_reported_then_built_once_allowed(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """A child the API server refuses (here a quota of 0 Services) raised on every retry; now the network
    says which child was refused and why, and builds it as soon as the API server allows it."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-services"},
        "spec": {"hard": {"services": "0"}},
    }
    apply(cluster, namespace, quota)
    apply(cluster, namespace, runnable(NET, "net", "net"))

    def rejected() -> dict[str, Any]:
        c = condition(kube, namespace, NET, "net", "Ready")
        return c if c.get("reason") == "ChildRejected" else {}

    cond = wait_for(rejected, T, "Ready=False ChildRejected", operator)
    assert "Service" in cond["message"] and "net-sn" in cond["message"] and "quota" in cond["message"]
    wait_for(lambda: warning_event(kube, namespace, "net", "ChildRejected"), T, "a ChildRejected Event")
    assert kube.get("Pod", namespace, "net-sn-0") is None, "no member before its Services"
    no_traceback(operator)
    cluster.kubectl("delete", "resourcequota", "no-services", "-n", namespace)
    wait_for(lambda: phase(kube, namespace, NET, "net") == "Ready", T, "net Ready after the quota", operator)


def _ready_sites(cluster: Cluster, kube: Kube, ns: str, op: OperatorProcess, *sites: dict[str, Any]) -> None:
    apply(cluster, ns, runnable(NET, "net", "net"))
    wait_for(lambda: phase(kube, ns, NET, "net") == "Ready", T, "net Ready", op)
    apply(cluster, ns, *sites)
    for s in sites:
        wait_ready(kube, ns, LN, s["metadata"]["name"], op)


def _task(name: str, **spec: Any) -> dict[str, Any]:
    body = obj(SWT, name, {"network": "net", "peers": 2, "sync": {"frequency": 4, "minPeers": 2}})
    body["spec"].update(spec)
    return body


def test_pod_refused_for_one_peer_creates_no_pod_for_any(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """Pod Security (baseline) refuses hostPath volumes: site-b's pod was refused while site-a's ran, half
    a task, and the reconcile raised on every pass. Now every pod is dry-run first: none is created, the
    task waits saying whose pod was refused and why."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    site_b = runnable(LN, "site-b", "net")
    site_b["spec"]["data"] = {"hostPath": "/var/lib/swarm-fuzz/site-b"}
    _ready_sites(cluster, kube, namespace, operator, runnable(LN, "site-a", "net"), site_b)
    apply(cluster, namespace, _task("train"))

    def refused() -> dict[str, Any]:
        c = condition(kube, namespace, SWT, "train", "PodsCreated")
        return c if c.get("reason") == "PodRejected" else {}

    cond = wait_for(refused, T, "PodsCreated=False PodRejected", operator)
    assert "site-b" in cond["message"] and "hostPath" in cond["message"], cond["message"]
    assert phase(kube, namespace, SWT, "train") == "Waiting"
    wait_for(lambda: warning_event(kube, namespace, "train", "PodRejected"), T, "a PodRejected Event")
    # several passes later still nothing: the resync runs every 5 s
    time.sleep(6)
    assert task_pods(kube, namespace, "train") == [], "no pod of a task whose peers cannot all run"
    no_traceback(operator)


def test_model_output_on_the_data_mount_is_reported(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """spec.modelOutput.path equal to a LearningNode's spec.data.mountPath: two volumes on one path, a pod
    the API server refuses. No CRD can see across objects; the task names both fields."""
    site = runnable(LN, "site-a", "net")
    site["spec"]["data"] = {"emptyDir": True, "mountPath": "/work"}
    _ready_sites(cluster, kube, namespace, operator, site)
    task = _task("train", peers=1, sync={"frequency": 4, "minPeers": 1}, modelOutput={"path": "/work"})
    apply(cluster, namespace, task)

    def refused() -> dict[str, Any]:
        c = condition(kube, namespace, SWT, "train", "PodsCreated")
        return c if c.get("reason") == "PodRejected" else {}

    cond = wait_for(refused, T, "PodsCreated=False PodRejected", operator)
    assert "spec.modelOutput.path" in cond["message"] and "spec.data.mountPath" in cond["message"]
    assert task_pods(kube, namespace, "train") == []
    no_traceback(operator)


def test_kube_reports_a_refusal_with_the_api_servers_message(kube: Kube, namespace: str) -> None:
    """`Rejected.detail` is what reconcilers quote: the API server's message naming the field."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": " bad"}]},
    }
    with pytest.raises(Rejected) as info:
        kube.create(pod, dry_run=True)
    assert "spec.containers[0].image" in info.value.detail
    ok = kube.create({**pod, "spec": {"containers": [{"name": "c", "image": "x"}]}}, dry_run=True)
    assert ok["metadata"]["name"] == "p"
    assert kube.get("Pod", namespace, "p") is None, "a dry run stores nothing"
