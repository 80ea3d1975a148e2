"""SwarmNetwork children: one pod (+ PVC) per SN member, the SN Services, the CA Secret."""

from __future__ import annotations

import base64
from typing import Any

from .. import names
from ..specs import NetworkSpec, ObjectRef
from . import common


def member_labels(owner: ObjectRef, ordinal: int | None = None) -> dict[str, str]:
    extra = {names.L_NETWORK: owner.name}
    if ordinal is not None:
        extra[names.L_MEMBER] = str(ordinal)
    return common.labels(owner, names.COMPONENT_SN, **extra)


def member_selector(network: str) -> dict[str, str]:
    """Selects the SN member pods of one network (Service selector, list selector)."""
    return {names.L_NETWORK: network, names.L_COMPONENT: names.COMPONENT_SN}


MAX_MEMBERS = 7
"""spec.members maximum (CRD): the sentinel creates etcd users for every member that may ever join."""


def sn_command(owner: ObjectRef, spec: NetworkSpec, ordinal: int, join: list[str]) -> list[str]:
    """`swarmctl sn start` arguments; an empty `join` makes this member the sentinel (bootstraps).

    The sentinel creates, at bootstrap, the etcd users of all members that may join later (their
    certificate CN = pod name) and the operator's read-only user, so scaling up needs no root access.
    """
    pod = names.sn_pod(owner.name, ordinal)
    args = [
        "swarmctl", "sn", "start",
        "--name", pod,
        "--data-dir", names.SN_DATA_DIR,
        "--advertise-host", names.sn_member_host(owner.name, ordinal, owner.namespace),
        "--listen-host", "0.0.0.0",
        "--peer-port", str(spec.p2p_port),
        "--client-port", str(spec.api_port),
        "--cert-dir", names.TLS_DIR,
    ]  # fmt: skip
    if join:
        args += ["--join", ",".join(join)]
    else:
        for other in range(MAX_MEMBERS):
            if other != ordinal:
                args += ["--provision", f"{names.sn_pod(owner.name, other)}:sn"]
        args += ["--provision", f"{names.LEDGER_READER}:operator"]
    return args


def sn_pod(owner: ObjectRef, spec: NetworkSpec, ordinal: int, join: list[str]) -> dict[str, Any]:
    """Pod of SN member `ordinal`. `join` = SN API endpoints to join; empty only for the sentinel.

    A bare pod (not a StatefulSet) so the operator decides ordering itself: the sentinel first, the
    others one at a time once every lower member is ready, removal highest ordinal first.
    """
    ports = [
        {"name": "p2p", "containerPort": spec.p2p_port, "protocol": "TCP"},
        {"name": "api", "containerPort": spec.api_port, "protocol": "TCP"},
    ]
    if spec.persistent:
        data: dict[str, Any] = {"persistentVolumeClaim": {"claimName": names.sn_pvc(owner.name, ordinal)}}
    else:
        data = {"emptyDir": {}}
    container: dict[str, Any] = {
        "name": "sn",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": sn_command(owner, spec, ordinal, join),
        "ports": ports,
        "env": common.env({"HOME": "/tmp", "SWARM_SN_MEMBER": ordinal}),
        "readinessProbe": {
            "tcpSocket": {"port": "api"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "api"},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": common.container_security_context(),
        "volumeMounts": [
            {"name": "data", "mountPath": names.SN_DATA_DIR},
            {"name": "tls", "mountPath": names.TLS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if spec.resources:
        container["resources"] = spec.resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": common.metadata(names.sn_pod(owner.name, ordinal), owner, member_labels(owner, ordinal)),
        "spec": {
            # hostname + subdomain = a stable DNS name through the headless Service.
            "hostname": names.sn_pod(owner.name, ordinal),
            "subdomain": names.sn_headless(owner.name),
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": common.pod_security_context(),
            "containers": [container],
            "volumes": [
                {"name": "data", **data},
                {
                    "name": "tls",
                    "secret": {"secretName": names.sn_tls_secret(owner.name, ordinal), "defaultMode": 0o440},
                },
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }


def sn_pvc(owner: ObjectRef, spec: NetworkSpec, ordinal: int) -> dict[str, Any]:
    """The ledger (etcd data) volume of one member: the chain survives pod restarts."""
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage_size}},
    }
    if spec.storage_class:
        pvc_spec["storageClassName"] = spec.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": common.metadata(names.sn_pvc(owner.name, ordinal), owner, member_labels(owner, ordinal)),
        "spec": pvc_spec,
    }


def sn_service(owner: ObjectRef, spec: NetworkSpec) -> dict[str, Any]:
    """`<network>-sn`: P2P 30303 and API 30304, of the spec's Service type."""
    return common.service(
        names.sn_service(owner.name),
        owner,
        member_labels(owner),
        member_selector(owner.name),
        [("p2p", spec.p2p_port), ("api", spec.api_port)],
        service_type=spec.service_type,
        annotations=spec.service_annotations,
    )


def sn_headless_service(owner: ObjectRef, spec: NetworkSpec) -> dict[str, Any]:
    """`<network>-sn-peers`: headless, publishes not-ready members so joiners find each other."""
    return common.service(
        names.sn_headless(owner.name),
        owner,
        member_labels(owner),
        member_selector(owner.name),
        [("p2p", spec.p2p_port), ("api", spec.api_port)],
        headless=True,
    )


def ca_secret(owner: ObjectRef, name: str, ca_crt: bytes, ca_key: bytes) -> dict[str, Any]:
    """The swarm CA (`ca.crt`, `ca.key`), created by the operator when the user supplied none."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": common.metadata(name, owner, member_labels(owner)),
        "data": {
            "ca.crt": base64.b64encode(ca_crt).decode(),
            "ca.key": base64.b64encode(ca_key).decode(),
        },
    }


def sn_tls_secret(owner: ObjectRef, ordinal: int, cert: bytes, key: bytes, ca: bytes) -> dict[str, Any]:
    """Certificate of SN member `ordinal` (tls.crt, tls.key, ca.crt)."""
    return common.tls_secret(
        names.sn_tls_secret(owner.name, ordinal), owner, member_labels(owner, ordinal), cert, key, ca
    )


def sn_hosts(owner: ObjectRef, ordinal: int) -> list[str]:
    """SANs of a member's certificate: its stable DNS name, the SN Service names, loopback."""
    ns = owner.namespace
    host = names.sn_member_host(owner.name, ordinal, ns)
    svc = names.sn_service(owner.name)
    return [
        host,
        f"{host}.cluster.local",
        svc,
        f"{svc}.{ns}",
        f"{svc}.{ns}.svc",
        f"{svc}.{ns}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ]


def endpoints(owner: ObjectRef, spec: NetworkSpec, service: dict[str, Any] | None) -> list[str]:
    """SN API endpoints (`host:port`): in-cluster DNS, plus external addresses of the observed Service."""
    out = [names.sn_api_endpoint(owner.name, owner.namespace, spec.api_port)]
    if service:
        for ingress in (service.get("status") or {}).get("loadBalancer", {}).get("ingress") or []:
            host = ingress.get("ip") or ingress.get("hostname")
            if host:
                out.append(f"{host}:{spec.api_port}")
    return out
