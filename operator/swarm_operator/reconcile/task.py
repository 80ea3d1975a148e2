"""SwarmTask, the SWOP role: validate, wait for prerequisites and peers, run one pod per peer, apply the
failure policy, decide the outcome, report progress from pods and the ledger.

Nothing is created until every check passed (network exists, prerequisites Succeeded, enough free
LearningNodes); then the chosen peers are fixed in status.peers, so a restarted operator resumes the
same run. Pods are named `<task>-<node>-<attempt>`: a create after a restart hits the existing pod
instead of duplicating it, and failed attempts stay for their logs.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import metrics, names
from .. import status as st
from ..builders import task as tb
from ..builders.task import Peer
from ..kube import Conflict, Obj, Rejected
from ..ledger_reader import LedgerView
from ..selection import Candidate, select_peers
from ..specs import NodeSpec, ObjectRef, SpecError, TaskSpec
from . import network as network_reconciler
from .context import Context
from .pods import attempt, failure_reason, is_active, is_terminating, phase

log = logging.getLogger(__name__)

KIND = "SwarmTask"


def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Reconcile task `namespace/name` now, or, when a reconcile of it is under way, once more
    after that one (triggers arriving meanwhile are folded into that one rerun)."""
    ctx.triggers.run((names.TASKS, namespace, name), lambda: _run(ctx, namespace, name))


