"""LearningNode: identity certificate from the network's CA, SL Service, status from its task pods."""

from __future__ import annotations

import base64
import logging
from typing import Any

from .. import certificates, metrics, names
from .. import status as st
from ..builders import learning_node as lb
from ..builders import task as tb
from ..kube import Obj, Rejected
from ..specs import NodeSpec, ObjectRef, SpecError
from . import network as network_reconciler
from .context import Context
from .pods import is_active

log = logging.getLogger(__name__)

KIND = "LearningNode"


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Reconcile learning node `namespace/name` now, or, when a reconcile of it is under way, once more
    after that one (triggers arriving meanwhile are folded into that one rerun)."""
    ctx.triggers.run((names.NODES, namespace, name), lambda: _run(ctx, namespace, name))


def _run(ctx: Context, namespace: str, name: str) -> None:
    with metrics.reconcile(KIND):
        body = ctx.kube.get_custom(names.NODES, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        _reconcile(ctx, body)


def _error(
    ctx: Context, body: Obj, owner: ObjectRef, cond: st.Condition, phase: str = st.NodePhase.ERROR
) -> None:
    old = body.get("status") or {}
    conds = st.merge_conditions(
        old.get("conditions"),
        [cond, st.Condition("Ready", False, cond.reason, cond.message)],
        owner.generation,
        st.now(),
    )
    if st.transitioned(old, conds, "Ready"):
        ctx.event(body, cond.reason, cond.message, warning=phase == st.NodePhase.ERROR)
    ctx.write_status(
        names.NODES, body, {"phase": phase, "conditions": conds, "observedGeneration": owner.generation}
    )


def _reconcile(ctx: Context, body: Obj) -> None:
    owner = ObjectRef.from_body(body)
    old = body.get("status") or {}
    try:
        spec = NodeSpec.parse(body.get("spec") or {})
    except SpecError as e:
        _error(ctx, body, owner, st.Condition("Valid", False, "InvalidSpec", str(e)))
        return
    if owner.name == names.console(spec.network):
        # The console's certificate CN is its etcd user: an SL node of that name would share (and
        # widen) the read-only console's identity.
        reserved = (
            f"the name {owner.name!r} is reserved for the console of SwarmNetwork {spec.network!r} "
            "(its certificate and read-only etcd user); choose another LearningNode name"
        )
        _error(ctx, body, owner, st.Condition("Valid", False, "ReservedName", reserved))
        return
    net = ctx.kube.get_custom(names.NETWORKS, owner.namespace, spec.network)
    if net is None:
        _error(
            ctx,
            body,
            owner,
            st.Condition(
                "NetworkFound",
                False,
                "NetworkNotFound",
                f"SwarmNetwork {spec.network!r} (spec.network) does not exist in namespace {owner.namespace}",
            ),
        )
        return
    ca = network_reconciler.read_ca(ctx, owner.namespace, net)
    if ca is None:
        _error(
            ctx,
            body,
            owner,
            st.Condition(
                "CertificateReady",
                False,
                "CAUnavailable",
                f"the CA Secret of SwarmNetwork {spec.network!r} (spec.network) is missing or not usable yet",
            ),
            phase=st.NodePhase.PENDING,
        )
        return

    try:
        secret_name = _ensure_children(ctx, body, owner, spec, ca)
    except Rejected as e:
        # Refused by the API server (admission policy, quota, ...): the same on every retry, so report it.
        _error(ctx, body, owner, st.Condition("ChildrenCreated", False, "ChildRejected", str(e)))
        return

    conds = [
        st.Condition("NetworkFound", True, "NetworkFound", f"SwarmNetwork {spec.network}"),
        st.Condition("CertificateReady", True, "CertificateIssued", f"Secret {secret_name}"),
    ]
    if ctx.ledger is not None:
        conds.append(_provision(ctx, owner, net, ca))

    # Training or not: observed from the task pods that run on this node.
    pods = ctx.kube.find("Pod", owner.namespace, tb.node_pods_selector(owner.name))
    active = sorted(p["metadata"]["labels"].get(names.L_TASK, "") for p in pods if is_active(p))
    if active:
        phase, task = st.NodePhase.TRAINING, active[0]
    elif pods:
        phase, task = st.NodePhase.IDLE, None
    else:
        phase, task = st.NodePhase.READY, None
    conds.append(st.Condition("Ready", True, phase, f"training {task}" if task else "no task running"))
    merged = st.merge_conditions(old.get("conditions"), conds, owner.generation, st.now())
    if old.get("phase") != phase:
        ctx.event(
            body,
            f"Node{phase}",
            f"phase {old.get('phase') or '-'} -> {phase}" + (f" ({task})" if task else ""),
        )
    new: dict[str, Any] = {
        "phase": phase,
        "currentTask": task,  # None removes the field (merge patch)
        "certificateSecret": secret_name,
        "endpoint": lb.endpoint(owner, spec),
        "conditions": merged,
        "observedGeneration": owner.generation,
    }
    if task is None and "currentTask" not in old:
        del new["currentTask"]
    ctx.write_status(names.NODES, body, new)


def _ensure_children(
    ctx: Context, body: Obj, owner: ObjectRef, spec: NodeSpec, ca: certificates.KeyPair
) -> str:
    """The identity Secret (issued once, re-issued only when the network's CA changed) and the SL
    Service; returns the Secret's name."""
    secret_name = names.identity_secret(owner.name)
    secret = ctx.kube.get("Secret", owner.namespace, secret_name)
    current = base64.b64decode((secret or {}).get("data", {}).get("tls.crt") or b"")
    if secret is None or not certificates.signed_by(current, ca.cert):
        pair = certificates.issue(
            ca, owner.name, spec.organisation or owner.namespace, "sl", lb.sl_dns_names(owner)
        )
        desired = lb.identity_secret(owner, spec, pair.cert, pair.key, pair.ca)
        if secret is None:
            ctx.kube.ensure(desired)
        else:
            ctx.kube.patch("Secret", owner.namespace, secret_name, {"data": desired["data"]})
        ctx.event(
            body,
            "CertificateIssued",
            f"identity certificate CN={owner.name} issued into Secret {secret_name}",
        )
    network_reconciler.ensure_service(ctx, lb.sl_service(owner, spec))
    return secret_name


def _provision(ctx: Context, owner: ObjectRef, net: Obj, ca: certificates.KeyPair) -> st.Condition:
    """Create this site's etcd user in the background (the SL node cannot authenticate before it exists)."""
    assert ctx.ledger is not None
    if not (net.get("status") or {}).get("membersReady"):
        return st.Condition("LedgerAccess", None, "NetworkNotReady", "no SN member ready yet")
    api_port = ((net.get("spec") or {}).get("service") or {}).get("apiPort") or names.API_PORT
    endpoints = [names.sn_api_endpoint(net["metadata"]["name"], owner.namespace, int(api_port))]
    done, message = ctx.ledger.user(endpoints, ca, owner.name, "sl")
    if done is None:
        return st.Condition("LedgerAccess", None, "Provisioning", message)
    return st.Condition("LedgerAccess", done, "UserProvisioned" if done else "ProvisioningFailed", message)
