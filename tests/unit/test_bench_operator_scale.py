"""The operator benchmark's request accounting: audit events attributed to clients, config checks."""

from __future__ import annotations

import json

import pytest

from bench.operator_scale import BENCH_USER_AGENT, OperatorConfig, client_of, count_requests, top_requests

pytestmark = pytest.mark.unit


def event(
    agent: str,
    user: str = "admin",
    verb: str = "get",
    stage: str = "ResponseComplete",
    resource: str = "pods",
    subresource: str = "",
) -> str:
    ref = {"resource": resource, **({"subresource": subresource} if subresource else {})}
    return json.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "stage": stage,
            "verb": verb,
            "userAgent": agent,
            "user": {"username": user},
            "objectRef": ref,
        }
    )


def test_client_of_names_operator_kwok_bench_and_the_rest() -> None:
    assert client_of(json.loads(event("swarm-operator/0.1.0"))) == "operator"
    assert client_of(json.loads(event("kopf/1.45.2"))) == "operator"
    assert client_of(json.loads(event("OpenAPI-Generator/31.0.0/python"))) == "operator"  # the baseline
    assert client_of(json.loads(event("kwok/v0.7.0", user="swarm-testbed-node-agent"))) == "kwok"
    assert client_of(json.loads(event(BENCH_USER_AGENT))) == "bench"
    assert client_of(json.loads(event("kubectl/v1.34.4 (linux/amd64)"))) == "bench"
    sched = json.loads(event("kube-scheduler/v1.34.4", user="system:kube-scheduler"))
    assert client_of(sched) == "other"


def test_count_requests_splits_by_client_and_verb_and_skips_torn_lines() -> None:
    lines = [
        event("swarm-operator/0.1.0", verb="create"),
        event("swarm-operator/0.1.0", verb="patch", resource="learningnodes", subresource="status"),
        event("kopf/1.45.2", verb="watch"),
        event("kopf/1.45.2", verb="list"),
        event("kwok/v0.7.0", user="node-agent", verb="patch"),
        event("kube-controller-manager/v1.34.4", user="system:kube-controller-manager", verb="update"),
        '{"kind": "Event", "stage": "ResponseCo',  # the line being written when we read
    ]
    out = count_requests(iter(lines))
    assert out["operator"]["requests"] == 4
    assert (out["operator"]["writes"], out["operator"]["reads"], out["operator"]["watches"]) == (2, 1, 1)
    assert out["kwok"]["requests"] == 1 and out["other"]["requests"] == 1 and out["bench"]["requests"] == 0
    assert out["operator"]["patch learningnodes/status"] == 1 and out["operator"]["create pods"] == 1
    top = top_requests(out["operator"], count=2, most=2)
    assert top.startswith("create pods 0.50, ") and top.count(",") == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"counts": ()}, "counts"), ({"counts": (0,)}, "counts"), ({"baseline_counts": (20_000,)}, "baseline")],
)
def test_operator_config_rejects_bad_counts(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OperatorConfig(**kwargs)  # type: ignore[arg-type]