def _run(ctx: Context, namespace: str, name: str) -> None:
    with metrics.reconcile(KIND):
        body = ctx.kube.get_custom(names.TASKS, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            metrics.observe_task(namespace, name, None, None)
            return
        _reconcile(ctx, body)
        status = body.get("status") or {}
        latest = ctx.kube.get_custom(names.TASKS, namespace, name)
        if latest is not None:
            status = latest.get("status") or {}
        metrics.observe_task(
            namespace, name, status.get("phase") or st.TaskPhase.PENDING, status.get("round")
        )


@dataclass(frozen=True)
class NodeOutcome:
    """What one peer's pods say: its latest attempt's phase, restarts so far, and whether it is finished."""

    name: str
    phase: str
    restarts: int
    done_ok: bool = False
    done_failed: bool = False
    pod: Obj | None = None
    reason: str = ""
    """Why its latest pod failed (container reason and exit code), empty otherwise."""


def _write(
    ctx: Context,
    body: Obj,
    owner: ObjectRef,
    phase: str,
    conds: list[st.Condition],
    extra: dict[str, Any] | None = None,
    event: tuple[str, str, bool] | None = None,
) -> None:
    old = body.get("status") or {}
    merged = st.merge_conditions(old.get("conditions"), conds, owner.generation, st.now())
    new: dict[str, Any] = {"phase": phase, "conditions": merged, "observedGeneration": owner.generation}
    new.update(extra or {})
    if event is not None and (
        old.get("phase") != phase or any(st.transitioned(old, merged, c.type) for c in conds)
    ):
        ctx.event(body, event[0], event[1], warning=event[2])
    ctx.write_status(names.TASKS, body, new)


def _wait(ctx: Context, body: Obj, owner: ObjectRef, cond_type: str, reason: str, message: str) -> None:
    """Phase Waiting with a condition saying what for, and a Warning Event when that changes."""
    _write(
        ctx,
        body,
        owner,
        st.TaskPhase.WAITING,
        [st.Condition(cond_type, False, reason, message), st.Condition("Running", False, reason, message)],
        event=(reason, message, True),
    )


def _reconcile(ctx: Context, body: Obj) -> None:
    owner = ObjectRef.from_body(body)
    old = body.get("status") or {}
    try:
        spec = TaskSpec.parse(body.get("spec") or {})
    except SpecError as e:
        _write(
            ctx,
            body,
            owner,
            st.TaskPhase.FAILED,
            [st.Condition("Failed", True, "InvalidSpec", str(e))],
            {"completionTime": old.get("completionTime") or st.now()},
            event=("InvalidSpec", str(e), True),
        )
        return
    if old.get("phase") in st.TaskPhase.TERMINAL:
        _stop_leftovers(ctx, owner)
        # The ledger is read in the background: the last rounds may be committed after the view the
        # final verdict was written with. Keep folding them in (the periodic resync brings us here).
        net = ctx.kube.get_custom(names.NETWORKS, owner.namespace, spec.network)
        progress = _progress(ctx, owner, spec, net) if net is not None else None
        if progress is not None:
            ctx.write_status(names.TASKS, body, {**old, **_ledger_fields(progress, old)})
        return

    # ------------------------------------------------------------ checks before creating anything
    net = ctx.kube.get_custom(names.NETWORKS, owner.namespace, spec.network)
    if net is None:
        _wait(
            ctx,
            body,
            owner,
            "NetworkReady",
            "NetworkNotFound",
            f"SwarmNetwork {spec.network!r} (spec.network) does not exist in namespace {owner.namespace}",
        )
        return
    net_status = net.get("status") or {}
    if not net_status.get("membersReady"):
        _wait(
            ctx,
            body,
            owner,
            "NetworkReady",
            "NetworkNotReady",
            f"SwarmNetwork {spec.network!r} (spec.network) has no ready SN member yet"
            f" (phase {net_status.get('phase') or '-'})",
        )
        return
    pending, failed = [], []
    for pre in spec.prerequisites:
        pre_body = ctx.kube.get_custom(names.TASKS, owner.namespace, pre)
        pre_phase = (pre_body or {}).get("status", {}).get("phase") if pre_body else None
        if pre_phase == st.TaskPhase.FAILED:
            failed.append(pre)
        elif pre_phase != st.TaskPhase.SUCCEEDED:
            pending.append(f"{pre} ({pre_phase or 'missing'})")
    if failed:
        msg = f"prerequisite task(s) {', '.join(failed)} (spec.prerequisites) Failed; this task will not run"
        _write(
            ctx,
            body,
            owner,
            st.TaskPhase.FAILED,
            [
                st.Condition("PrerequisitesMet", False, "PrerequisiteFailed", msg),
                st.Condition("Failed", True, "PrerequisiteFailed", msg),
            ],
            {"completionTime": st.now()},
            event=("PrerequisiteFailed", msg, True),
        )
        return
    if pending:
        _wait(
            ctx,
            body,
            owner,
            "PrerequisitesMet",
            "PrerequisitesPending",
            f"waiting for the spec.prerequisites task(s) to succeed: {', '.join(pending)}",
        )
        return

    nodes = {n["metadata"]["name"]: n for n in ctx.kube.list_custom(names.NODES, owner.namespace)}
    chosen = [str(p) for p in old.get("peers") or ()]
    if len(chosen) != spec.peers:
        # One selection at a time per namespace: two tasks must not both take the same free site.
        with ctx.locks.hold("peer-selection", owner.namespace, ""):
            claimed = _claimed_sites(ctx, owner)
            selection = select_peers(
                owner.name,
                spec.network,
                spec.node_selector,
                spec.peers,
                [
                    Candidate(
                        name=n,
                        labels=b["metadata"].get("labels") or {},
                        network=(b.get("spec") or {}).get("network", ""),
                        # A site another task holds (chosen or running) is busy, whatever its status says yet.
                        phase="Training" if n in claimed else (b.get("status") or {}).get("phase"),
                        current_task=claimed.get(n) or (b.get("status") or {}).get("currentTask"),
                    )
                    for n, b in nodes.items()
                ],
            )
            if not selection.ok:
                assert selection.reason is not None
                _wait(ctx, body, owner, "PeersAssigned", selection.reason, selection.message)
                return
            chosen = list(selection.peers)
            # Fix the choice before creating pods: a restart must not choose again.
            _write(
                ctx,
                body,
                owner,
                st.TaskPhase.PENDING,
                [
                    st.Condition("PrerequisitesMet", True, "PrerequisitesMet", "all prerequisites Succeeded"),
                    st.Condition("NetworkReady", True, "NetworkFound", f"SwarmNetwork {spec.network}"),
                    st.Condition("PeersAssigned", True, "PeersAssigned", ", ".join(chosen)),
                ],
                {"peers": chosen},
                event=("PeersAssigned", f"running on {', '.join(chosen)}", False),
            )
        # One status patch per reconcile: the watch event of this one brings the next pass, which
        # creates the pods (the choice is in the cache already, written through).
        return

    # ------------------------------------------------------------------------ run and observe
    pods = ctx.kube.find("Pod", owner.namespace, tb.task_selector(owner.name))
    by_node: dict[str, list[Obj]] = {}
    for p in pods:
        by_node.setdefault(p["metadata"]["labels"].get(names.L_NODE, ""), []).append(p)
    endpoints = [
        names.sn_api_endpoint(
            spec.network,
            owner.namespace,
            int(((net.get("spec") or {}).get("service") or {}).get("apiPort") or names.API_PORT),
        )
    ]
    outcomes: list[NodeOutcome] = []
    to_create: list[tuple[Peer, int]] = []
    for index, node in enumerate(chosen):
        node_pods = sorted(by_node.get(node, []), key=attempt)
        outcome, next_attempt = _observe(spec, node, node_pods)
        outcomes.append(outcome)
        if next_attempt is not None:
            nbody = nodes.get(node)
            if nbody is None:
                outcomes[-1] = NodeOutcome(
                    node, "Failed", outcome.restarts, done_failed=True, reason=f"LearningNode {node} is gone"
                )
                continue
            try:
                nspec = NodeSpec.parse(nbody.get("spec") or {})
            except SpecError as e:
                outcomes[-1] = NodeOutcome(
                    node, "Failed", outcome.restarts, done_failed=True, reason=f"LearningNode {node}: {e}"
                )
                continue
            to_create.append((Peer(ObjectRef.from_body(nbody), nspec, index, len(chosen)), next_attempt))

    verdict = _verdict(spec, outcomes)
    pods_cond = st.Condition("PodsCreated", True, "PodsCreated", "every peer has its pod")
    if verdict is None and to_create:
        created, refused = _create_pods(ctx, body, owner, spec, to_create, endpoints)
        if refused is not None:
            if not pods and not created:
                _wait(ctx, body, owner, "PodsCreated", "PodRejected", refused)
                return
            pods_cond = st.Condition("PodsCreated", False, "PodRejected", refused)

    progress = _progress(ctx, owner, spec, net)
    node_status = []
    for o in outcomes:
        entry: dict[str, Any] = {"name": o.name, "phase": o.phase, "restarts": o.restarts}
        if o.reason:
            entry["message"] = o.reason
        if progress is not None and o.name in progress.nodes:
            np = progress.nodes[o.name]
            entry["round"] = np.round
            if np.loss is not None:
                entry["loss"] = np.loss
            if np.metric is not None:
                entry["metric"] = np.metric
        else:
            for prev in old.get("nodes") or ():
                if prev.get("name") == o.name:
                    entry.update({k: prev[k] for k in ("round", "loss", "metric") if k in prev})
        node_status.append(entry)
    extra: dict[str, Any] = {
        "peers": chosen,
        "nodes": node_status,
        "startTime": old.get("startTime") or st.now(),
    }
    extra.update(_ledger_fields(progress, old))
    location = _model_location(owner, nodes, outcomes)
    if location:
        extra["modelLocation"] = location

    ok = sum(1 for o in outcomes if o.done_ok)
    base = [
        st.Condition("PrerequisitesMet", True, "PrerequisitesMet", "all prerequisites Succeeded"),
        st.Condition("NetworkReady", True, "NetworkFound", f"SwarmNetwork {spec.network}"),
        st.Condition("PeersAssigned", True, "PeersAssigned", ", ".join(chosen)),
        pods_cond,
    ]
    if verdict is None:
        running = sum(1 for o in outcomes if not (o.done_ok or o.done_failed))
        msg = f"{running} running, {ok} succeeded of {spec.peers} peers (quorum {spec.sync.min_peers})"
        if not pods_cond.status:
            event = (pods_cond.reason, pods_cond.message, True)
            _write(ctx, body, owner, st.TaskPhase.RUNNING, base, extra, event=event)
            return
        _write(
            ctx,
            body,
            owner,
            st.TaskPhase.RUNNING,
            [*base, st.Condition("Running", True, "PodsRunning", msg)],
            extra,
            event=("Running", msg, False),
        )
        return
    succeeded, reason, msg = verdict
    extra["completionTime"] = old.get("completionTime") or st.now()
    if succeeded:
        _write(
            ctx,
            body,
            owner,
            st.TaskPhase.SUCCEEDED,
            [
                *base,
                st.Condition("Running", False, "Finished", msg),
                st.Condition("Complete", True, reason, msg),
            ],
            extra,
            event=(reason, msg, False),
        )
    else:
        _stop_leftovers(ctx, owner)
        _write(
            ctx,
            body,
            owner,
            st.TaskPhase.FAILED,
            [
                *base,
                st.Condition("Running", False, "Finished", msg),
                st.Condition("Failed", True, reason, msg),
            ],
            extra,
            event=(reason, msg, True),
        )


def _create_pods(
    ctx: Context,
    body: Obj,
    owner: ObjectRef,
    spec: TaskSpec,
    to_create: list[tuple[Peer, int]],
    endpoints: list[str],
) -> tuple[list[str], str | None]:
    """Create the pods of `to_create` all or none; returns (names created, why not all were).

    Each pod is first checked by a server-side dry run (every admission check: schema, Pod Security,
    admission policies), so one peer's refused pod never leaves the others running half a task. Only
    what a dry run cannot see (a quota used up by this very batch) can still refuse a later pod.
    """
    desired = [(peer, n, tb.task_pod(owner, spec, peer, n, endpoints)) for peer, n in to_create]
    problems = [c for peer, _, _ in desired if (c := mount_clash(spec, peer.ref.name, peer.spec))]
    if problems:
        return [], "; ".join(problems) + "; no pod of this batch was created"

    def dry_run(item: tuple[Peer, int, Obj]) -> str | None:
        peer, _, pod = item
        try:
            ctx.kube.create(pod, dry_run=True)
        except Conflict:
            return None  # it exists already (a concurrent pass created it): nothing to create
        except Rejected as e:
            return f"the pod of LearningNode {peer.ref.name} is refused by the API server: {e.detail}"
        return None

    def create(item: tuple[Peer, int, Obj]) -> bool | Rejected:
        try:
            return ctx.kube.ensure(item[2])[1]
        except Rejected as e:
            return e

    # The requests of a batch (2,000 peers: 4,000 requests) go out CREATE_PARALLELISM at a time: each
    # waits on the API server, not on us.
    with ThreadPoolExecutor(max_workers=min(CREATE_PARALLELISM, len(desired))) as pool:
        problems = [p for p in pool.map(dry_run, desired) if p]
        if problems:
            return [], "; ".join(problems) + "; no pod of this batch was created"
        outcomes = list(pool.map(create, desired))
    created: list[str] = []
    refused: list[str] = []
    for (peer, n, pod), outcome in zip(desired, outcomes, strict=True):
        if isinstance(outcome, Rejected):
            if not refused:
                refused.append(
                    f"the pod of LearningNode {peer.ref.name} is refused by the API server: {outcome.detail}"
                )
            refused.append(pod["metadata"]["name"])
        elif outcome:
            created.append(pod["metadata"]["name"])
            if n > 0:
                ctx.event(
                    body,
                    "PodRestarted",
                    f"pod of {peer.ref.name} failed; started attempt {n} (restart {n}/{spec.max_restarts})",
                    warning=True,
                )
    if refused:
        return created, f"{refused[0]}; missing pods: {', '.join(refused[1:])}"
    return created, None


CREATE_PARALLELISM = 8
"""Concurrent API requests while creating the pods of one task."""


def mount_clash(spec: TaskSpec, node: str, node_spec: NodeSpec) -> str | None:
    """Why the task's pod on `node` would mount two volumes at one path, or None (the CRDs cannot see
    across objects: spec.modelOutput.path of the task against spec.data.mountPath of the LearningNode)."""
    if spec.model_output_path != node_spec.data.mount_path:
        return None
    return (
        f"spec.modelOutput.path {spec.model_output_path} is also LearningNode {node}'s spec.data.mountPath;"
        " choose another spec.modelOutput.path"
    )


def _claimed_sites(ctx: Context, owner: ObjectRef) -> dict[str, str]:
    """Sites held by other tasks: in the peers of an unfinished task, or running one of its pods."""
    claimed: dict[str, str] = {}
    for t in ctx.kube.list_custom(names.TASKS, owner.namespace):
        st_ = t.get("status") or {}
        if t["metadata"]["name"] != owner.name and st_.get("phase") not in st.TaskPhase.TERMINAL:
            for peer in st_.get("peers") or ():
                claimed.setdefault(str(peer), t["metadata"]["name"])
    for p in ctx.kube.find("Pod", owner.namespace, {names.L_COMPONENT: names.COMPONENT_TASK}):
        labels = p["metadata"].get("labels") or {}
        if is_active(p) and labels.get(names.L_TASK) != owner.name and labels.get(names.L_NODE):
            claimed.setdefault(labels[names.L_NODE], labels.get(names.L_TASK, ""))
    return claimed


def _observe(spec: TaskSpec, node: str, pods: list[Obj]) -> tuple[NodeOutcome, int | None]:
    """Outcome of one peer from its pods (sorted by attempt) and the attempt to create next, if any."""
    if not pods:
        return NodeOutcome(node, "Pending", 0), 0
    latest = pods[-1]
    n = attempt(latest)
    restarts = max(n, 0)
    p = phase(latest)
    if p == "Succeeded":
        return NodeOutcome(node, p, restarts, done_ok=True, pod=latest), None
    if is_terminating(latest):
        # Deleted by someone while running: start the same attempt again once it is gone. Checked before
        # Failed: the kubelet's SIGTERM usually makes the deleted pod Failed before it is gone, and that
        # is no failure of the program (it must neither use up maxRestarts nor trigger FailTask).
        return NodeOutcome(node, "Pending", restarts, pod=latest), None
    if p == "Failed":
        if spec.pod_failed == "Restart" and restarts < spec.max_restarts:
            return NodeOutcome(node, "Restarting", restarts, pod=latest, reason=failure_reason(latest)), n + 1
        return NodeOutcome(
            node, p, restarts, done_failed=True, pod=latest, reason=failure_reason(latest)
        ), None
    return NodeOutcome(node, p, restarts, pod=latest), None


def _verdict(spec: TaskSpec, outcomes: list[NodeOutcome]) -> tuple[bool, str, str] | None:
    """(succeeded, reason, message) once the outcome is decided, else None.

    FailTask: the first finally failed peer fails the task. Otherwise the task ends when every peer
    finished: Succeeded when at least minPeers succeeded. It fails early once quorum is out of reach.
    """
    q = spec.sync.min_peers
    ok = [o.name for o in outcomes if o.done_ok]
    bad = [o.name for o in outcomes if o.done_failed]
    why = "; ".join(f"{o.name}: {o.reason}" for o in outcomes if o.done_failed and o.reason)
    open_ = [o.name for o in outcomes if not (o.done_ok or o.done_failed)]
    if bad and spec.pod_failed == "FailTask":
        return (
            False,
            "PodFailed",
            f"pod of {', '.join(bad)} failed and spec.failurePolicy.podFailed=FailTask"
            + (f" ({why})" if why else ""),
        )
    if len(ok) + len(open_) < q:
        return (
            False,
            "QuorumNotReached",
            (
                f"only {len(ok)} peer(s) succeeded and {len(open_)} still running, fewer than minPeers={q};"
                f" failed: {', '.join(bad)} (after up to {spec.max_restarts} restarts)"
                + (f"; {why}" if why else "")
            ),
        )
    if not open_:
        return True, "Succeeded", f"{len(ok)} of {spec.peers} peers succeeded (quorum {q})"
    return None


def _stop_leftovers(ctx: Context, owner: ObjectRef) -> None:
    """A finished task holds no LearningNode: delete pods still running (failed ones stay for logs)."""
    for p in ctx.kube.find("Pod", owner.namespace, tb.task_selector(owner.name)):
        if is_active(p):
            ctx.kube.delete("Pod", owner.namespace, p["metadata"]["name"])


def _progress(ctx: Context, owner: ObjectRef, spec: TaskSpec, net: Obj) -> LedgerView | None:
    """The contract's rounds from the last background ledger read (None until one succeeded)."""
    if ctx.ledger is None or not (net.get("status") or {}).get("membersReady"):
        return None
    ca = network_reconciler.read_ca(ctx, owner.namespace, net)
    if ca is None:
        return None
    api_port = int(((net.get("spec") or {}).get("service") or {}).get("apiPort") or names.API_PORT)
    endpoints = [names.sn_api_endpoint(spec.network, owner.namespace, api_port)]
    view, _ = ctx.ledger.view(
        f"task/{owner.namespace}/{owner.name}", endpoints, ca, spec.contract(owner.name)
    )
    return view


def _ledger_fields(progress: LedgerView | None, old: dict[str, Any]) -> dict[str, Any]:
    """Status fields read from the ledger: round, ledgerHeight, lastRound. They keep their last value
    while the ledger is out of reach (progress None)."""
    out = {k: old[k] for k in ("round", "ledgerHeight", "lastRound") if old.get(k) is not None}
    if progress is None:
        return out
    out["round"] = progress.round
    out["ledgerHeight"] = progress.height
    if progress.last is not None:
        last = progress.last
        out["lastRound"] = {
            "round": last.round,
            "leader": last.leader,
            "participants": list(last.participants),
            "mergedDigest": last.merged_digest,
            "mergeMethod": last.merge_method,
        }
    return out


def _model_location(owner: ObjectRef, nodes: dict[str, Obj], outcomes: list[NodeOutcome]) -> str | None:
    """Where the merged model is kept: the first succeeded peer (by name) whose data volume persists."""
    for o in sorted(outcomes, key=lambda o: o.name):
        if not o.done_ok or o.name not in nodes or o.pod is None:
            continue
        try:
            nspec = NodeSpec.parse(nodes[o.name].get("spec") or {})
        except SpecError:
            continue
        loc = tb.model_location(
            owner.name,
            Peer(ObjectRef.from_body(nodes[o.name]), nspec),
            (o.pod.get("spec") or {}).get("nodeName"),
        )
        if loc:
            return loc
    return None
