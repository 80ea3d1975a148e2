"""Pure operator logic: spec parsing, conditions, peer selection, task verdicts, ledger summaries."""

from __future__ import annotations

from typing import Any

import pytest
from swarm_operator import status as st
from swarm_operator.ledger_reader import summarize
from swarm_operator.main import parse_args
from swarm_operator.reconcile.task import NodeOutcome, _observe, _verdict
from swarm_operator.selection import Candidate, matches, select_peers
from swarm_operator.specs import NetworkSpec, NodeSpec, SpecError, TaskSpec
from swarmlearning.ledger import Record

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------- specs


def test_network_defaults_follow_the_api_contract() -> None:
    s = NetworkSpec.parse({})
    assert (s.members, s.p2p_port, s.api_port, s.rest_port) == (1, 30303, 30304, 30306)
    assert s.persistent is True and s.storage_size == "1Gi" and s.service_type == "ClusterIP"
    assert s.join_endpoints == () and s.rest_enabled is False


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"members": 8}, "spec.members"),
        ({"members": 0}, "spec.members"),
        ({"service": {"type": "Ingress"}}, "spec.service.type"),
        ({"service": {"apiPort": 70000}}, "spec.service.apiPort"),
        ({"join": {"endpoints": ["nohost"]}}, "spec.join.endpoints"),
    ],
)
def test_network_bad_fields_are_named(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        NetworkSpec.parse(spec)


def test_unset_images_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NetworkSpec.parse({}).image == "swarmlearning/sn:0.1.0"
    monkeypatch.setenv("SWARM_SN_IMAGE", "registry.local/sn:1")
    monkeypatch.setenv("SWARM_ML_IMAGE", "registry.local/ml:1")
    assert NetworkSpec.parse({}).image == "registry.local/sn:1"
    assert NetworkSpec.parse({"image": "mine:2"}).image == "mine:2"
    node = NodeSpec.parse({"network": "n", "data": {"emptyDir": True}})
    assert (node.ml_image, node.sl_image) == ("registry.local/ml:1", "swarmlearning/sl:0.1.0")


def test_node_needs_exactly_one_data_source() -> None:
    with pytest.raises(SpecError, match="exactly one of claimName, hostPath, emptyDir"):
        NodeSpec.parse({"network": "n", "data": {"claimName": "a", "emptyDir": True}})
    with pytest.raises(SpecError, match="spec.network is required"):
        NodeSpec.parse({"data": {"emptyDir": True}})
    with pytest.raises(SpecError, match=r"spec\.gpus must be an integer 0-16"):
        NodeSpec.parse({"network": "n", "data": {"emptyDir": True}, "gpus": 17})


def test_task_cross_field_rules() -> None:
    with pytest.raises(SpecError, match=r"spec\.peers must be >= spec\.sync\.minPeers"):
        TaskSpec.parse({"network": "n", "peers": 1, "sync": {"frequency": 1, "minPeers": 2}})
    with pytest.raises(SpecError, match=r"spec\.sync\.maxPeers"):
        TaskSpec.parse({"network": "n", "peers": 3, "sync": {"frequency": 1, "minPeers": 3, "maxPeers": 2}})
    with pytest.raises(SpecError, match=r"spec\.sync\.trimFraction must be a number 0.0-0.49"):
        TaskSpec.parse(
            {"network": "n", "peers": 1, "sync": {"frequency": 1, "minPeers": 1, "trimFraction": 0.5}}
        )
    t = TaskSpec.parse({"network": "n", "peers": 2, "sync": {"frequency": 5, "minPeers": 2}})
    assert t.contract("my-task") == "my-task"
    assert (t.pod_failed, t.max_restarts, t.model_output_path) == ("Restart", 3, "/data/swarm-output")


# ---------------------------------------------------------------------------------- conditions


def test_conditions_keep_transition_time_until_status_changes() -> None:
    c1 = st.merge_conditions(None, [st.Condition("Ready", False, "Waiting", "x")], 1, "T1")
    assert c1 == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Waiting",
            "message": "x",
            "lastTransitionTime": "T1",
            "observedGeneration": 1,
        }
    ]
    same = st.merge_conditions(c1, [st.Condition("Ready", False, "StillWaiting", "y")], 2, "T2")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "StillWaiting"
    assert same[0]["observedGeneration"] == 2
    flipped = st.merge_conditions(
        same, [st.Condition("Ready", True, "Ok"), st.Condition("Other", None, "U")], 2, "T3"
    )
    assert [c["type"] for c in flipped] == ["Ready", "Other"]
    assert flipped[0]["lastTransitionTime"] == "T3" and flipped[1]["status"] == "Unknown"
    assert st.transitioned({"conditions": same}, flipped, "Ready")
    assert not st.transitioned({"conditions": flipped}, flipped, "Ready")


