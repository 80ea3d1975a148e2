"""What the console shows, computed from ledger records (pure logic: records in, API bodies out)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from swarmlearning.ledger import Member, Record

from .models import Node, Round, RoundPrivacy, RoundSlice, Task


def _seconds(start: str, end: str) -> float | None:
    try:
        t0 = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        t1 = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((t1 - t0).total_seconds(), 3)


def _floats(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _strs(d: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}


def _names(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else []


def rounds(records: Iterable[Record], contract: str) -> list[Round]:
    """Every closed round of ``contract`` in round order, with its result when there is one.

    A round's leader is the author of its result (a verified chain has it signed by the drawn leader);
    ``final`` means the leader saw every participant finished (no one listed as still training).
    """
    closes: dict[int, Record] = {}
    results: dict[int, Record] = {}
    for r in records:
        if r.contract != contract or r.kind not in ("close", "round", "abandon"):
            continue
        n = r.body.get("round")
        if not isinstance(n, int):
            continue
        (closes if r.kind == "close" else results).setdefault(n, r)
    out = []
    for n in sorted(closes):
        close, res = closes[n], results.get(n)
        participants = [str(p.get("name")) for p in close.body.get("participants", []) if isinstance(p, dict)]
        base: dict[str, Any] = {
            "contract": contract,
            "round": n,
            "participants": participants,
            "closed_at": close.time,
            "result": "open",
            "seq": close.seq,
        }
        if res is not None:
            base.update(
                result=res.kind, seq=res.seq, committed_at=res.time, duration_s=_seconds(close.time, res.time)
            )
        if res is not None and res.kind == "round":
            b = res.body
            raw_extra = b.get("extra")
            extra: Mapping[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
            attempt = b.get("attempt")
            base.update(
                attempt=attempt if isinstance(attempt, int) else None,
                leader=res.author,
                participants=_names(b.get("participants")) or participants,
                merge_method=str(b.get("merge_method", "")),
                merge_mode=extra.get("mode") if extra.get("mode") in ("sharded", "secagg") else "single",
                slices=_slices(b.get("slices")),
                weights=_floats(b.get("weights")),
                input_digests=_strs(b.get("input_digests")),
                merged_digest=str(b.get("merged_digest", "")) or None,
                rejected=_strs(b.get("rejected")),
                loss=_floats(extra.get("loss")),
                metric=_floats(extra.get("metric")),
                final=not _names(extra.get("training")),
                privacy=_privacy(extra),
            )
        out.append(Round(**base))
    return out


def _privacy(extra: Mapping[str, Any]) -> RoundPrivacy | None:
    """A round record's privacy figures (``extra["privacy"]`` and the DP-SGD ``extra["epsilon"]``)."""
    raw = extra.get("privacy")
    privacy: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    site = privacy.get("siteDp") if isinstance(privacy.get("siteDp"), dict) else {}
    secure = privacy.get("secureAggregation") if isinstance(privacy.get("secureAggregation"), dict) else None
    sgd = _floats(extra.get("epsilon"))
    if not site and secure is None and not sgd:
        return None
    site_figures = _floats(site)
    secure = secure or {}
    threshold = secure.get("threshold")
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        threshold = None
    return RoundPrivacy(
        site_dp_epsilon=site_figures.get("epsilon"),
        site_dp_delta=site_figures.get("delta"),
        site_dp_clip_norm=site_figures.get("clipNorm"),
        site_dp_noise_multiplier=site_figures.get("noiseMultiplier"),
        dp_sgd_epsilon=sgd,
        secure_aggregation="threshold" in secure,
        secagg_threshold=threshold,
        secagg_sharers=_names(secure.get("sharers")),
        secagg_revealers=_names(secure.get("revealers")),
        secagg_dropped=_names(secure.get("dropped")),
    )


def _slices(raw: object) -> list[RoundSlice]:
    """A sharded round record's slices; malformed entries (a signed but odd body) are left out."""
    out = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        k, seq, leader, dg = item.get("slice"), item.get("seq"), item.get("leader"), item.get("digest")
        if isinstance(k, int) and isinstance(seq, int) and isinstance(leader, str) and isinstance(dg, str):
            out.append(RoundSlice(slice=k, leader=leader, seq=seq, digest=dg))
    return out


def tasks(records: Sequence[Record]) -> list[Task]:
    """Every training contract on the ledger, in the order they were first recorded."""
    out = []
    seen: set[str] = set()
    for rec in records:
        if rec.kind != "contract" or rec.contract in seen:
            continue
        seen.add(rec.contract)
        rs = rounds(records, rec.contract)
        out.append(_task(rec, rs))
    return out


def _task(rec: Record, rs: list[Round]) -> Task:
    committed = [r for r in rs if r.result == "round"]
    params = rec.body.get("params")
    return Task(
        contract=rec.contract,
        params=dict(params) if isinstance(params, dict) else {},
        created=rec.time,
        author=rec.author,
        rounds_committed=len(committed),
        latest_round=committed[-1].round if committed else None,
        participants=sorted({p for r in rs for p in r.participants}),
        finished=bool(committed) and committed[-1].final,
    )


def task(records: Sequence[Record], contract: str) -> tuple[Task, list[Round]] | None:
    """One contract and its rounds, or None when the ledger has no such contract."""
    for rec in records:
        if rec.kind == "contract" and rec.contract == contract:
            rs = rounds(records, contract)
            return _task(rec, rs), rs
    return None


def nodes(records: Sequence[Record], live: Sequence[Member]) -> list[Node]:
    """Every SL node that ever joined (its first member record), with whether its lease is held now
    and, per contract, the last round it took part in."""
    live_by_name = {m.name: m for m in live}
    first: dict[str, Record] = {}
    latest: dict[str, Record] = {}
    last_round: dict[str, dict[str, int]] = {}
    for rec in records:
        if rec.kind == "member":
            first.setdefault(rec.author, rec)
            latest[rec.author] = rec
        elif rec.kind == "round" and isinstance(rec.body.get("round"), int):
            for name in _names(rec.body.get("participants")):
                last_round.setdefault(name, {})[rec.contract] = rec.body["round"]
    out = []
    for name in sorted(first):
        body = latest[name].body
        m = live_by_name.get(name)
        out.append(
            Node(
                name=name,
                organisation=m.organisation if m else str(body.get("organisation", "")),
                fingerprint=m.fingerprint
                if m
                else str(body.get("fingerprint", latest[name].author_fingerprint)),
                endpoint=m.endpoint if m else str(body.get("endpoint", "")),
                leader_eligible=m.leader_eligible if m else bool(body.get("leader_eligible", True)),
                live=m is not None,
                joined=first[name].time,
                last_round=last_round.get(name, {}),
            )
        )
    return out
