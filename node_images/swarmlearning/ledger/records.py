"""Signed, hash-chained ledger records and chain verification (pure logic, no etcd).

A record's signed content is the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of
``{seq, contract, kind, body, prev_hash, author, author_fingerprint, time}``. The author signs those
bytes with its node key (ECDSA-SHA256); ``hash = sha256(canonical bytes + signature)``, hex. Record
``seq`` 0 has ``prev_hash`` :data:`GENESIS_HASH`; record ``n`` carries record ``n-1``'s hash.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmlearning import pki
from swarmlearning.limits import Limits, describe

GENESIS_HASH = "0" * 64
KINDS = ("member", "contract", "close", "round", "abandon", "slice")
"""member: a node joined; contract: a training contract's parameters; close: a round's participant
set (fixes the leader order); round: a merge result committed by the round leader; abandon: a round
everyone left; slice: one slice's merge in a sharded round, committed by that slice's leader."""

MAX_SLICES = 4096
"""Largest slice count a valid slice record may name."""


MAX_ATTEMPT = 100_000
"""Largest leader attempt a valid round record may name: recomputing its leader walks every earlier
attempt, so an absurd one from a forged record would stall verification."""
_STR_FIELDS = ("contract", "kind", "prev_hash", "author", "author_fingerprint", "time", "signature", "hash")


class RecordError(ValueError):
    """A record that cannot be parsed; the message names the field."""


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, NaN/Infinity refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


@dataclass(frozen=True)
class Record:
    """One ledger entry. ``signature`` is base64 of the DER ECDSA signature; ``hash`` is hex."""

    seq: int
    contract: str
    kind: str
    body: Mapping[str, Any]
    prev_hash: str
    author: str
    author_fingerprint: str
    time: str
    """UTC, RFC 3339 with milliseconds, e.g. ``2026-01-01T00:00:00.000Z``."""
    signature: str = ""
    hash: str = field(default="")

    def signed_content(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "contract": self.contract,
            "kind": self.kind,
            "body": self.body,
            "prev_hash": self.prev_hash,
            "author": self.author,
            "author_fingerprint": self.author_fingerprint,
            "time": self.time,
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.signed_content())

    def compute_hash(self) -> str:
        return hashlib.sha256(self.canonical_bytes() + base64.b64decode(self.signature)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**self.signed_content(), "signature": self.signature, "hash": self.hash}

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Record:
        """A record from its JSON object; fields must have their JSON types exactly (no coercion: a
        coerced value would hash differently from what the author signed). Raises RecordError."""
        if not isinstance(d, Mapping):
            raise RecordError(f"record is a {type(d).__name__}, expected a JSON object")
        for name in ("seq", "body", *_STR_FIELDS):
            if name not in d:
                raise RecordError(f"record is missing field {name!r}")
        seq = d["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise RecordError(f"record field 'seq' must be an integer >= 0, got {_shown(seq)}")
        if not isinstance(d["body"], Mapping):
            raise RecordError(f"record field 'body' must be a JSON object, got {type(d['body']).__name__}")
        for name in _STR_FIELDS:
            if not isinstance(d[name], str):
                raise RecordError(f"record field {name!r} must be a string, got {type(d[name]).__name__}")
        return cls(
            seq=seq,
            contract=d["contract"],
            kind=d["kind"],
            body=dict(d["body"]),
            prev_hash=d["prev_hash"],
            author=d["author"],
            author_fingerprint=d["author_fingerprint"],
            time=d["time"],
            signature=d["signature"],
            hash=d["hash"],
        )

    @classmethod
    def from_json(cls, data: bytes | str, limits: Limits | None = None) -> Record:
        """Parse a stored record of at most ``limits.record_bytes``; raises RecordError naming the problem."""
        lim = limits or Limits.from_env()
        size = len(data.encode() if isinstance(data, str) else data)
        if size > lim.record_bytes:
            raise RecordError(f"record of {size} bytes exceeds the limit of {describe(lim, 'record_bytes')}")
        try:
            d = json.loads(data)
        except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, 4300+ digit ints; deep nesting
            raise RecordError(f"record is not JSON: {str(e)[:200]}") from e
        if not isinstance(d, dict):
            raise RecordError(f"record is not a JSON object but a JSON {type(d).__name__}")
        return cls.from_dict(d)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def utc_now() -> str:
    """Current UTC time as RFC 3339 with milliseconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_record(
    *,
    seq: int,
    contract: str,
    kind: str,
    body: Mapping[str, Any],
    prev_hash: str,
    signer: pki.NodeCert,
    time: str | None = None,
) -> Record:
    """Build and sign a record as ``signer`` (author = its CN). Raises RecordError on a bad kind/seq."""
    if kind not in KINDS:
        raise RecordError(f"kind={kind!r} is not allowed: use one of {', '.join(KINDS)}")
    if seq < 0:
        raise RecordError(f"seq={seq}: must be >= 0")
    unsigned = Record(
        seq=seq,
        contract=contract,
        kind=kind,
        body=dict(body),
        prev_hash=prev_hash,
        author=signer.name,
        author_fingerprint=signer.fingerprint,
        time=time or utc_now(),
    )
    sig = base64.b64encode(pki.sign(signer.key_path, unsigned.canonical_bytes())).decode()
    signed = dataclasses.replace(unsigned, signature=sig)
    return dataclasses.replace(signed, hash=signed.compute_hash())


