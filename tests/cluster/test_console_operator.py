"""The operator runs the swarm console for a SwarmNetwork with spec.rest.enabled (real control plane;
kwok nodes: the console pod is scheduled and Running but runs nothing, so the console's own behaviour is
the e2e tier's): Deployment, ServiceAccount, RoleBinding, ClusterRoleBinding, identity Secret, the
`<network>-rest` Service on the console pod, ConsoleReady; disabling or deleting removes them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography import x509
from swarm_operator import names
from swarm_operator.kube import Kube
from swarmlearning import pki

from tests.cluster.operator_harness import (  # noqa: F401 (fixtures)
    OperatorProcess,
    kube_fixture,
    operator_fixture,
    wait_for,
)
from tests.cluster.test_operator import T, apply, condition, network, node, owner_uid, phase_is, status
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster


def _console_ready(kube: Kube, ns: str) -> dict[str, Any] | None:
    st = status(kube, names.NETWORKS, ns, "net")
    return st if condition(st, "ConsoleReady").get("status") == "True" else None


def _namespaced_children(kube: Kube, ns: str) -> dict[str, Any]:
    return {
        kind: kube.get(kind, ns, name)
        for kind, name in (
            ("Deployment", "net-console"),
            ("ServiceAccount", "net-console"),
            ("RoleBinding", "net-console"),
            ("Secret", "net-console-tls"),
            ("Service", "net-rest"),
        )
    }


def test_rest_enabled_runs_the_console_behind_the_rest_service_and_disabling_removes_it(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    crb_name = f"swarm-learning-console:{namespace}:net"
    try:
        apply(cluster, namespace, network(rest={"enabled": True, "port": 31306}), node("net-console"))
        st = wait_for(lambda: _console_ready(kube, namespace), T, "ConsoleReady True", operator)
        # A LearningNode may not take the console's name (its certificate CN and etcd user).
        ln = wait_for(
            lambda: phase_is(kube, names.NODES, namespace, "net-console", "Error"), T, "node Error", operator
        )
        valid = condition(ln, "Valid")
        assert valid["status"] == "False" and valid["reason"] == "ReservedName", valid
        assert kube.get("Secret", namespace, "net-console-identity") is None
        assert "available" in condition(st, "ConsoleReady")["message"]
        net = kube.get_custom(names.NETWORKS, namespace, "net")
        assert net is not None
        uid = net["metadata"]["uid"]

        children = _namespaced_children(kube, namespace)
        for kind, obj in children.items():
            assert obj is not None, f"no console {kind}"
            assert owner_uid(obj) == uid, f"{kind} is not owned by the network"

        # The Deployment runs swarm-console with the documented flags, as its ServiceAccount.
        deployment = children["Deployment"]
        pod_spec = deployment["spec"]["template"]["spec"]
        (container,) = pod_spec["containers"]
        args = container["command"]
        flag = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
        assert args[0] == "swarm-console" and "--kubernetes" in args
        assert flag["--sn"] == f"net-sn.{namespace}.svc:30304"
        assert (flag["--port"], flag["--network"], flag["--namespace"]) == ("31306", "net", namespace)
        assert container["image"] == "swarmlearning/console:0.1.0"
        assert pod_spec["serviceAccountName"] == "net-console"

        # The rest Service selects the console pod, and no SN member.
        rest = children["Service"]
        assert [(p["name"], p["port"], p["targetPort"]) for p in rest["spec"]["ports"]] == [
            ("rest", 31306, "rest")
        ]
        selected = kube.find("Pod", namespace, rest["spec"]["selector"])
        assert len(selected) == 1 and selected[0]["metadata"]["name"].startswith("net-console-")
        assert selected[0]["metadata"]["labels"][names.L_COMPONENT] == "console"
        sn = kube.get("Pod", namespace, "net-sn-0")
        assert sn is not None
        assert {p["name"] for p in sn["spec"]["containers"][0]["ports"]} == {"p2p", "api"}

        # RBAC: the RoleBinding (namespaced rights) and the ClusterRoleBinding (token and access reviews).
        rb = children["RoleBinding"]
        subject = [{"kind": "ServiceAccount", "name": "net-console", "namespace": namespace}]
        assert rb["roleRef"]["name"] == "swarm-learning-console" and rb["subjects"] == subject
        crb = kube.get("ClusterRoleBinding", "", crb_name)
        assert crb is not None, f"no ClusterRoleBinding {crb_name}"
        assert crb["roleRef"]["name"] == "swarm-learning-console-reviews" and crb["subjects"] == subject
        assert crb["metadata"]["annotations"]["swarmlearning.dev/owner"] == f"{namespace}/net/{uid}"

        # The identity: a certificate of the swarm's CA, role operator, SANs = the rest Service's names.
        ca_secret = kube.get("Secret", namespace, "net-ca")
        assert ca_secret is not None
        ca_pem = base64.b64decode(ca_secret["data"]["ca.crt"])
        cert_pem = base64.b64decode(children["Secret"]["data"]["tls.crt"])
        info = pki.check_cert(cert_pem, ca_pem)
        assert (info.name, info.role) == ("net-console", "operator")
        sans = set(
            x509.load_pem_x509_certificate(cert_pem)
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.DNSName)
        )
        svc = "net-rest"
        assert {
            svc,
            f"{svc}.{namespace}",
            f"{svc}.{namespace}.svc",
            f"{svc}.{namespace}.svc.cluster.local",
        } <= sans

        # A changed port reaches the running Deployment and the Service (level-based, no recreate).
        cluster.kubectl(
            "patch", "swarmnetwork", "net", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"rest": {"port": 31307}}}),
        )  # fmt: skip

        def moved() -> bool:
            d = kube.get("Deployment", namespace, "net-console")
            svc = kube.get("Service", namespace, "net-rest")
            if d is None or svc is None:
                return False
            (c,) = d["spec"]["template"]["spec"]["containers"]
            args = c["command"]
            return (
                args[args.index("--port") + 1] == "31307"
                and c["ports"][0]["containerPort"] == 31307
                and [p["port"] for p in svc["spec"]["ports"]] == [31307]
                and d["metadata"]["uid"] == deployment["metadata"]["uid"]
            )

        wait_for(moved, T, "console Deployment and Service on port 31307", operator)

        # Disabled: every console object goes, and so does its condition.
        cluster.kubectl(
            "patch", "swarmnetwork", "net", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"rest": {"enabled": False}}}),
        )  # fmt: skip

        def gone() -> bool:
            left = [k for k, o in _namespaced_children(kube, namespace).items() if o is not None]
            left += ["ClusterRoleBinding"] if kube.get("ClusterRoleBinding", "", crb_name) else []
            st = status(kube, names.NETWORKS, namespace, "net")
            return not left and not condition(st, "ConsoleReady")

        wait_for(gone, T, "console objects and ConsoleReady removed after rest.enabled=false", operator)
        assert kube.get("Pod", namespace, "net-sn-0") is not None, "the SN member stays"
    finally:
        cluster.kubectl("delete", "clusterrolebinding", crb_name, "--ignore-not-found", check=False)


def test_deleting_the_network_deletes_the_console_cluster_role_binding(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    """The ClusterRoleBinding cannot be owned by the (namespaced) network: the operator removes it. One
    left by an earlier network of the same name (deleted while no operator ran) is taken over."""
    crb_name = f"swarm-learning-console:{namespace}:net"
    rbac = "rbac.authorization.k8s.io"
    leftover = {
        "apiVersion": f"{rbac}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": crb_name,
            "annotations": {"swarmlearning.dev/owner": f"{namespace}/net/old-uid"},
        },
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": names.CONSOLE_REVIEWS_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": "net-console", "namespace": namespace}],
    }
    try:
        kube.create(leftover)
        apply(cluster, namespace, network(rest={"enabled": True}))
        net = wait_for(lambda: kube.get_custom(names.NETWORKS, namespace, "net"), T, "the network", operator)
        owner = f"{namespace}/net/{net['metadata']['uid']}"

        def taken_over() -> bool:
            crb = kube.get("ClusterRoleBinding", "", crb_name)
            return crb is not None and crb["metadata"]["annotations"]["swarmlearning.dev/owner"] == owner

        wait_for(
            taken_over, T, f"ClusterRoleBinding {crb_name} annotated with the new network's uid", operator
        )
        cluster.kubectl("delete", "swarmnetwork", "net", "-n", namespace, "--wait=false")
        wait_for(
            lambda: kube.get("ClusterRoleBinding", "", crb_name) is None,
            T,
            f"ClusterRoleBinding {crb_name} deleted with its network",
            operator,
        )
        # The garbage collector removes the owned ones.
        wait_for(
            lambda: all(o is None for o in _namespaced_children(kube, namespace).values()),
            T,
            "the console's namespaced objects garbage-collected",
            operator,
        )
    finally:
        cluster.kubectl("delete", "clusterrolebinding", crb_name, "--ignore-not-found", check=False)
