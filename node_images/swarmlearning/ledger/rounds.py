"""Round values and the verifiable leader choice (pure logic).

The leader of attempt ``a`` of a closed round is drawn from the leader-eligible participants (sorted
by name) with ``sha256(prev_hash | contract | round | a)`` as the random number, where ``prev_hash``
is the hash of the ledger record preceding the round's close record: nobody controls it, anyone can
recompute it. Each attempt removes the previous attempts' leaders from the draw (a failed leader is
not chosen again until every eligible participant has had a turn).

In a sharded round (see ``swarmlearning.sl.modes.sharded``) slice ``k`` has its own leaders: the
eligible participants ranked by ``sha256(prev_hash | contract | round | name)``; attempt ``a`` of slice
``k`` is led by the ranked participant ``(k + a) mod E``. With one slice per eligible participant each
leads one slice at attempt 0, and a failed slice leader's slice moves to the next in the ranking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swarmlearning.ledger.records import Record


class NoEligibleLeader(ValueError):
    """No participant of the round may lead (all have leader_eligible=false)."""


@dataclass(frozen=True)
class Member:
    """A live SL node, from its leased membership key."""

    name: str
    organisation: str
    endpoint: str
    """``host:port`` of its SL server (weights exchange, 30305 in clusters)."""
    leader_eligible: bool
    fingerprint: str


@dataclass(frozen=True)
class Participant:
    """A node in a closed round, with what it declared when it marked itself ready."""

    name: str
    endpoint: str
    leader_eligible: bool
    digest: str
    """Digest of its local model (as computed by the SL node)."""
    weight: float
    """Merge weight (e.g. node weightage)."""
    samples: int
    """Samples trained on since the last round."""
    manifest: str = ""
    """Digest of its input's chunk manifest (contracts that may merge sharded), "" otherwise."""
    size: int = 0
    """Bytes of its input, declared with a manifest (the sharded mode's ``auto`` rule reads it)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": self.endpoint,
            "leader_eligible": self.leader_eligible,
            "digest": self.digest,
            "weight": self.weight,
            "samples": self.samples,
            **({"manifest": self.manifest, "size": self.size} if self.manifest else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Participant:
        return cls(
            name=str(d["name"]),
            endpoint=str(d["endpoint"]),
            leader_eligible=bool(d["leader_eligible"]),
            digest=str(d["digest"]),
            weight=float(d["weight"]),
            samples=int(d["samples"]),
            manifest=str(d.get("manifest") or ""),
            size=int(d.get("size") or 0),
        )


@dataclass(frozen=True)
class RoundClose:
    """A closed round: its fixed participant set and the leader of attempt 0."""

    contract: str
    round_no: int
    participants: tuple[Participant, ...]
    prev_hash: str
    """Hash of the ledger record before the close record: the leader draw's seed."""
    record: Record
    """The signed close record."""
    leader: str
    """Leader of attempt 0 (``leader_for(close, 0)``); "" if no participant is leader-eligible."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.participants)

    def participant(self, name: str) -> Participant:
        for p in self.participants:
            if p.name == name:
                return p
        raise KeyError(f"{name!r} is not a participant of round {self.round_no} of {self.contract!r}")

    @classmethod
    def from_record(cls, rec: Record) -> RoundClose:
        parts = tuple(Participant.from_dict(p) for p in rec.body["participants"])
        round_no = int(rec.body["round"])
        try:
            leader = draw_leader(parts, rec.prev_hash, rec.contract, round_no, 0)
        except NoEligibleLeader:
            leader = ""  # leader_for() raises with the explanation
        return cls(
            contract=rec.contract,
            round_no=round_no,
            participants=parts,
            prev_hash=rec.prev_hash,
            record=rec,
            leader=leader,
        )


def _draw(seed: str, contract: str, round_no: int, attempt: int, n: int) -> int:
    h = hashlib.sha256(f"{seed}|{contract}|{round_no}|{attempt}".encode()).digest()
    return int.from_bytes(h, "big") % n


def draw_leader(
    participants: tuple[Participant, ...], prev_hash: str, contract: str, round_no: int, attempt: int
) -> str:
    """Leader of ``attempt`` (>= 0); see the module docstring. Raises NoEligibleLeader."""
    if attempt < 0:
        raise ValueError(f"attempt={attempt}: must be >= 0")
    eligible = sorted(p.name for p in participants if p.leader_eligible)
    if not eligible:
        raise NoEligibleLeader(
            f"round {round_no} of {contract!r}: no participant is leader-eligible "
            f"({', '.join(p.name for p in participants) or 'no participants'})"
        )
    pool: list[str] = []
    pick = ""
    for a in range(attempt + 1):
        if not pool:
            pool = list(eligible)
        pick = pool.pop(_draw(prev_hash, contract, round_no, a, len(pool)))
    return pick


def leader_for(close: RoundClose, attempt: int) -> str:
    """Leader of ``attempt`` of a closed round; recomputable by anyone from the close record."""
    return draw_leader(close.participants, close.prev_hash, close.contract, close.round_no, attempt)


def slice_leader_for(close: RoundClose, slice_no: int, attempt: int) -> str:
    """Leader of ``attempt`` of slice ``slice_no`` (both >= 0) of a sharded round; see the module
    docstring. Raises NoEligibleLeader."""
    if slice_no < 0 or attempt < 0:
        raise ValueError(f"slice={slice_no}, attempt={attempt}: must be >= 0")
    eligible = sorted(p.name for p in close.participants if p.leader_eligible)
    if not eligible:
        raise NoEligibleLeader(
            f"round {close.round_no} of {close.contract!r}: no participant is leader-eligible"
        )
    ranked = sorted(
        eligible,
        key=lambda n: hashlib.sha256(
            f"{close.prev_hash}|{close.contract}|{close.round_no}|{n}".encode()
        ).digest(),
    )
    return ranked[(slice_no + attempt) % len(ranked)]


HAS_MODEL = "has"
FETCHING_MODEL = "fetching"


@dataclass(frozen=True)
class ModelDelivery:
    """Who holds the merged model of one round, as far as a serving node must care (see
    :meth:`swarmlearning.ledger.Ledger.model_delivery`)."""

    round_no: int
    has: tuple[str, ...]
    """Nodes that recorded holding the model (live or not), sorted."""
    waiting_for: tuple[str, ...]
    """Live nodes that need it and have not recorded it yet: participants of the round and nodes that
    announced they are fetching it, sorted."""
    left: tuple[str, ...]
    """Participants without the model whose membership lease expired (nobody waits for them), sorted."""

    @property
    def needed_by(self) -> int:
        """How many live or finished nodes the model is served for (``has`` + ``waiting_for``)."""
        return len(set(self.has) | set(self.waiting_for))

    @property
    def complete(self) -> bool:
        """Every live node that needs the model has it."""
        return not self.waiting_for


def model_delivery(
    round_no: int,
    participants: tuple[str, ...],
    live: frozenset[str],
    marks: Mapping[str, str],
) -> ModelDelivery:
    """The delivery state of a round's model from ``marks`` (node -> ``has``/``fetching`` for this
    round) and the ``live`` member names. Participants who left and never recorded the model are not
    waited for; announced fetchers count only while they are live."""
    has = {n for n, state in marks.items() if state == HAS_MODEL}
    fetching = {n for n, state in marks.items() if state == FETCHING_MODEL}
    needed = set(participants) | fetching
    return ModelDelivery(
        round_no=round_no,
        has=tuple(sorted(has)),
        waiting_for=tuple(sorted(n for n in needed - has if n in live)),
        left=tuple(sorted(n for n in set(participants) - has if n not in live)),
    )