def check_protocol(
    rec: Record,
    closes: dict[tuple[str, int], Record],
    results: set[tuple[str, int]],
    slices: set[tuple[str, int, int]] | None = None,
) -> str:
    """Round rules a valid chain obeys; returns the violation or "". Updates ``closes``/``results``/
    ``slices``.

    One close and one result per round; a result follows its round's close and is either a ``round``
    record signed by the leader that :func:`swarmlearning.ledger.rounds.leader_for` gives for its
    attempt, or an ``abandon`` record (any member may sign it: every participant left without a merge)
    naming the close's participants. A ``slice`` record follows its round's close and precedes its
    result, is the only one for its slice, and is signed by the leader that
    :func:`swarmlearning.ledger.rounds.slice_leader_for` gives for its slice and attempt.
    """
    from swarmlearning.ledger.rounds import (  # rounds imports us
        NoEligibleLeader,
        RoundClose,
        leader_for,
        slice_leader_for,
    )

    if rec.kind not in ("close", "round", "abandon", "slice"):
        return ""
    round_no = rec.body.get("round")
    if isinstance(round_no, bool) or not isinstance(round_no, int) or not 0 <= round_no < 1 << 63:
        return f"{rec.kind} record without a valid round number (an int in 0..2**63-1)"
    key = (rec.contract, round_no)
    if rec.kind == "close":
        if key in closes:
            return f"round {key[1]} of {_shown(key[0])} closed twice (first at record {closes[key].seq})"
        closes[key] = rec
        return ""
    if rec.kind == "slice":
        return _check_slice(rec, key, closes, results, set() if slices is None else slices, slice_leader_for)
    if key in results:
        return f"round {key[1]} of {_shown(key[0])} has a second result"
    close = closes.get(key)
    if close is None:
        return f"result of round {key[1]} of {_shown(key[0])} without a close record before it"
    results.add(key)
    if rec.kind == "abandon":
        try:
            named = sorted(rec.body.get("participants") or [])
            closed = sorted(RoundClose.from_record(close).names)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            return f"cannot read the participants of abandoned round {key[1]}: {type(e).__name__}"
        if named != closed:
            return (
                f"abandon record of round {key[1]} names {named[:8]}, but the round closed with {closed[:8]}"
            )
        return ""
    attempt = rec.body.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt <= MAX_ATTEMPT:
        return (
            f"result of round {key[1]} of {_shown(key[0])} has attempt {_shown(attempt)}, "
            f"not an int in 0..{MAX_ATTEMPT}"
        )
    try:
        expected = leader_for(RoundClose.from_record(close), attempt)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, NoEligibleLeader) as e:
        # A signed but malformed close body (participants not a list of objects, wrong field types).
        return f"cannot recompute the leader of round {key[1]}: {type(e).__name__}: {str(e)[:200]}"
    if rec.author != expected:
        return (
            f"round {key[1]} of {_shown(key[0])} was committed by {_shown(rec.author)}, "
            f"but the leader of attempt {attempt} is {_shown(expected)}"
        )
    return ""


def _check_slice(
    rec: Record,
    key: tuple[str, int],
    closes: dict[tuple[str, int], Record],
    results: set[tuple[str, int]],
    slices: set[tuple[str, int, int]],
    slice_leader_for: Any,
) -> str:
    from swarmlearning.ledger.rounds import NoEligibleLeader, RoundClose

    what = f"slice record of round {key[1]} of {_shown(key[0])}"
    slice_no, attempt = rec.body.get("slice"), rec.body.get("attempt")
    for field_name, value, top in (("slice", slice_no, MAX_SLICES - 1), ("attempt", attempt, MAX_ATTEMPT)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            return f"{what} has {field_name} {_shown(value)}, not an int in 0..{top}"
    assert isinstance(slice_no, int) and isinstance(attempt, int)
    close = closes.get(key)
    if close is None:
        return f"{what} without a close record before it"
    if key in results:
        return f"{what} after the round's result"
    if (key[0], key[1], slice_no) in slices:
        return f"slice {slice_no} of round {key[1]} of {_shown(key[0])} has a second record"
    try:
        expected = slice_leader_for(RoundClose.from_record(close), slice_no, attempt)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, NoEligibleLeader) as e:
        return f"cannot recompute the leader of slice {slice_no} of round {key[1]}: {type(e).__name__}"
    if rec.author != expected:
        return (
            f"slice {slice_no} of round {key[1]} of {_shown(key[0])} was committed by "
            f"{_shown(rec.author)}, but its leader of attempt {attempt} is {_shown(expected)}"
        )
    slices.add((key[0], key[1], slice_no))
    return ""


