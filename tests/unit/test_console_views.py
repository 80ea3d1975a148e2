"""The console's views of ledger records and its access rules (pure logic; the server and a real
swarm are in tests/integration/test_console.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import HTTPException
from swarmlearning import pki
from swarmlearning.console import views
from swarmlearning.console.auth import Authenticator, Principal
from swarmlearning.ledger import GENESIS_HASH, Member, Record

pytestmark = pytest.mark.unit
C = "task-a"


def _rec(
    seq: int, kind: str, body: dict[str, Any], author: str = "n1", contract: str = C, t: float = 0
) -> Record:
    return Record(
        seq=seq, contract=contract, kind=kind, body=body, prev_hash=GENESIS_HASH, author=author,
        author_fingerprint="f" * 64, time=f"2026-01-01T00:00:{t:06.3f}Z",
    )  # fmt: skip


def _close(seq: int, n: int, names: list[str], t: float) -> Record:
    parts = [{"name": x, "endpoint": f"{x}:1", "digest": "d", "weight": 1.0, "samples": 1} for x in names]
    return _rec(seq, "close", {"round": n, "participants": parts}, t=t)


def _ledger() -> list[Record]:
    return [
        _rec(0, "member", {"organisation": "org-1", "endpoint": "h1:1"}, author="n1", contract=""),
        _rec(1, "member", {"organisation": "org-2", "endpoint": "h2:1"}, author="n2", contract=""),
        _rec(2, "contract", {"params": {"mergeMethod": "mean", "minPeers": 2}}),
        _close(3, 1, ["n1", "n2"], 1.0),
        _rec(4, "round", {"round": 1, "participants": ["n1", "n2"], "merge_method": "initial",
                          "merged_digest": "a" * 64, "rejected": {}, "extra": {"training": ["n1", "n2"]}},
             author="n2", t=1.5),
        _close(5, 2, ["n1", "n2"], 2.0),
        _rec(6, "round", {"round": 2, "attempt": 1, "participants": ["n1"], "merge_method": "mean",
                          "weights": {"n1": 3.0}, "merged_digest": "b" * 64,
                          "rejected": {"n2": "non-finite values"},
                          "extra": {"loss": {"n1": 0.5}, "metric": {"n1": 0.9}, "training": []}},
             author="n1", t=4.25),
        _close(7, 3, ["n1", "n2"], 5.0),
        _rec(8, "abandon", {"round": 3, "participants": ["n1", "n2"], "reason": "all left"}, t=6),
        _close(9, 4, ["n2"], 7.0),
    ]  # fmt: skip


def test_rounds_carry_result_leader_rejections_progress_and_duration() -> None:
    r1, r2, r3, r4 = views.rounds(_ledger(), C)
    assert (r1.result, r1.leader, r1.final, r1.duration_s) == ("round", "n2", False, 0.5)
    assert (r2.result, r2.leader, r2.attempt, r2.participants) == ("round", "n1", 1, ["n1"])
    assert r2.rejected == {"n2": "non-finite values"} and r2.loss == {"n1": 0.5} and r2.metric == {"n1": 0.9}
    assert r2.final and r2.duration_s == 2.25 and r2.weights == {"n1": 3.0} and r2.seq == 6
    assert (r3.result, r3.merged_digest, r3.leader) == ("abandon", None, None)
    assert (r4.result, r4.seq, r4.committed_at, r4.participants) == ("open", 9, None, ["n2"])
    assert views.rounds(_ledger(), "other") == []


def test_tasks_and_nodes() -> None:
    (task,) = views.tasks(_ledger())
    assert task.contract == C and task.rounds_committed == 2 and task.latest_round == 2 and task.finished
    assert task.params == {"mergeMethod": "mean", "minPeers": 2} and task.participants == ["n1", "n2"]
    assert views.task(_ledger(), "nope") is None
    live = [Member("n1", "org-1", "h1:9", True, "e" * 64)]
    n1, n2 = views.nodes(_ledger(), live)
    assert (n1.name, n1.live, n1.endpoint, n1.last_round) == ("n1", True, "h1:9", {C: 2})
    assert (n2.name, n2.live, n2.organisation, n2.last_round) == ("n2", False, "org-2", {C: 1})


def test_a_malformed_body_does_not_break_the_views() -> None:
    bad = [
        *_ledger()[:3],
        _rec(3, "close", {"round": "x"}),
        _rec(4, "round", {"round": 1, "extra": "no", "loss": 7}),
    ]
    assert views.rounds(bad, C) == []
    assert views.tasks(bad)[0].rounds_committed == 0


def _cert(tmp_path: Path, name: str, role: str) -> bytes:
    ca = tmp_path / "ca"
    if not (ca / pki.CA_CERT).exists():
        pki.create_ca(ca)
    nc = pki.issue_node_cert(ca, tmp_path / name, name, "org", role)
    return x509.load_pem_x509_certificate(nc.cert_pem()).public_bytes(serialization.Encoding.DER)


def test_certificate_rights_follow_role_and_name(tmp_path: Path) -> None:
    auth = Authenticator(model_readers=frozenset({"bob"}))
    assert auth.from_certificate(_cert(tmp_path, "site", "sl")).rights == {"status", "model"}
    assert auth.from_certificate(_cert(tmp_path, "alice", "operator")).rights == {"status"}
    assert auth.from_certificate(_cert(tmp_path, "bob", "operator")).rights == {"status", "model"}


class _Reviewer:
    def __init__(self) -> None:
        self.calls = 0

    async def review(self, token: str) -> Principal | None:
        self.calls += 1
        return (
            Principal("system:serviceaccount:ns:viewer", "kubernetes", frozenset({"status"}))
            if token == "k"
            else None
        )


def test_tokens_static_then_kubernetes_with_a_cache() -> None:
    reviewer = _Reviewer()
    auth = Authenticator(tokens=frozenset({"static"}), kubernetes=reviewer)
    assert asyncio.run(auth.from_token("static")).rights == {"status", "model"}
    assert reviewer.calls == 0
    for _ in range(3):
        assert asyncio.run(auth.from_token("k")).method == "kubernetes"
    assert reviewer.calls == 1
    with pytest.raises(HTTPException) as e:
        asyncio.run(auth.from_token("bad"))
    assert e.value.status_code == 401 and "TokenReview" in e.value.detail
    with pytest.raises(HTTPException) as e:
        asyncio.run(Authenticator(tokens=frozenset({"static"})).from_token("bad"))
    assert e.value.status_code == 401


def test_a_sharded_round_shows_its_mode_and_slice_leaders_and_ignores_slice_records() -> None:
    slices = [{"slice": 0, "seq": 11, "leader": "n2", "digest": "c" * 64},
              {"slice": 1, "seq": 12, "leader": "n1", "digest": "d" * 64},
              {"slice": "x"}]  # fmt: skip
    records = [
        *_ledger()[:3],
        _close(10, 5, ["n1", "n2"], 8.0),
        _rec(11, "slice", {"round": 5, "slice": 0, "attempt": 0, "participants": ["n1", "n2"]}, author="n2"),
        _rec(12, "slice", {"round": 5, "slice": 1, "attempt": 0, "participants": ["n1", "n2"]}, author="n1"),
        _rec(13, "round", {"round": 5, "attempt": 0, "participants": ["n1", "n2"], "merge_method": "mean",
                           "merged_digest": "e" * 64, "rejected": {}, "slices": slices,
                           "extra": {"mode": "sharded", "training": []}}, author="n1", t=9),
    ]  # fmt: skip
    (r,) = views.rounds(records, C)
    assert (r.round, r.result, r.leader, r.merge_mode) == (5, "round", "n1", "sharded")
    assert [(s.slice, s.leader, s.seq) for s in r.slices] == [(0, "n2", 11), (1, "n1", 12)]
    single = views.rounds(_ledger(), C)[1]
    assert (single.merge_mode, single.slices) == ("single", [])


def test_a_private_round_shows_its_epsilons_and_who_unmasked_it() -> None:
    extra = {
        "mode": "secagg",
        "training": [],
        "epsilon": {"n1": 1.25, "n2": float("nan")},
        "privacy": {
            "siteDp": {"clipNorm": 2.0, "noiseMultiplier": 0.8, "delta": 1e-5, "epsilon": 3.5},
            "secureAggregation": {
                "threshold": 2, "sharers": ["n1", "n2", "n3"], "revealers": ["n1", "n2"], "dropped": ["n3"],
            },
        },
    }  # fmt: skip
    records = [
        *_ledger()[:3],
        _close(10, 6, ["n1", "n2", "n3"], 8.0),
        _rec(11, "round", {"round": 6, "attempt": 0, "participants": ["n1", "n2"], "merge_method": "mean",
                           "merged_digest": "e" * 64, "rejected": {"n3": "dropped out"}, "extra": extra}),
    ]  # fmt: skip
    (r,) = views.rounds(records, C)
    p = r.privacy
    assert r.merge_mode == "secagg" and p is not None
    assert (p.site_dp_epsilon, p.site_dp_delta, p.site_dp_clip_norm, p.site_dp_noise_multiplier) == (
        3.5, 1e-5, 2.0, 0.8,
    )  # fmt: skip
    assert p.dp_sgd_epsilon == {"n1": 1.25}  # a non-finite figure is left out, not shown as a number
    assert p.secure_aggregation and p.secagg_threshold == 2 and p.secagg_dropped == ["n3"]
    assert (p.secagg_sharers, p.secagg_revealers) == (["n1", "n2", "n3"], ["n1", "n2"])
    assert all(x.privacy is None for x in views.rounds(_ledger(), C))  # nothing but locality protected them