def test_status_differs_only_on_real_change() -> None:
    old = {"phase": "Running", "round": 3, "nodes": [{"name": "a"}]}
    assert not st.differs(old, {"phase": "Running", "round": 3})
    assert st.differs(old, {"round": 4})
    assert st.differs(None, {"phase": "Pending"})
    assert st.now().endswith("Z")


# ------------------------------------------------------------------------------- peer selection


def _cands() -> list[Candidate]:
    return [
        Candidate("c", {"gpu": "yes"}, "net", "Ready"),
        Candidate("a", {"gpu": "yes"}, "net", "Training", "other-task"),
        Candidate("b", {"gpu": "no"}, "net", "Idle"),
        Candidate("d", {"gpu": "yes"}, "net", "Idle"),
        Candidate("e", {"gpu": "yes"}, "other-net", "Idle"),
        Candidate("f", {"gpu": "yes"}, "net", "Pending"),
    ]


def test_selector_semantics() -> None:
    labels = {"gpu": "yes", "zone": "a"}
    assert matches({}, labels)
    assert matches({"matchLabels": {"gpu": "yes"}}, labels)
    assert not matches({"matchLabels": {"gpu": "no"}}, labels)
    assert matches({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, labels)
    assert not matches({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, labels)
    assert matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    assert not matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)
    with pytest.raises(SpecError, match="operator must be In, NotIn, Exists or DoesNotExist"):
        matches({"matchExpressions": [{"key": "x", "operator": "Gt"}]}, labels)


def test_selection_is_deterministic_idle_first_and_skips_busy_and_other_networks() -> None:
    sel = select_peers("t", "net", {"matchLabels": {"gpu": "yes"}}, 2, _cands())
    assert sel.ok and sel.peers == ("c", "d")
    assert select_peers("t", "net", {"matchLabels": {"gpu": "yes"}}, 2, list(reversed(_cands()))) == sel


def test_selection_reports_insufficient_busy_and_unready_peers() -> None:
    few = select_peers("t", "net", {"matchLabels": {"gpu": "no"}}, 2, _cands())
    assert few.reason == "InsufficientPeers" and "only 1 LearningNode(s)" in few.message
    busy = select_peers("t", "net", {"matchLabels": {"gpu": "yes"}}, 3, _cands())
    assert busy.reason == "PeersBusy" and "busy: a" in busy.message and "not ready: f" in busy.message
    # the node trains this very task: it is not busy for it
    mine = select_peers("other-task", "net", {"matchLabels": {"gpu": "yes"}}, 3, _cands())
    assert mine.ok and mine.peers == ("c", "d", "a")


# ------------------------------------------------------------------------------ task decisions


def _pod(attempt: int, phase: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"swarmlearning.dev/attempt": str(attempt)}}
    if deleting:
        meta["deletionTimestamp"] = "T"
    return {"metadata": meta, "status": {"phase": phase}}


