"""LearningNode children: the SL Service (30305) and the identity certificate Secret."""

from __future__ import annotations

from typing import Any

from .. import names
from ..specs import NodeSpec, ObjectRef
from . import common


def node_labels(owner: ObjectRef, spec: NodeSpec) -> dict[str, str]:
    return common.labels(
        owner, names.COMPONENT_SL, **{names.L_NODE: owner.name, names.L_NETWORK: spec.network}
    )


def sl_selector(node: str) -> dict[str, str]:
    """Selects the task pods running on this LearningNode (at most one is active at a time)."""
    return {names.L_NODE: node, names.L_COMPONENT: names.COMPONENT_TASK}


def sl_service(owner: ObjectRef, spec: NodeSpec) -> dict[str, Any]:
    """`<node>-sl`: the SL P2P port (30305) where the round leader pulls this site's weights."""
    return common.service(
        names.sl_service(owner.name),
        owner,
        node_labels(owner, spec),
        sl_selector(owner.name),
        [("sl", spec.port)],
        service_type=spec.service_type,
    )


def sl_dns_names(owner: ObjectRef) -> list[str]:
    """SANs of a site's identity certificate: the names peers use to reach its SL Service."""
    svc, ns = names.sl_service(owner.name), owner.namespace
    return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]


def identity_secret(owner: ObjectRef, spec: NodeSpec, cert: bytes, key: bytes, ca: bytes) -> dict[str, Any]:
    """`<node>-identity`: tls.crt, tls.key issued by the network's CA, and ca.crt."""
    return common.tls_secret(
        names.identity_secret(owner.name), owner, node_labels(owner, spec), cert, key, ca
    )


def endpoint(owner: ObjectRef, spec: NodeSpec) -> str:
    """In-cluster `host:port` of the SL node."""
    return f"{names.sl_service(owner.name)}.{owner.namespace}.svc:{spec.port}"
