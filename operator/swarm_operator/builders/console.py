"""SwarmNetwork console children (`spec.rest.enabled`): the `swarm-console` Deployment behind the
`<network>-rest` Service, its ServiceAccount and RBAC bindings, and its identity Secret.

Rights (docs/console.md): TokenReview and SubjectAccessReview are cluster-scoped APIs, which only a
ClusterRoleBinding can grant, so that binding references the chart's narrow ClusterRole
`swarm-learning-console-reviews` (create those two, nothing else). Everything namespaced (reading the
three custom resources) is granted by a RoleBinding in the network's namespace to the ClusterRole
`swarm-learning-console`, so a console sees no other namespace. The RoleBinding has an owner reference;
the ClusterRoleBinding cannot (cluster-scoped objects can only be owned by cluster-scoped ones), so it
carries the network's identity in an annotation and the reconciler deletes it.
"""

from __future__ import annotations

from typing import Any

from .. import names
from ..settings import ConsoleImage
from ..specs import NetworkSpec, ObjectRef
from . import common

RBAC_API = "rbac.authorization.k8s.io"


def labels(owner: ObjectRef) -> dict[str, str]:
    return common.labels(owner, names.COMPONENT_CONSOLE, **{names.L_NETWORK: owner.name})


def selector(network: str) -> dict[str, str]:
    """Selects the console pod of one network (Deployment and `<network>-rest` Service selector)."""
    return {names.L_NETWORK: network, names.L_COMPONENT: names.COMPONENT_CONSOLE}


def hosts(owner: ObjectRef) -> list[str]:
    """SANs of the console's certificate: the `<network>-rest` Service names, and loopback for
    port-forwards."""
    svc, ns = names.rest_service(owner.name), owner.namespace
    return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", "localhost", "127.0.0.1"]


def console_args(owner: ObjectRef, spec: NetworkSpec) -> list[str]:
    """`swarm-console` command line (flags of docs/console.md); the certificate is the mounted Secret."""
    tls = names.TLS_DIR
    return [
        "swarm-console",
        "--sn", names.sn_api_endpoint(owner.name, owner.namespace, spec.api_port),
        "--ca", f"{tls}/ca.crt",
        "--cert", f"{tls}/tls.crt",
        "--key", f"{tls}/tls.key",
        "--host", "0.0.0.0",
        "--port", str(spec.rest_port),
        "--network", owner.name,
        "--kubernetes",
        "--namespace", owner.namespace,
    ]  # fmt: skip


def deployment(owner: ObjectRef, spec: NetworkSpec, image: ConsoleImage) -> dict[str, Any]:
    """`<network>-console`: one replica of `swarm-console`, as the console's ServiceAccount (it checks
    bearer tokens through the API server), its identity Secret mounted at names.TLS_DIR."""
    lbls = labels(owner)
    # tcpSocket: the console answers nothing without credentials, so an HTTP probe would only see 401.
    probe_port = {"tcpSocket": {"port": "rest"}}
    container: dict[str, Any] = {
        "name": "console",
        "image": image.image,
        "imagePullPolicy": image.pull_policy,
        "command": console_args(owner, spec),
        "ports": [{"name": "rest", "containerPort": spec.rest_port, "protocol": "TCP"}],
        "env": common.env({"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}),
        "readinessProbe": {**probe_port, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            **probe_port,
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": common.container_security_context(),
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            {"name": "tls", "mountPath": names.TLS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": common.metadata(names.console(owner.name), owner, lbls),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(owner.name)},
            # One console at a time is plenty; Recreate keeps two from holding the (read-only) etcd user.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": lbls},
                "spec": {
                    "serviceAccountName": names.console(owner.name),
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": common.pod_security_context(),
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "tls",
                            "secret": {
                                "secretName": names.console_tls_secret(owner.name),
                                "defaultMode": 0o440,
                            },
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def rest_service(owner: ObjectRef, spec: NetworkSpec) -> dict[str, Any]:
    """`<network>-rest` (30306): the console pod, of the spec's Service type."""
    return common.service(
        names.rest_service(owner.name),
        owner,
        labels(owner),
        selector(owner.name),
        [("rest", spec.rest_port)],
        service_type=spec.service_type,
        annotations=spec.service_annotations,
    )


def service_account(owner: ObjectRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": common.metadata(names.console(owner.name), owner, labels(owner)),
    }


def _subject(owner: ObjectRef) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": names.console(owner.name), "namespace": owner.namespace}


def role_binding(owner: ObjectRef) -> dict[str, Any]:
    """`<network>-console` RoleBinding: the namespaced rights (custom resource reads) in this namespace."""
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "RoleBinding",
        "metadata": common.metadata(names.console(owner.name), owner, labels(owner)),
        "roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": names.CONSOLE_ROLE},
        "subjects": [_subject(owner)],
    }


def owner_annotation(owner: ObjectRef) -> str:
    return f"{owner.namespace}/{owner.name}/{owner.uid}"


def cluster_role_binding(owner: ObjectRef) -> dict[str, Any]:
    """The ClusterRoleBinding for TokenReview/SubjectAccessReview; no owner reference (see the module
    docstring): the network is named in labels and the `swarmlearning.dev/owner` annotation."""
    meta = common.metadata(names.console_cluster_binding(owner.namespace, owner.name), owner, labels(owner))
    del meta["namespace"], meta["ownerReferences"]
    meta["annotations"] = {names.A_CONSOLE_OWNER: owner_annotation(owner)}
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC_API, "kind": "ClusterRole", "name": names.CONSOLE_REVIEWS_ROLE},
        "subjects": [_subject(owner)],
    }


def tls_secret(owner: ObjectRef, cert: bytes, key: bytes, ca: bytes) -> dict[str, Any]:
    """`<network>-console-tls`: tls.crt, tls.key, ca.crt of the console's identity."""
    return common.tls_secret(names.console_tls_secret(owner.name), owner, labels(owner), cert, key, ca)


def is_available(deployment: dict[str, Any] | None) -> tuple[bool, str]:
    """(available, why): the Deployment's Available condition with a ready replica of its current
    generation."""
    if deployment is None:
        return False, "the console Deployment does not exist yet"
    status = deployment.get("status") or {}
    gen = (deployment.get("metadata") or {}).get("generation", 0)
    if status.get("observedGeneration", 0) < gen:
        return False, "the Deployment controller has not seen the latest console Deployment yet"
    avail = next((c for c in status.get("conditions") or () if c.get("type") == "Available"), None)
    if avail is not None and avail.get("status") == "True" and (status.get("availableReplicas") or 0) >= 1:
        return True, f"Deployment {deployment['metadata']['name']} available"
    ready = status.get("readyReplicas") or 0
    return False, f"console pod not ready ({ready}/1 ready{'; ' + avail['message'] if avail else ''})"
