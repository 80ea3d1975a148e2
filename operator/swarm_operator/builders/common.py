"""Pieces every child object shares: labels, owner references, security contexts, Services."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from .. import names
from ..specs import ObjectRef


def labels(owner: ObjectRef, component: str, **extra: str) -> dict[str, str]:
    """Labels of a child: the standard app.kubernetes.io set plus ours for label selection."""
    out = {
        names.L_NAME: "swarm-learning",
        names.L_PART_OF: "swarm-learning",
        names.L_MANAGED_BY: names.OPERATOR_NAME,
        names.L_INSTANCE: owner.name,
        names.L_COMPONENT: component,
    }
    out.update(extra)
    return out


def owner_reference(owner: ObjectRef) -> dict[str, Any]:
    """Controller owner reference: the garbage collector deletes the child with its owner."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str, owner: ObjectRef, lbls: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(lbls),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    """Non-root pods; fsGroup makes PVC and emptyDir volumes writable for the node uid."""
    return {
        "runAsNonRoot": True,
        "runAsUser": names.NODE_UID,
        "runAsGroup": names.NODE_UID,
        "fsGroup": names.NODE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Least privilege: read-only root file system (writable paths are emptyDir volumes)."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def service(
    name: str,
    owner: ObjectRef,
    lbls: Mapping[str, str],
    selector: Mapping[str, str],
    ports: list[tuple[str, int]],
    service_type: str = "ClusterIP",
    annotations: Mapping[str, str] | None = None,
    headless: bool = False,
) -> dict[str, Any]:
    """A Service whose ports map 1:1 to same-numbered, same-named container ports."""
    spec: dict[str, Any] = {
        "selector": dict(selector),
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
    }
    if headless:
        # Peers must resolve each other while still starting (an etcd member joins before it is Ready).
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    else:
        spec["type"] = service_type
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, owner, lbls, annotations),
        "spec": spec,
    }


def env(values: Mapping[str, str | int | float | bool]) -> list[dict[str, str]]:
    """Environment list in a stable order; booleans as `true`/`false`."""
    return [
        {"name": k, "value": str(v).lower() if isinstance(v, bool) else str(v)} for k, v in values.items()
    ]


def tls_secret(
    name: str, owner: ObjectRef, lbls: Mapping[str, str], cert_pem: bytes, key_pem: bytes, ca_pem: bytes
) -> dict[str, Any]:
    """A kubernetes.io/tls Secret carrying ca.crt too (what the node images mount at /etc/swarm/tls)."""

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata(name, owner, lbls),
        "data": {"tls.crt": b64(cert_pem), "tls.key": b64(key_pem), "ca.crt": b64(ca_pem)},
    }
