"""Ledger records read from etcd: ``Record.from_json`` ends in a Record or RecordError, and
``verify_chain`` always returns a report (never raises, never stalls) for altered, forged or malformed
records, certificates and bodies."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from swarmlearning.ledger.records import MAX_ATTEMPT, Record, RecordError, verify_chain
from swarmlearning.limits import Limits

from tests.fuzz.conftest import Swarm
from tests.fuzz.ledger_chains import certificates, chain, good_chain, participants
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.unit

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
_finite_json = st.recursive(  # what make_record can sign (canonical JSON refuses NaN and Infinity)
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
FIELDS = (
    "seq",
    "contract",
    "kind",
    "body",
    "prev_hash",
    "author",
    "author_fingerprint",
    "time",
    "signature",
    "hash",
)


@fuzz(300)
@given(st.binary(max_size=400))
def test_from_json_arbitrary_bytes(data: bytes) -> None:
    try:
        Record.from_json(data)
    except RecordError as exc:
        assert str(exc)


_TYPED = {"seq": st.integers(), "body": st.dictionaries(st.text(max_size=8), _json, max_size=3)}
_field_values = {f: st.one_of(_TYPED.get(f, st.text(max_size=70)), _json, st.just(...)) for f in FIELDS}


@fuzz(150)
@given(st.fixed_dictionaries(_field_values))
def test_from_json_fields_of_any_type(drawn: dict[str, Any]) -> None:
    d = {k: v for k, v in drawn.items() if v is not ...}  # ... = field left out
    try:
        rec = Record.from_json(json.dumps(d))
    except RecordError as exc:
        assert str(exc)
        return
    assert isinstance(rec.seq, int) and not isinstance(rec.seq, bool)
    assert all(isinstance(getattr(rec, f), str) for f in FIELDS if f not in ("seq", "body"))


@fuzz(150)
@given(st.data())
def test_verify_chain_with_one_field_replaced(swarm: Swarm, data: st.DataObject) -> None:
    records = good_chain(swarm.nodes)
    certs = certificates(swarm.nodes)
    assert verify_chain(records, certs, ca_pem=swarm.ca_pem).ok
    pos = data.draw(st.integers(0, len(records) - 1))
    name = data.draw(st.sampled_from(FIELDS))
    d = records[pos].to_dict()
    d[name] = data.draw(_json)
    try:
        altered = Record.from_dict(json.loads(json.dumps(d)))
    except (RecordError, ValueError):
        return
    original = records[pos]
    records[pos] = altered
    report = verify_chain(records, certs, ca_pem=swarm.ca_pem)
    if altered != original:
        assert not report.ok and report.bad_seq is not None and report.reason


@fuzz(100)
@given(
    st.one_of(
        st.just(participants(["alice", "bob"])),
        st.lists(
            st.dictionaries(
                st.sampled_from(["name", "endpoint", "leader_eligible", "digest", "weight", "samples"]),
                _finite_json,
            ),
            max_size=4,
        ),
        _finite_json,
    ),
    _finite_json,
    st.one_of(st.integers(-5, 2 * MAX_ATTEMPT), _finite_json),
)
def test_signed_close_and_round_with_arbitrary_bodies(
    swarm: Swarm, parts: Any, round_no: Any, attempt: Any
) -> None:
    """A member can sign anything: a malformed close/round body must give a report, not an exception."""
    records = chain(
        swarm.nodes,
        [
            ("alice", "member", {"name": "alice"}),
            ("alice", "close", {"round": round_no, "participants": parts}),
            ("alice", "round", {"round": round_no, "attempt": attempt}),
        ],
    )
    report = verify_chain(records, certificates(swarm.nodes), ca_pem=swarm.ca_pem)
    assert report.ok or report.reason


@fuzz(100)
@given(st.binary(max_size=300))
def test_garbage_certificate_in_the_ledger(swarm: Swarm, garbage: bytes) -> None:
    """Regression: an unreadable certificate stored under an author's fingerprint raised ValueError."""
    records = good_chain(swarm.nodes)
    certs = {fp: garbage for fp in certificates(swarm.nodes)}
    report = verify_chain(records, certs, ca_pem=swarm.ca_pem)
    assert not report.ok and report.bad_seq == 0 and "certificate" in report.reason


def test_huge_attempt_is_refused_without_walking_every_attempt(swarm: Swarm) -> None:
    """Regression: attempt=10**12 in a signed round record made verify_chain loop 10**12 times."""
    names = ["alice", "bob"]
    records = chain(
        swarm.nodes,
        [
            ("alice", "close", {"round": 1, "participants": participants(names)}),
            ("alice", "round", {"round": 1, "attempt": 10**12}),
        ],
    )
    report = verify_chain(records, certificates(swarm.nodes), ca_pem=swarm.ca_pem)
    assert not report.ok and report.bad_seq == 1
    assert f"attempt 1000000000000, not an int in 0..{MAX_ATTEMPT}" in report.reason


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seq", "1", "'seq' must be an integer >= 0"),
        ("seq", 1.5, "'seq' must be an integer >= 0"),  # regression: int() truncated it
        ("seq", True, "'seq' must be an integer >= 0"),
        ("seq", -1, "'seq' must be an integer >= 0"),
        ("body", [["a", 1]], "'body' must be a JSON object"),  # regression: dict() accepted pairs
        ("author", None, "'author' must be a string"),  # regression: str(None) == "None"
        ("signature", 7, "'signature' must be a string"),
    ],
)
def test_wrong_types_are_refused_not_coerced(swarm: Swarm, field: str, value: Any, message: str) -> None:
    d = good_chain(swarm.nodes)[0].to_dict()
    d[field] = value
    with pytest.raises(RecordError, match=message):
        Record.from_json(json.dumps(d))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000, "not JSON"),  # regression: RecursionError escaped
        (b'{"seq": ' + b"1" * 5000 + b"}", "not JSON"),  # regression: ValueError (int digit limit) escaped
        (b'{"seq": "\xff"}', "not JSON"),  # regression: UnicodeDecodeError escaped
        (b"[]", "not a JSON object"),
    ],
)
def test_malformed_json(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        Record.from_json(data)


def test_record_size_limit(swarm: Swarm) -> None:
    raw = good_chain(swarm.nodes)[0].to_json()
    lim = Limits(record_bytes=1024)
    assert Record.from_json(raw, lim).seq == 0
    big = json.dumps({**json.loads(raw), "body": {"pad": "x" * 2000}})
    with pytest.raises(RecordError, match=r"exceeds the limit of 1024 bytes \(SWARM_MAX_RECORD_BYTES\)"):
        Record.from_json(big, lim)


def test_a_reordered_or_forged_chain_is_named(swarm: Swarm) -> None:
    records = good_chain(swarm.nodes)
    certs = certificates(swarm.nodes)
    swapped = [records[1], records[0], *records[2:]]
    assert verify_chain(swapped, certs).bad_seq == 0
    forged = dataclasses.replace(records[2], body={**records[2].body, "round": 2})
    report = verify_chain([*records[:2], forged, *records[3:]], certs)
    assert report.bad_seq == 2 and "altered" in report.reason
