"""SwarmNetwork: the CA, the SN Services, one pod (+ PVC, + certificate) per member, ordered.

Ordering (like a StatefulSet's OrderedReady, done here so the first member can bootstrap): member 0
(the sentinel) first; member i only once members 0..i-1 are ready, and it joins them; scale-down
removes the highest ordinal first, one at a time. With spec.join there is no sentinel: every member
joins the given endpoints. A member recreated while others are ready joins them (never re-bootstraps).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

from .. import certificates, metrics, names
from .. import status as st
from ..builders import console as cb
from ..builders import network as nb
from ..certificates import KeyPair
from ..kube import Obj, Rejected
from ..settings import ConsoleImage, SettingError
from ..specs import NetworkSpec, ObjectRef, SpecError
from .context import Context
from .pods import is_ready, is_terminating

log = logging.getLogger(__name__)

KIND = "SwarmNetwork"


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Reconcile network `namespace/name` now, or, when a reconcile of it is under way, once more
    after that one (triggers arriving meanwhile are folded into that one rerun)."""
    ctx.triggers.run((names.NETWORKS, namespace, name), lambda: _run(ctx, namespace, name))


def _run(ctx: Context, namespace: str, name: str) -> None:
    with metrics.reconcile(KIND):
        body = ctx.kube.get_custom(names.NETWORKS, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            metrics.observe_network(namespace, name, None)
            if body is None:
                # The garbage collector removes the namespaced children; the console's cluster-scoped
                # binding has no owner reference, so it goes here.
                sweep_console_bindings(ctx)
            return
        _reconcile(ctx, body)


def _reconcile(ctx: Context, body: Obj) -> None:
    owner = ObjectRef.from_body(body)
    old = body.get("status") or {}
    ts = st.now()
    try:
        spec = NetworkSpec.parse(body.get("spec") or {})
    except SpecError as e:
        conds = st.merge_conditions(
            old.get("conditions"), [st.Condition("Ready", False, "InvalidSpec", str(e))], owner.generation, ts
        )
        if st.transitioned(old, conds, "Ready"):
            ctx.event(body, "InvalidSpec", str(e), warning=True)
        ctx.write_status(
            names.NETWORKS,
            body,
            {"phase": st.NetworkPhase.PENDING, "conditions": conds, "observedGeneration": owner.generation},
        )
        return
    try:
        _reconcile_children(ctx, body, owner, spec, old, ts)
    except Rejected as e:
        # A child the API server refuses (admission policy, quota, ...) would fail the same way on every
        # retry: report it instead of raising, the next trigger or resync tries again.
        msg = f"{e}; it and the SN children after it are not created"
        conds = st.merge_conditions(
            old.get("conditions"), [st.Condition("Ready", False, "ChildRejected", msg)], owner.generation, ts
        )
        if st.transitioned(old, conds, "Ready"):
            ctx.event(body, "ChildRejected", msg, warning=True)
        ctx.write_status(
            names.NETWORKS,
            body,
            {
                "phase": old.get("phase") or st.NetworkPhase.PENDING,
                "conditions": conds,
                "observedGeneration": owner.generation,
            },
        )


def _reconcile_children(
    ctx: Context, body: Obj, owner: ObjectRef, spec: NetworkSpec, old: dict[str, Any], ts: str
) -> None:
    ca, ca_cond = ensure_ca(ctx, body, owner, spec)
    if ca is None:
        conds = st.merge_conditions(
            old.get("conditions"),
            [ca_cond, st.Condition("Ready", False, ca_cond.reason, "waiting for a usable CA Secret")],
            owner.generation,
            ts,
        )
        if st.transitioned(old, conds, "CAReady"):
            ctx.event(body, ca_cond.reason, ca_cond.message, warning=True)
        ctx.write_status(
            names.NETWORKS,
            body,
            {"phase": st.NetworkPhase.PENDING, "conditions": conds, "observedGeneration": owner.generation},
        )
        return

    sn_svc = ensure_service(ctx, nb.sn_service(owner, spec))
    ensure_service(ctx, nb.sn_headless_service(owner, spec))

    pods = _members(ctx.kube.find("Pod", owner.namespace, nb.member_selector(owner.name)))
    # A member pod that ended (evicted, failed) is replaced: delete it, the next pass recreates it.
    for ordinal, pod in list(pods.items()):
        if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded") and not is_terminating(pod):
            ctx.kube.delete("Pod", owner.namespace, pod["metadata"]["name"])
            ctx.event(body, "MemberReplaced", f"SN member {ordinal} ended; replacing it", warning=True)
            pods[ordinal] = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": ts}}
    ready = {o for o, p in pods.items() if is_ready(p)}

    _scale_down(ctx, body, owner, spec, pods)
    _scale_up(ctx, body, owner, spec, ca, pods, ready)

    # ------------------------------------------------------------------ status from observation
    members_ready = len([o for o in ready if o < spec.members])
    extra = [o for o in pods if o >= spec.members]
    # Degraded = a member of an unchanged spec that was all Ready is missing or not ready; after a spec
    # change (scale-up) the same observation is Bootstrapping.
    was_ready = (
        old.get("phase") in (st.NetworkPhase.READY, st.NetworkPhase.DEGRADED)
        and old.get("observedGeneration") == owner.generation
    )
    lost = [o for o in range(spec.members) if o not in ready]
    if members_ready == spec.members and not extra:
        phase = st.NetworkPhase.READY
        members_cond = st.Condition(
            "MembersReady", True, "AllMembersReady", f"{members_ready}/{spec.members} ready"
        )
    elif was_ready and lost and members_ready < spec.members:
        phase = st.NetworkPhase.DEGRADED
        members_cond = st.Condition(
            "MembersReady", False, "MemberNotReady", f"members not ready: {', '.join(map(str, sorted(lost)))}"
        )
    elif members_ready == 0:
        phase = st.NetworkPhase.PENDING
        members_cond = st.Condition(
            "MembersReady",
            False,
            "WaitingForSentinel" if not spec.join_endpoints else "WaitingForMember",
            f"0/{spec.members} ready",
        )
    else:
        phase = st.NetworkPhase.BOOTSTRAPPING
        members_cond = st.Condition(
            "MembersReady",
            False,
            "Scaling",
            f"{members_ready}/{spec.members} ready" + (f"; removing members {extra}" if extra else ""),
        )
    new_conds = [ca_cond, members_cond]

    height = old.get("ledgerHeight")
    if ctx.ledger is not None and members_ready > 0:
        ledger_cond = _read_ledger(ctx, owner, spec, ca)
        if ledger_cond[0] is not None:
            height = ledger_cond[0]
        new_conds.append(ledger_cond[1])
    elif members_ready == 0:
        new_conds.append(st.Condition("LedgerReachable", None, "NoReadyMember", "no SN member is ready"))

    new_conds.append(st.Condition("Ready", phase == st.NetworkPhase.READY, phase, members_cond.message))
    console_conds = reconcile_console(ctx, owner, spec, ca, members_ready, old.get("conditions"))
    new_conds += console_conds
    conds = st.merge_conditions(old.get("conditions"), new_conds, owner.generation, ts)
    if not console_conds:
        conds = [c for c in conds if c.get("type") not in CONSOLE_CONDITIONS]
    console_cond = console_conds[0] if console_conds else None
    if console_cond is not None and st.transitioned(old, conds, CONSOLE_READY):
        ctx.event(
            body,
            console_cond.reason
            if console_cond.reason.startswith("Console")
            else f"Console{console_cond.reason}",
            console_cond.message,
            warning=console_cond.status is False
            and console_cond.reason in ("ChildRejected", "InvalidSetting"),
        )
    if old.get("phase") != phase:
        ctx.event(
            body,
            f"Network{phase}",
            f"phase {old.get('phase') or '-'} -> {phase}: {members_cond.message}",
            warning=phase == st.NetworkPhase.DEGRADED,
        )
    new: dict[str, Any] = {
        "phase": phase,
        "membersReady": members_ready,
        "endpoints": nb.endpoints(owner, spec, sn_svc),
        "conditions": conds,
        "observedGeneration": owner.generation,
    }
    if height is not None:
        new["ledgerHeight"] = height
    ctx.write_status(names.NETWORKS, body, new)
    metrics.observe_network(owner.namespace, owner.name, members_ready)


CONSOLE_READY = "ConsoleReady"
"""Condition: the console Deployment (spec.rest.enabled) is available; absent while rest is disabled."""
CONSOLE_LEDGER = "ConsoleLedgerAccess"
"""Condition: the console's etcd user (`<network>-console`, read-only) exists; absent while disabled."""
CONSOLE_CONDITIONS = (CONSOLE_READY, CONSOLE_LEDGER)


def reconcile_console(
    ctx: Context,
    owner: ObjectRef,
    spec: NetworkSpec,
    ca: KeyPair,
    members_ready: int,
    old_conditions: list[dict[str, Any]] | None = None,
) -> list[st.Condition]:
    """The console children when spec.rest.enabled, their removal otherwise; returns ConsoleReady first
    and ConsoleLedgerAccess (nothing when disabled). A refused child only fails ConsoleReady, never the
    SN members.

    The removal runs only while the status still has console conditions (`old_conditions`): they are
    dropped in the same status write that follows a complete removal, so a network that never had a
    console costs no requests for it (its ServiceAccount, RoleBinding and ClusterRoleBinding are not in
    the cache: the chart grants no watch on them)."""
    if not spec.rest_enabled:
        if not any(c.get("type") in CONSOLE_CONDITIONS for c in old_conditions or ()):
            return []
        for kind, name in (
            ("Service", names.rest_service(owner.name)),
            ("Deployment", names.console(owner.name)),
            ("RoleBinding", names.console(owner.name)),
            ("ServiceAccount", names.console(owner.name)),
            ("Secret", names.console_tls_secret(owner.name)),
        ):
            _delete_owned(ctx, kind, owner, name)
        _delete_cluster_binding(ctx, owner.namespace, owner.name, owner.uid)
        return []
    try:
        image = ConsoleImage.from_env()
    except SettingError as e:
        return [st.Condition(CONSOLE_READY, False, "InvalidSetting", f"operator setting: {e}")]
    try:
        ctx.kube.ensure(cb.service_account(owner))
        ctx.kube.ensure(cb.role_binding(owner))
        _ensure_cluster_binding(ctx, owner)
        _ensure_console_secret(ctx, owner, ca)
        _ensure_deployment(ctx, cb.deployment(owner, spec, image))
        ensure_service(ctx, cb.rest_service(owner, spec))
    except Rejected as e:
        return [st.Condition(CONSOLE_READY, False, "ChildRejected", str(e))]
    ok, why = cb.is_available(ctx.kube.get("Deployment", owner.namespace, names.console(owner.name)))
    conds = [st.Condition(CONSOLE_READY, ok, "ConsoleAvailable" if ok else "ConsoleStarting", why)]
    if ctx.ledger is not None and members_ready > 0:
        # The console reads the ledger as etcd user <network>-console (role operator -> swarm-reader); the
        # sentinel only provisions the operator's own reader at bootstrap.
        endpoints = [names.sn_api_endpoint(owner.name, owner.namespace, spec.api_port)]
        done, message = ctx.ledger.user(endpoints, ca, names.console(owner.name), "operator")
        reason = {True: "UserProvisioned", False: "ProvisioningFailed", None: "Provisioning"}[done]
        conds.append(st.Condition(CONSOLE_LEDGER, done, reason, message))
    elif members_ready == 0:
        conds.append(st.Condition(CONSOLE_LEDGER, None, "NoReadyMember", "no SN member is ready"))
    return conds


def _ensure_console_secret(ctx: Context, owner: ObjectRef, ca: KeyPair) -> None:
    """The console's certificate (CN `<network>-console`, role operator), re-issued when the CA changed."""
    name = names.console_tls_secret(owner.name)
    existing = ctx.kube.get("Secret", owner.namespace, name)
    if existing is not None and certificates.signed_by(_field(existing, "tls.crt"), ca.cert):
        return
    pair = certificates.issue(ca, names.console(owner.name), owner.namespace, "operator", cb.hosts(owner))
    secret = cb.tls_secret(owner, pair.cert, pair.key, pair.ca)
    if existing is None:
        ctx.kube.ensure(secret)
    else:
        ctx.kube.patch("Secret", owner.namespace, name, {"data": secret["data"]})


TEMPLATE_HASH = f"{names.GROUP}/template-hash"
"""Annotation on the console Deployment: hash of the desired spec, so a changed spec (image, port) is
patched in and an unchanged one costs no write."""


def _ensure_deployment(ctx: Context, desired: Obj) -> None:
    digest = hashlib.sha256(json.dumps(desired["spec"], sort_keys=True).encode()).hexdigest()[:16]
    desired["metadata"]["annotations"] = {TEMPLATE_HASH: digest}
    meta = desired["metadata"]
    obj, created = ctx.kube.ensure(desired)
    if not created and (obj["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != digest:
        # A merge patch replaces lists (containers, volumes) whole; the template is all ours.
        ctx.kube.patch(
            "Deployment",
            meta["namespace"],
            meta["name"],
            {"metadata": {"annotations": meta["annotations"]}, "spec": desired["spec"]},
        )


def _ensure_cluster_binding(ctx: Context, owner: ObjectRef) -> None:
    """The ClusterRoleBinding, its labels and owner annotation naming this network (one left by a network
    deleted and created again under the same name is taken over, not swept)."""
    desired = cb.cluster_role_binding(owner)
    obj, created = ctx.kube.ensure(desired)
    if created:
        return
    patch = {}
    for field in ("labels", "annotations"):
        want, have = desired["metadata"][field], obj["metadata"].get(field) or {}
        if any(have.get(k) != v for k, v in want.items()):
            patch[field] = want
    if patch:
        ctx.kube.patch("ClusterRoleBinding", "", desired["metadata"]["name"], {"metadata": patch})


def _delete_cluster_binding(ctx: Context, namespace: str, network: str, uid: str | None) -> None:
    """Delete the console's ClusterRoleBinding of network `namespace/network` (of that uid, if given)."""
    name = names.console_cluster_binding(namespace, network)
    obj = ctx.kube.get("ClusterRoleBinding", "", name)
    if obj is None:
        return
    ns, _, rest = ((obj["metadata"].get("annotations") or {}).get(names.A_CONSOLE_OWNER) or "").partition("/")
    owner_name, _, owner_uid = rest.partition("/")
    if (ns, owner_name) == (namespace, network) and (uid is None or owner_uid == uid):
        ctx.kube.delete("ClusterRoleBinding", "", name)


def sweep_console_bindings(ctx: Context) -> int:
    """Delete console ClusterRoleBindings whose network (namespace/name/uid of the owner annotation) no
    longer exists; returns how many. Run when a network is gone (and worth running at resync: a network
    deleted while the operator was down leaves its binding behind)."""
    found = ctx.kube.find(
        "ClusterRoleBinding",
        "",
        {names.L_MANAGED_BY: names.OPERATOR_NAME, names.L_COMPONENT: names.COMPONENT_CONSOLE},
    )
    gone = 0
    for crb in found:
        ref = (crb["metadata"].get("annotations") or {}).get(names.A_CONSOLE_OWNER) or ""
        parts = ref.split("/")
        if len(parts) != 3:
            continue
        net = ctx.kube.get_custom(names.NETWORKS, parts[0], parts[1])
        stale = net is None or net["metadata"].get("uid") != parts[2]
        if stale and ctx.kube.delete("ClusterRoleBinding", "", crb["metadata"]["name"]):
            gone += 1
    return gone


def _members(pods: list[Obj]) -> dict[int, Obj]:
    out: dict[int, Obj] = {}
    for p in pods:
        try:
            out[int(p["metadata"]["labels"][names.L_MEMBER])] = p
        except (KeyError, ValueError):
            continue
    return out


def _scale_down(ctx: Context, body: Obj, owner: ObjectRef, spec: NetworkSpec, pods: dict[int, Obj]) -> None:
    """Remove members >= spec.members, highest first, one at a time (then their PVC and certificate)."""
    extra = sorted(o for o in pods if o >= spec.members)
    if extra:
        top = extra[-1]
        if not is_terminating(pods[top]):
            ctx.kube.delete("Pod", owner.namespace, names.sn_pod(owner.name, top))
            ctx.event(body, "MemberRemoved", f"scaling down to {spec.members}: removing SN member {top}")
        return
    # No extra pods left: clean the data and certificates of removed members (their etcd identity is
    # gone; a later scale-up starts them fresh and they join again).
    for kind, prefix in (
        ("PersistentVolumeClaim", f"{owner.name}-sn-data-"),
        ("Secret", f"{owner.name}-sn-"),
    ):
        for obj in ctx.kube.find(kind, owner.namespace, nb.member_selector(owner.name)):
            ordinal = obj["metadata"].get("labels", {}).get(names.L_MEMBER)
            if (
                ordinal is not None
                and int(ordinal) >= spec.members
                and obj["metadata"]["name"].startswith(prefix)
            ):
                ctx.kube.delete(kind, owner.namespace, obj["metadata"]["name"])


def _scale_up(
    ctx: Context,
    body: Obj,
    owner: ObjectRef,
    spec: NetworkSpec,
    ca: KeyPair,
    pods: dict[int, Obj],
    ready: set[int],
) -> None:
    """Create the lowest missing member once every lower member is ready (one per pass)."""
    for ordinal in range(spec.members):
        if ordinal in pods:
            if ordinal not in ready:
                return  # wait for it before adding the next member
            continue
        if spec.join_endpoints:
            join = list(spec.join_endpoints)
        else:
            join = [
                f"{names.sn_member_host(owner.name, o, owner.namespace)}:{spec.api_port}"
                for o in sorted(ready)
                if o != ordinal
            ]
        _ensure_member_secret(ctx, owner, spec, ca, ordinal)
        if spec.persistent:
            ctx.kube.ensure(nb.sn_pvc(owner, spec, ordinal))
        _, created = ctx.kube.ensure(nb.sn_pod(owner, spec, ordinal, join))
        if created:
            role = "sentinel (bootstraps the ledger)" if not join else f"joining {', '.join(join)}"
            ctx.event(body, "MemberCreated", f"SN member {ordinal} created as {role}")
        return


def _ensure_member_secret(
    ctx: Context, owner: ObjectRef, spec: NetworkSpec, ca: KeyPair, ordinal: int
) -> None:
    """Certificate of one member: CN = its pod name = its etcd member name and etcd user."""
    name = names.sn_tls_secret(owner.name, ordinal)
    existing = ctx.kube.get("Secret", owner.namespace, name)
    if existing is not None and certificates.signed_by(_field(existing, "tls.crt"), ca.cert):
        return
    pair = certificates.issue(
        ca, names.sn_pod(owner.name, ordinal), owner.namespace, "sn", nb.sn_hosts(owner, ordinal)
    )
    secret = nb.sn_tls_secret(owner, ordinal, pair.cert, pair.key, pair.ca)
    if existing is None:
        ctx.kube.ensure(secret)
    else:
        ctx.kube.patch("Secret", owner.namespace, name, {"data": secret["data"]})


def ensure_ca(
    ctx: Context, body: Obj, owner: ObjectRef, spec: NetworkSpec
) -> tuple[KeyPair | None, st.Condition]:
    """The network's CA from Secret spec.ca.secretName (default `<name>-ca`), created when absent."""
    name = names.ca_secret(owner.name, spec.ca_secret_name)
    secret = ctx.kube.get("Secret", owner.namespace, name, read_through=True)
    if secret is None:
        pair = certificates.new_ca(f"{owner.name}.{owner.namespace}.swarm-ca")
        ctx.kube.ensure(nb.ca_secret(owner, name, pair.cert, pair.key))
        ctx.event(body, "CACreated", f"created the swarm CA in Secret {name}")
        secret = ctx.kube.get("Secret", owner.namespace, name, read_through=True)
        if secret is None:
            return None, st.Condition(
                "CAReady", False, "CASecretMissing", f"Secret {name} vanished after creation"
            )
    cert, key = _field(secret, "ca.crt"), _field(secret, "ca.key")
    problem = certificates.ca_problem(cert, key) if cert and key else "it must hold ca.crt and ca.key (PEM)"
    if problem:
        msg = f"Secret {name} (spec.ca.secretName) is no usable CA: {problem}"
        return None, st.Condition("CAReady", False, "InvalidCASecret", msg)
    return KeyPair(cert=cert, key=key), st.Condition("CAReady", True, "CAAvailable", f"CA in Secret {name}")


def read_ca(ctx: Context, namespace: str, network_body: Obj) -> KeyPair | None:
    """The CA of an existing network, or None while its Secret is absent or incomplete."""
    spec = network_body.get("spec") or {}
    name = names.ca_secret(network_body["metadata"]["name"], (spec.get("ca") or {}).get("secretName"))
    secret = ctx.kube.get("Secret", namespace, name, read_through=True)
    if secret is None:
        return None
    cert, key = _field(secret, "ca.crt"), _field(secret, "ca.key")
    return KeyPair(cert=cert, key=key) if cert and key and not certificates.ca_problem(cert, key) else None


def ensure_service(ctx: Context, desired: Obj) -> Obj:
    """Create the Service, or patch the fields we own when they drifted (type, ports, selector,
    annotations). clusterIP/nodePorts the API server allocated are left alone."""
    meta = desired["metadata"]
    obj, created = ctx.kube.ensure(desired)
    if created:
        return obj
    have, want = obj.get("spec") or {}, desired["spec"]
    patch: dict[str, Any] = {}
    if want.get("type") and have.get("type") != want["type"]:
        patch["type"] = want["type"]
    if have.get("selector") != want["selector"]:
        patch["selector"] = want["selector"]
    have_ports = {(p.get("name"), p.get("port"), str(p.get("targetPort"))) for p in have.get("ports") or ()}
    want_ports = {(p["name"], p["port"], str(p["targetPort"])) for p in want["ports"]}
    if have_ports != want_ports:
        patch["ports"] = want["ports"]
    body: dict[str, Any] = {}
    if patch:
        body["spec"] = patch
    want_ann = meta.get("annotations") or {}
    have_ann = obj["metadata"].get("annotations") or {}
    if any(have_ann.get(k) != v for k, v in want_ann.items()):
        body["metadata"] = {"annotations": want_ann}
    if body:
        # A merge patch replaces the ports list whole, so renamed or removed ports go away.
        obj = ctx.kube.patch("Service", meta["namespace"], meta["name"], body)
    return obj


def _delete_owned(ctx: Context, kind: str, owner: ObjectRef, name: str) -> None:
    obj = ctx.kube.get(kind, owner.namespace, name)
    if obj is not None and any(
        r.get("uid") == owner.uid for r in obj["metadata"].get("ownerReferences") or ()
    ):
        ctx.kube.delete(kind, owner.namespace, name)


def _field(secret: Obj, key: str) -> bytes:
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value) if value else b""


def _read_ledger(
    ctx: Context, owner: ObjectRef, spec: NetworkSpec, ca: KeyPair
) -> tuple[int | None, st.Condition]:
    """Ledger height from the last background read (never blocks on the SN)."""
    assert ctx.ledger is not None
    endpoints = [names.sn_api_endpoint(owner.name, owner.namespace, spec.api_port)]
    view, error = ctx.ledger.view(f"network/{owner.namespace}/{owner.name}", endpoints, ca)
    if error is not None:
        return view.height if view else None, st.Condition(
            "LedgerReachable", False, "LedgerUnreachable", f"{error}; ledgerHeight keeps its last value"
        )
    if view is None:
        return None, st.Condition("LedgerReachable", None, "LedgerReading", "first ledger read under way")
    return view.height, st.Condition("LedgerReachable", True, "LedgerRead", f"{view.height} records")
