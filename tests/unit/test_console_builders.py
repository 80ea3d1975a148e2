"""The console children of a SwarmNetwork with spec.rest.enabled (builders/console.py, settings): pure."""

from __future__ import annotations

from typing import Any

import pytest
from swarm_operator import names
from swarm_operator.builders import console as cb
from swarm_operator.settings import ConsoleImage, SettingError
from swarm_operator.specs import NetworkSpec, ObjectRef

from tests.unit.test_builders import hardened, owned_by, valid

pytestmark = pytest.mark.unit

NET = ObjectRef("SwarmNetwork", "net", "ns1", "uid-net", 3)
IMAGE = ConsoleImage("registry.local/console:7", "Never")


def _spec(**rest: Any) -> NetworkSpec:
    return NetworkSpec.parse({"rest": {"enabled": True, **rest}, "service": {"apiPort": 31004}})


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_deployment_runs_swarm_console_with_the_documented_flags() -> None:
    d = cb.deployment(NET, _spec(port=31006), IMAGE)
    valid(d)
    owned_by(d, NET)
    assert d["metadata"]["name"] == "net-console"
    assert d["spec"]["replicas"] == 1
    pod = d["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert (c["image"], c["imagePullPolicy"]) == ("registry.local/console:7", "Never")
    args = c["command"]
    assert args[0] == "swarm-console"
    assert _flag(args, "--sn") == "net-sn.ns1.svc:31004"
    assert _flag(args, "--port") == "31006"
    assert (_flag(args, "--network"), _flag(args, "--namespace")) == ("net", "ns1")
    assert "--kubernetes" in args
    # The certificate files are the mounted identity Secret's keys.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    tls_dir = mounts["tls"]
    assert [_flag(args, f) for f in ("--ca", "--cert", "--key")] == [
        f"{tls_dir}/ca.crt",
        f"{tls_dir}/tls.crt",
        f"{tls_dir}/tls.key",
    ]
    secret_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    assert secret_volume["secret"]["secretName"] == "net-console-tls"
    assert pod["spec"]["serviceAccountName"] == "net-console"
    assert pod["spec"]["automountServiceAccountToken"] is True, "TokenReview needs the pod's own token"
    hardened(pod)


def test_probes_are_tcp_on_the_rest_port_since_nothing_is_served_anonymously() -> None:
    (c,) = cb.deployment(NET, _spec(port=31006), IMAGE)["spec"]["template"]["spec"]["containers"]
    assert c["ports"] == [{"name": "rest", "containerPort": 31006, "protocol": "TCP"}]
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["tcpSocket"] == {"port": "rest"}
        assert "httpGet" not in probe


def test_rest_service_selects_the_console_pod_and_not_the_sn_members() -> None:
    spec = _spec()
    svc = cb.rest_service(NET, spec)
    valid(svc)
    owned_by(svc, NET)
    assert svc["metadata"]["name"] == "net-rest"
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("rest", 30306, "rest")
    ]
    pod_labels = cb.deployment(NET, spec, IMAGE)["spec"]["template"]["metadata"]["labels"]
    selector = svc["spec"]["selector"]
    assert selector.items() <= pod_labels.items()
    assert cb.deployment(NET, spec, IMAGE)["spec"]["selector"]["matchLabels"] == selector
    assert selector[names.L_COMPONENT] == "console"


def test_service_account_and_role_binding_are_owned_and_name_the_chart_role() -> None:
    sa = cb.service_account(NET)
    valid(sa)
    owned_by(sa, NET)
    rb = cb.role_binding(NET)
    valid(rb)
    owned_by(rb, NET)
    assert rb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "swarm-learning-console",
    }
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "net-console", "namespace": "ns1"}]


def test_cluster_role_binding_has_no_owner_reference_but_names_its_network() -> None:
    crb = cb.cluster_role_binding(NET)
    valid(crb)
    meta = crb["metadata"]
    assert "namespace" not in meta and "ownerReferences" not in meta
    assert meta["name"] == "swarm-learning-console:ns1:net"
    assert meta["annotations"] == {"swarmlearning.dev/owner": "ns1/net/uid-net"}
    assert meta["labels"][names.L_COMPONENT] == "console"
    assert crb["roleRef"]["name"] == "swarm-learning-console-reviews"
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "net-console", "namespace": "ns1"}]


def test_identity_secret_and_its_names() -> None:
    s = cb.tls_secret(NET, b"C", b"K", b"CA")
    valid(s)
    owned_by(s, NET)
    assert s["metadata"]["name"] == "net-console-tls"
    assert set(s["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert cb.hosts(NET)[:4] == [
        "net-rest",
        "net-rest.ns1",
        "net-rest.ns1.svc",
        "net-rest.ns1.svc.cluster.local",
    ]


def test_console_image_from_the_environment() -> None:
    assert ConsoleImage.from_env({}) == ConsoleImage("swarmlearning/console:0.1.0", "IfNotPresent")
    got = ConsoleImage.from_env({"SWARM_CONSOLE_IMAGE": "r/c:1", "SWARM_CONSOLE_IMAGE_PULL_POLICY": "Always"})
    assert got == ConsoleImage("r/c:1", "Always")
    with pytest.raises(
        SettingError, match="SWARM_CONSOLE_IMAGE_PULL_POLICY must be one of Always, IfNotPresent"
    ):
        ConsoleImage.from_env({"SWARM_CONSOLE_IMAGE_PULL_POLICY": "Sometimes"})


def _deployment(gen: int, observed: int, available: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "net-console", "generation": gen},
        "status": {
            "observedGeneration": observed,
            "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": available, "message": "m"}],
        },
    }


@pytest.mark.parametrize(
    ("obj", "ok", "why"),
    [
        (None, False, "does not exist"),
        (_deployment(2, 1, "True", 1), False, "not seen the latest"),
        (_deployment(2, 2, "False", 0), False, "not ready"),
        (_deployment(2, 2, "True", 1), True, "available"),
    ],
)
def test_console_availability(obj: dict[str, Any] | None, ok: bool, why: str) -> None:
    got, message = cb.is_available(obj)
    assert got is ok and why in message
