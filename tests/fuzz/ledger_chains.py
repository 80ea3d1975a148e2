"""Signed ledger chains for the record fuzz tests and atheris targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmlearning import pki
from swarmlearning.ledger.records import GENESIS_HASH, Record, make_record
from swarmlearning.ledger.rounds import Participant, draw_leader


def participants(names: list[str]) -> list[dict[str, Any]]:
    return [
        Participant(n, f"127.0.0.1:{30305 + i}", True, "d" * 64, 1.0, 10).to_dict()
        for i, n in enumerate(names)
    ]


def chain(
    nodes: Mapping[str, pki.NodeCert],
    bodies: list[tuple[str, str, Mapping[str, Any]]],
    prefix: list[Record] | None = None,
) -> list[Record]:
    """``prefix`` followed by records signed by ``author`` for each (author, kind, body), linked."""
    out = list(prefix or [])
    prev = out[-1].hash if out else GENESIS_HASH
    for author, kind, body in bodies:
        rec = make_record(
            seq=len(out), contract="" if kind == "member" else "c", kind=kind, body=body, prev_hash=prev,
            signer=nodes[author], time="2026-01-01T00:00:00.000Z",
        )  # fmt: skip
        out.append(rec)
        prev = rec.hash
    return out


def good_chain(nodes: Mapping[str, pki.NodeCert]) -> list[Record]:
    """member x2, close of round 1, its result signed by the drawn leader of attempt 0."""
    names = sorted(nodes)[:2]
    records = chain(nodes, [(n, "member", {"name": n}) for n in names])
    close_parts = participants(names)
    close_body = {"round": 1, "participants": close_parts}
    parts = tuple(Participant.from_dict(p) for p in close_parts)
    leader = draw_leader(parts, records[-1].hash, "c", 1, 0)  # seeded by the record before the close
    records = chain(nodes, [(names[0], "close", close_body)], records)
    return chain(nodes, [(leader, "round", {"round": 1, "attempt": 0, "participants": names})], records)


def certificates(nodes: Mapping[str, pki.NodeCert]) -> dict[str, bytes]:
    return {nc.fingerprint: nc.cert_pem() for nc in nodes.values()}