def _spec(policy: str = "Restart", max_restarts: int = 2, min_peers: int = 2, peers: int = 3) -> TaskSpec:
    return TaskSpec.parse(
        {
            "network": "n",
            "peers": peers,
            "sync": {"frequency": 1, "minPeers": min_peers},
            "failurePolicy": {"podFailed": policy, "maxRestarts": max_restarts},
        }
    )


def test_observe_creates_first_attempt_and_restarts_until_the_limit() -> None:
    spec = _spec()
    assert _observe(spec, "a", []) == (NodeOutcome("a", "Pending", 0), 0)
    out, nxt = _observe(spec, "a", [_pod(0, "Failed")])
    assert nxt == 1 and out.phase == "Restarting" and not out.done_failed
    out, nxt = _observe(spec, "a", [_pod(0, "Failed"), _pod(1, "Failed"), _pod(2, "Failed")])
    assert nxt is None and out.done_failed and out.restarts == 2
    out, nxt = _observe(spec, "a", [_pod(0, "Failed"), _pod(1, "Succeeded")])
    assert nxt is None and out.done_ok and out.restarts == 1
    out, nxt = _observe(_spec("FailTask"), "a", [_pod(0, "Failed")])
    assert nxt is None and out.done_failed
    out, nxt = _observe(spec, "a", [_pod(0, "Running", deleting=True)])
    assert nxt is None and out.phase == "Pending"


def test_a_deleted_pod_that_failed_from_its_sigterm_is_started_again_without_using_a_restart() -> None:
    """Found by the cluster chaos test: a site pod deleted mid-training turns Failed (its program dies of
    the kubelet's SIGTERM) before it is gone; that is a deletion, not a failure of the program."""
    out, nxt = _observe(_spec(max_restarts=1), "a", [_pod(0, "Failed", deleting=True)])
    assert nxt is None and out.phase == "Pending" and out.restarts == 0 and not out.done_failed
    out, nxt = _observe(_spec("FailTask"), "a", [_pod(0, "Failed", deleting=True)])
    assert nxt is None and not out.done_failed, "a deleted pod does not fail a FailTask task"
    # Once it is gone, the same attempt is created again (the earlier attempt's failure counts once).
    assert _observe(_spec(max_restarts=1), "a", [])[1] == 0
    out, nxt = _observe(_spec(max_restarts=1), "a", [_pod(0, "Failed")])
    assert nxt == 1 and out.restarts == 0


def test_verdict_quorum_and_failure_policy() -> None:
    ok, running, bad = (NodeOutcome(n, "x", 0, done_ok=True) for n in "abc")
    running = NodeOutcome("b", "Running", 0)
    bad = NodeOutcome("c", "Failed", 2, done_failed=True)
    assert _verdict(_spec(), [ok, running, bad]) is None
    assert _verdict(_spec(), [ok, NodeOutcome("b", "x", 0, done_ok=True), bad])[:2] == (True, "Succeeded")
    v = _verdict(_spec(min_peers=2), [ok, NodeOutcome("b", "Failed", 2, done_failed=True), bad])
    assert v is not None and v[:2] == (False, "QuorumNotReached")
    v = _verdict(_spec("FailTask"), [ok, running, bad])
    assert v is not None and v[:2] == (False, "PodFailed")
    # quorum already out of reach while one peer still runs: fail early
    v = _verdict(_spec(min_peers=3), [ok, running, bad])
    assert v is not None and v[1] == "QuorumNotReached"


# ------------------------------------------------------------------------------ ledger summary


def _rec(seq: int, contract: str, kind: str, body: dict[str, Any]) -> Record:
    return Record(
        seq=seq,
        contract=contract,
        kind=kind,
        body=body,
        prev_hash="0" * 64,
        author="x",
        author_fingerprint="f",
        time="t",
    )