@dataclass(frozen=True)
class ChainReport:
    """Outcome of :func:`verify_chain`. ``bad_seq`` is the position (expected seq) of the first bad record."""

    ok: bool
    count: int
    bad_seq: int | None = None
    reason: str = ""

    def message(self) -> str:
        if self.ok:
            return f"OK: {self.count} records, chain intact"
        return f"FAILED at record {self.bad_seq}: {self.reason}"


def verify_chain(
    records: Sequence[Record],
    certificates: Mapping[str, bytes],
    *,
    ca_pem: bytes | None = None,
    head: tuple[int, str] | None = None,
) -> ChainReport:
    """Check a whole chain: order, links, hashes, signatures, authors.

    ``records`` must be in storage order starting at seq 0. ``certificates`` maps a fingerprint to the
    author's certificate PEM. With ``ca_pem``, each certificate must be issued by that CA and its CN
    must equal the record's author. ``head`` = (seq, hash) of the stored chain head: detects records
    dropped from the end. Detects altered records (hash/signature mismatch), dropped or reordered
    records (seq gap, broken prev_hash link), round results not signed by the round's verifiable
    leader (:func:`check_protocol`), and names the first bad record and why.
    """
    prev = GENESIS_HASH
    checked_certs: dict[str, str] = {}
    closes: dict[tuple[str, int], Record] = {}
    results: set[tuple[str, int]] = set()
    slices: set[tuple[str, int, int]] = set()
    for pos, rec in enumerate(records):

        def bad(reason: str, pos: int = pos) -> ChainReport:
            return ChainReport(ok=False, count=len(records), bad_seq=pos, reason=reason)

        if rec.seq != pos:
            return bad(
                f"record with seq {rec.seq} found at position {pos}: a record was dropped or reordered"
            )
        if rec.prev_hash != prev:
            return bad(
                "prev_hash does not match the previous record's hash (chain broken: dropped, "
                "reordered or altered record)"
            )
        try:
            computed = rec.compute_hash()
        except (ValueError, TypeError, RecursionError) as e:
            return bad(f"cannot hash the record: {str(e)[:200]}")
        if computed != rec.hash:
            return bad("hash does not match the content (record altered)")
        cert = certificates.get(rec.author_fingerprint)
        if cert is None:
            return bad(
                f"no certificate for author {_shown(rec.author)} "
                f"with fingerprint {rec.author_fingerprint[:16]}…"
            )
        try:
            stored_fingerprint = pki.fingerprint(cert)
        except pki.PKIError as e:
            return bad(f"the certificate stored for {_shown(rec.author)} cannot be read: {e}")
        if stored_fingerprint != rec.author_fingerprint:
            return bad(
                f"the certificate stored for {_shown(rec.author)} does not have the recorded fingerprint"
            )
        if ca_pem is not None and rec.author_fingerprint not in checked_certs:
            try:
                checked_certs[rec.author_fingerprint] = pki.check_cert(cert, ca_pem).name
            except pki.PKIError as e:
                return bad(f"author certificate rejected: {e}")
        if ca_pem is not None and checked_certs[rec.author_fingerprint] != rec.author:
            return bad(
                f"author {_shown(rec.author)} does not match the certificate CN "
                f"{checked_certs[rec.author_fingerprint]!r}"
            )
        try:
            sig = base64.b64decode(rec.signature, validate=True)
        except ValueError:
            return bad("signature is not base64")
        if not pki.verify_signature(cert, rec.canonical_bytes(), sig):
            return bad(f"signature by {_shown(rec.author)} is invalid (record altered or forged)")
        problem = check_protocol(rec, closes, results, slices)
        if problem:
            return bad(problem)
        prev = rec.hash
    if head is not None:
        head_seq, head_hash = head
        if head_seq != len(records) - 1:
            return ChainReport(
                ok=False,
                count=len(records),
                bad_seq=len(records),
                reason=f"chain head says seq {head_seq} but {len(records)} records are present "
                "(records dropped from the end or head altered)",
            )
        if head_hash != prev:
            return ChainReport(
                ok=False,
                count=len(records),
                bad_seq=head_seq,
                reason="chain head hash does not match the last record",
            )
    return ChainReport(ok=True, count=len(records))
