"""Ledger records: canonical signing, chain verification, the verifiable leader draw (pure logic)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from swarmlearning import pki
from swarmlearning.ledger import (
    GENESIS_HASH,
    NoEligibleLeader,
    Participant,
    Record,
    RecordError,
    RoundClose,
    canonical_json,
    leader_for,
    make_record,
    verify_chain,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def ids(tmp_path: Path) -> dict[str, pki.NodeCert]:
    pki.create_ca(tmp_path / "ca")
    return {n: pki.issue_node_cert(tmp_path / "ca", tmp_path / n, n, "org", "sl") for n in ("alice", "bob")}


def _chain(ids: dict[str, pki.NodeCert], n: int = 5) -> list[Record]:
    out: list[Record] = []
    prev = GENESIS_HASH
    for i in range(n):
        signer = ids["alice" if i % 2 == 0 else "bob"]
        rec = make_record(
            seq=i,
            contract="c",
            kind="contract",
            body={"params": {"i": i, "w": 0.5}},
            prev_hash=prev,
            signer=signer,
        )
        out.append(rec)
        prev = rec.hash
    return out


def _certs(ids: dict[str, pki.NodeCert]) -> dict[str, bytes]:
    return {nc.fingerprint: nc.cert_pem() for nc in ids.values()}


def _rehash(r: Record) -> Record:
    return dataclasses.replace(r, hash=r.compute_hash())


def test_canonical_json_is_sorted_compact_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_record_round_trips_through_json(ids: dict[str, pki.NodeCert]) -> None:
    rec = _chain(ids, 1)[0]
    assert Record.from_json(rec.to_json()) == rec
    assert rec.prev_hash == GENESIS_HASH and rec.author == "alice" and rec.time.endswith("Z")
    with pytest.raises(RecordError, match="missing field 'hash'"):
        Record.from_dict({k: v for k, v in rec.to_dict().items() if k != "hash"})
    with pytest.raises(RecordError, match="kind='vote' is not allowed"):
        make_record(seq=0, contract="c", kind="vote", body={}, prev_hash=GENESIS_HASH, signer=ids["alice"])


def test_an_intact_chain_verifies(ids: dict[str, pki.NodeCert]) -> None:
    chain = _chain(ids)
    ca = ids["alice"].ca_pem()
    report = verify_chain(chain, _certs(ids), ca_pem=ca, head=(4, chain[-1].hash))
    assert report.ok and report.message() == "OK: 5 records, chain intact"


def test_an_altered_record_is_named(ids: dict[str, pki.NodeCert]) -> None:
    chain = _chain(ids)
    chain[2] = dataclasses.replace(chain[2], body={"params": {"i": 99}})
    r = verify_chain(chain, _certs(ids))
    assert (r.ok, r.bad_seq, r.reason) == (False, 2, "hash does not match the content (record altered)")
    # Recomputing the hash does not help: the signature no longer matches.
    chain[2] = _rehash(chain[2])
    r = verify_chain(chain, _certs(ids))
    assert r.bad_seq == 2 and "signature by 'alice' is invalid" in r.reason


def test_dropped_records_are_named(ids: dict[str, pki.NodeCert]) -> None:
    chain = _chain(ids)
    r = verify_chain(chain[:2] + chain[3:], _certs(ids))
    assert r.bad_seq == 2 and "seq 3 found at position 2" in r.reason
    # Dropping the tail is only visible against the head.
    r = verify_chain(chain[:4], _certs(ids), head=(4, chain[-1].hash))
    assert not r.ok and r.bad_seq == 4 and "head says seq 4 but 4 records" in r.reason
    # A renumbered chain with a record removed breaks the hash links.
    renumbered = [*chain[:2], *(_rehash(dataclasses.replace(c, seq=c.seq - 1)) for c in chain[3:])]
    r = verify_chain(renumbered, _certs(ids))
    assert r.bad_seq == 2 and "prev_hash does not match" in r.reason


def test_a_reordered_pair_is_named(ids: dict[str, pki.NodeCert]) -> None:
    chain = _chain(ids)
    chain[1], chain[2] = chain[2], chain[1]
    r = verify_chain(chain, _certs(ids))
    assert r.bad_seq == 1 and "seq 2 found at position 1" in r.reason
    assert r.message().startswith("FAILED at record 1:")


def test_a_forged_author_is_detected(ids: dict[str, pki.NodeCert], tmp_path: Path) -> None:
    chain = _chain(ids, 2)
    # alice claims bob wrote record 1: bob's certificate does not verify her signature.
    forged = make_record(
        seq=1, contract="c", kind="contract", body={}, prev_hash=chain[0].hash, signer=ids["alice"]
    )
    forged = _rehash(dataclasses.replace(forged, author="bob", author_fingerprint=ids["bob"].fingerprint))
    r = verify_chain([chain[0], forged], _certs(ids))
    assert r.bad_seq == 1 and "signature by 'bob' is invalid" in r.reason
    # A certificate from another CA is refused when the swarm CA is given.
    pki.create_ca(tmp_path / "evil-ca")
    evil = pki.issue_node_cert(tmp_path / "evil-ca", tmp_path / "evil", "bob", "org", "sl")
    rec = make_record(seq=1, contract="c", kind="contract", body={}, prev_hash=chain[0].hash, signer=evil)
    certs = {**_certs(ids), evil.fingerprint: evil.cert_pem()}
    r = verify_chain([chain[0], rec], certs, ca_pem=ids["alice"].ca_pem())
    assert r.bad_seq == 1 and "author certificate rejected" in r.reason
    # A swarm certificate used under another name is refused too.
    rec = _rehash(
        dataclasses.replace(
            make_record(
                seq=1, contract="c", kind="contract", body={}, prev_hash=chain[0].hash, signer=ids["alice"]
            ),
            author="bob",
        )
    )
    r = verify_chain([chain[0], rec], _certs(ids), ca_pem=ids["alice"].ca_pem())
    assert r.bad_seq == 1 and "does not match the certificate CN 'alice'" in r.reason


def test_a_missing_certificate_is_named(ids: dict[str, pki.NodeCert]) -> None:
    chain = _chain(ids, 2)
    r = verify_chain(chain, {ids["alice"].fingerprint: ids["alice"].cert_pem()})
    assert r.bad_seq == 1 and "no certificate for author 'bob'" in r.reason


def _close(
    names: list[str], eligible: set[str] | None = None, prev: str = "ab" * 32, rnd: int = 7
) -> RoundClose:
    parts = tuple(Participant(n, f"{n}:30305", eligible is None or n in eligible, "d", 1.0, 1) for n in names)
    rec = Record(
        seq=3,
        contract="job",
        kind="close",
        body={"round": rnd, "participants": [p.to_dict() for p in parts]},
        prev_hash=prev,
        author="x",
        author_fingerprint="f",
        time="t",
    )
    return RoundClose.from_record(rec)


def test_leader_draw_is_deterministic_and_rotates_through_failures() -> None:
    names = ["n0", "n1", "n2", "n3", "n4"]
    close = _close(names)
    assert close.leader == leader_for(close, 0) == leader_for(_close(list(reversed(names))), 0)
    first_five = [leader_for(close, a) for a in range(5)]
    assert sorted(first_five) == names  # each failed leader is skipped until everyone had a turn
    assert leader_for(close, 5) in names
    # The seed matters: other previous hashes pick other leaders (not always the same node).
    assert len({_close(names, prev=f"{i:064x}").leader for i in range(40)}) > 1


def test_ineligible_nodes_never_lead() -> None:
    close = _close(["a", "b", "c"], eligible={"b"})
    assert {leader_for(close, a) for a in range(6)} == {"b"}
    nobody = _close(["a", "b"], eligible=set())
    assert nobody.leader == ""
    with pytest.raises(NoEligibleLeader, match="no participant is leader-eligible"):
        leader_for(nobody, 0)
    with pytest.raises(ValueError, match="attempt=-1"):
        leader_for(close, -1)


def test_a_round_result_must_come_from_the_verifiable_leader(ids: dict[str, pki.NodeCert]) -> None:
    parts = [Participant(n, f"{n}:1", True, "d", 1.0, 1).to_dict() for n in ("alice", "bob")]
    close = make_record(
        seq=0,
        contract="job",
        kind="close",
        body={"round": 1, "participants": parts},
        prev_hash=GENESIS_HASH,
        signer=ids["alice"],
    )
    leader0 = leader_for(RoundClose.from_record(close), 0)
    other = "bob" if leader0 == "alice" else "alice"

    def result(signer: str, attempt: int, prev: Record) -> Record:
        return make_record(
            seq=prev.seq + 1,
            contract="job",
            kind="round",
            body={"round": 1, "attempt": attempt},
            prev_hash=prev.hash,
            signer=ids[signer],
        )

    good = result(leader0, 0, close)
    assert verify_chain([close, good], _certs(ids)).ok
    # attempt 1's leader is the other node: a result it signs for attempt 1 is fine too.
    assert verify_chain([close, result(other, 1, close)], _certs(ids)).ok
    r = verify_chain([close, result(other, 0, close)], _certs(ids))
    assert (
        r.bad_seq == 1 and f"committed by {other!r}, but the leader of attempt 0 is {leader0!r}" in r.reason
    )
    r = verify_chain([close, good, result(leader0, 0, good)], _certs(ids))
    assert r.bad_seq == 2 and "has a second result" in r.reason
    again = make_record(
        seq=1,
        contract="job",
        kind="close",
        body={"round": 1, "participants": parts},
        prev_hash=close.hash,
        signer=ids["bob"],
    )
    r = verify_chain([close, again], _certs(ids))
    assert r.bad_seq == 1 and "closed twice" in r.reason
    orphan = make_record(
        seq=0,
        contract="job",
        kind="round",
        body={"round": 2, "attempt": 0},
        prev_hash=GENESIS_HASH,
        signer=ids["alice"],
    )
    assert "without a close record" in verify_chain([orphan], _certs(ids)).reason