def test_summarize_rounds_per_contract_and_node() -> None:
    recs = [
        _rec(0, "c1", "contract", {"params": {}}),
        _rec(1, "c1", "round", {"round": 1, "participants": ["a", "b"], "extra": {"loss": {"a": 0.5}}}),
        _rec(2, "c2", "round", {"round": 7, "participants": ["a"]}),
        _rec(
            3,
            "c1",
            "round",
            {"round": 2, "participants": ["a"], "extra": {"loss": {"a": 0.25}, "metric": {"a": 0.9}}},
        ),
    ]
    v = summarize(recs, "c1", 4)
    assert v.height == 4 and v.round == 2
    assert v.nodes["a"].round == 2 and v.nodes["a"].loss == 0.25 and v.nodes["a"].metric == 0.9
    assert v.nodes["b"].round == 1 and v.nodes["b"].loss is None
    assert len(v.records) == 3
    assert summarize(recs, None, 4).round == 7


def test_summarize_keeps_the_latest_round_result_for_the_status() -> None:
    recs = [
        _rec(
            1,
            "c1",
            "round",
            {"round": 2, "participants": ["a", "b"], "merged_digest": "d2", "merge_method": "mean"},
        ),
        _rec(2, "c1", "round", {"round": 1, "participants": ["a"], "merged_digest": "d1"}),
    ]
    last = summarize(recs, "c1", 2).last
    assert last is not None
    assert (last.round, last.leader, last.participants, last.merged_digest, last.merge_method) == (
        2,
        "x",
        ("a", "b"),
        "d2",
        "mean",
    )
    assert summarize([_rec(0, "c1", "contract", {})], "c1", 1).last is None


def _failed_pod(containers: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {}},
        "status": {"phase": "Failed", "containerStatuses": containers, **status},
    }


def test_failure_reason_names_the_ml_container_exit_and_its_last_words() -> None:
    from swarm_operator.reconcile.pods import failure_reason

    ml = {"name": "ml", "state": {"terminated": {"reason": "Error", "exitCode": 3, "message": "boom\n"}}}
    sl = {"name": "sl", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}
    assert failure_reason(_failed_pod([sl, ml])) == "container ml Error (exit code 3): boom"
    oom = {"name": "ml", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
    assert failure_reason(_failed_pod([oom])) == "container ml OOMKilled (exit code 137)"
    evicted = _failed_pod([], reason="Evicted", message="low on memory")
    assert failure_reason(evicted) == "pod Evicted: low on memory"
    assert failure_reason(_failed_pod([])) == "pod Failed"


def test_failed_verdict_quotes_the_container_reason() -> None:
    ok = NodeOutcome("a", "Succeeded", 0, done_ok=True)
    bad = NodeOutcome("c", "Failed", 0, done_failed=True, reason="container ml Error (exit code 3)")
    v = _verdict(_spec("FailTask"), [ok, bad])
    assert v is not None and "c: container ml Error (exit code 3)" in v[2]


def test_operator_command_line_validation() -> None:
    cfg = parse_args(["-n", "a", "-n", "b", "--metrics-port", "0", "--resync-seconds", "5"])
    assert cfg.namespaces == ("a", "b") and cfg.metrics_port == 0 and cfg.resync_seconds == 5
    with pytest.raises(SystemExit):
        parse_args(["--metrics-port", "70000"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])


def test_ledger_fields_follow_the_ledger_and_keep_their_last_value_when_it_is_unreachable() -> None:
    from swarm_operator.reconcile.task import _ledger_fields

    recs = [_rec(1, "c1", "round", {"round": 3, "participants": ["a"], "merged_digest": "d3"})]
    old = {"round": 2, "ledgerHeight": 5, "lastRound": {"round": 2}, "phase": "Succeeded"}
    fresh = _ledger_fields(summarize(recs, "c1", 9), old)
    assert fresh["round"] == 3 and fresh["ledgerHeight"] == 9
    assert fresh["lastRound"]["mergedDigest"] == "d3" and fresh["lastRound"]["leader"] == "x"
    assert _ledger_fields(None, old) == {"round": 2, "ledgerHeight": 5, "lastRound": {"round": 2}}
