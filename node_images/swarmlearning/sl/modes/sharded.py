"""Sharded round: every slice of the model has its own leader; no node receives another's whole model.

When the contract may merge sharded (:func:`may_shard`: ``mergeMode`` ``sharded`` or ``auto`` and a
coordinate-wise method: ``mean``, ``coordmedian``, ``trimmedmean``), every node cuts its round input into
:data:`~swarmlearning.sl.kinds.CHUNKS` chunks (``swarmlearning.sl.slices``) and declares the digest of
their manifest with its ready mark. The close record then decides (:func:`is_sharded`, the same answer
for everyone): rounds after the initial one with S >= 2 slices, S = the number of leader-eligible
participants (at most CHUNKS), and for ``auto`` S >= :data:`AUTO_FROM` and inputs of at least
:data:`AUTO_MIN_BYTES`.

A sharded round is a reduce-scatter then an all-gather over the SL links:

1. the leader of slice k (``swarmlearning.ledger.slice_leader_for``: each eligible participant leads
   one slice at attempt 0) holds a slice leadership lease, fetches every participant's manifest (checked
   against its declared digest) and then only its slice's chunks (checked against the manifest);
   participants whose layout differs from the majority's, or whose chunks are unreachable, malformed or
   non-finite, are rejected for that slice; it merges the rest with the contract's method, serves the
   merged chunks and commits a signed ``slice`` record (participants, weights, rejected, merged chunk
   digests). If it dies, the next leader in the ranking redoes that slice only;
2. every participant fetches every merged slice (checked against the slice records) and assembles the
   merged model; the round's leader (``leader_for``, as in single mode) commits the ``round`` record
   with a digest per slice and of the whole model, and everyone checks its assembled model against it.

Per node and round that is about 2 (N-1)/N model sizes received and as many sent, whatever N is (single
mode: the leader receives and sends N-1 whole models). Coordinate-wise merges give the same result per
slice as on the whole model. Krum and the geometric median need whole vectors: single mode.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from swarmlearning.ledger import Record, RoundClose, RoundWatch, slice_leader_for
from swarmlearning.merge import merge, validate_peer_model
from swarmlearning.sl import privacy
from swarmlearning.sl import slices as sl
from swarmlearning.sl.kinds import CHUNKS, chunk_kind, chunk_range, chunk_range_kind, split_chunks
from swarmlearning.sl.metrics import peer_error_reason, reject_reason
from swarmlearning.sl.modes.base import (
    FETCH_TIMEOUT_SECONDS,
    INITIAL_ROUND,
    RoundAbandoned,
    RoundContext,
    RoundFailed,
    abandon_stale,
    by_attempts,
    majority_structure,
    merge_weights,
    still_training,
)
from swarmlearning.sl.peers import HeldModel, ModelKey, ModelStore, PeerError
from swarmlearning.sl.progress import Progress, round_extra
from swarmlearning.sl.weights import decode_state, digest, encode_state

MODES = ("single", "sharded", "auto")
"""Contract parameter ``mergeMode``; ``auto`` (the default) shards from :data:`AUTO_FROM` slices."""
DEFAULT_MODE = "auto"
SHARDABLE = ("mean", "coordmedian", "trimmedmean")
AUTO_FROM = 4
AUTO_MIN_BYTES = 16 << 20
"""``auto`` merges sharded from AUTO_FROM leader-eligible participants and models of AUTO_MIN_BYTES on.
Measured (``make bench`` part scaling, all nodes on one 2-core machine, 2026-12-02): at 4 MB sharded
rounds took 1.5-2.4x as long as single ones (N = 4..32: S slice records and 3 (N-1) requests per node
cost more than the bytes they save); at 40 MB sharded took 0.91x (N = 4) and 0.93x (N = 8) of single's
time while moving 0.5x and 0.25x the busiest node's bytes."""
RESULT_FETCH_SECONDS = 60.0


def may_shard(params: Mapping[str, Any]) -> bool:
    """Whether rounds of a contract with these recorded parameters can be sharded (inputs are then
    chunked when they are handed in). Merge plugins (``plugin:<name>``) never are: a plugin gets whole
    inputs on one leader, so ``auto`` merges them single."""
    mode = str(params.get("mergeMode", DEFAULT_MODE))
    if params.get("secureAggregation"):  # masked rounds run single-leader (swarmlearning.sl.modes.secagg)
        return False
    if str(params.get("mergeMethod", "mean")).startswith("plugin:"):
        return False
    if str(params.get("serverOptimizer") or "none") != "none":  # its state is whole-model (server_optimizer)
        return False
    return mode != "single" and str(params.get("mergeMethod", "mean")) in SHARDABLE


def slice_count(close: RoundClose) -> int:
    return min(CHUNKS, sum(1 for p in close.participants if p.leader_eligible))


def is_sharded(close: RoundClose, params: Mapping[str, Any]) -> bool:
    """The mode of a closed round, decided from the close record alone (so everyone agrees)."""
    if not may_shard(params) or close.round_no == INITIAL_ROUND:
        return False
    if not all(p.manifest for p in close.participants):
        return False
    s = slice_count(close)
    if str(params.get("mergeMode", DEFAULT_MODE)) == "sharded":
        return s >= 2
    return s >= AUTO_FROM and min(p.size for p in close.participants) >= AUTO_MIN_BYTES


def prepare_input(
    store: ModelStore, contract: str, round_no: int, payload: bytes, *, final: bool, progress: Progress
) -> str:
    """Cut a round input into chunks held for the slice leaders; returns its manifest's digest.
    Raises WeightsError when the payload is not safetensors (the ML process's bug: the sync fails)."""
    state = decode_state(payload)
    layout = sl.layout_of(state)
    plan = sl.chunk_plan(layout)
    digests = []
    for i, chunk in enumerate(sl.cut(state, plan)):
        data = encode_state(chunk)
        digests.append(
            store.put(
                ModelKey(contract, round_no, chunk_kind("input-chunk", i)),
                data,
                final=final,
                progress=progress,
            )
        )
    manifest = sl.Manifest(sl.layout_digest(layout), tuple(digests)).to_bytes()
    return store.put(ModelKey(contract, round_no, "manifest"), manifest, final=final, progress=progress)


class Sharded:
    name = "sharded"

    async def complete(self, ctx: RoundContext, close: RoundClose) -> tuple[Record, bytes]:
        s = slice_count(close)
        ctx.note(f"round {close.round_no}: sharded merge in {s} slices ({ctx.method})")
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with ctx.ledger.watch_round(close) as rw:
            tasks = [asyncio.ensure_future(self._slice(ctx, rw, k, s)) for k in range(s)]
            try:
                done = await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            records = [rec for rec, _ in done]
            chunk_bytes = [b for _, chunks in done for b in chunks]
            assembled = await asyncio.to_thread(_assemble_own, ctx, close, chunk_bytes)
            own_digest = digest(assembled) if assembled is not None else ""
            if assembled is not None:
                ctx.store.put(ModelKey(close.contract, close.round_no, "merged"), assembled)
            ctx.metrics.observe_phase("distribution", loop.time() - start)
            record = await self._round_record(ctx, rw, records, own_digest, assembled)
        if record.kind == "abandon":
            raise RoundAbandoned()
        if assembled is None or record.body.get("merged_digest") != own_digest:
            # This node's model has another layout than the swarm's: take the whole merged model.
            ctx.note(f"round {close.round_no}: fetching the merged model whole (own layout differs)")
            return record, await ctx.fetch_merged(close, record)
        ctx.store.drop(ModelKey(close.contract, close.round_no, "input"))
        return record, assembled

    # ------------------------------------------------------------------ one slice

    async def _slice(self, ctx: RoundContext, rw: RoundWatch, k: int, s: int) -> tuple[Record, list[bytes]]:
        close = rw.close
        record, merged = await by_attempts(
            ctx,
            close,
            f"round {close.round_no} slice {k}",
            lambda attempt: slice_leader_for(close, k, attempt),
            lambda attempt: self._lead_slice(ctx, close, k, s, attempt),
            lambda attempt: rw.wait_slice(k, attempt, leader_timeout_s=ctx.leader_timeout),
            announce=False,  # one line per slice and round would drown the log
        )
        return record, merged if merged is not None else await _fetch_merged_chunks(ctx, close, record)

    async def _lead_slice(
        self, ctx: RoundContext, close: RoundClose, k: int, s: int, attempt: int
    ) -> tuple[Record, list[bytes]]:
        chunk_ids = sl.slice_chunks(k, s)
        what = f"round {close.round_no} slice {k}"
        async with ctx.ledger.hold_slice_leadership(
            close.contract, close.round_no, k, attempt, ttl_s=ctx.leader_ttl
        ):
            loop = asyncio.get_running_loop()
            fetch_start = loop.time()
            rejected: dict[str, str] = {}
            reasons: dict[str, str] = {}
            manifests, held = await self._manifests(ctx, close, rejected, reasons)
            layouts: dict[str, list[str]] = {}
            for name, m in manifests.items():
                layouts.setdefault(m.layout, []).append(name)
            layout = ""
            if layouts:
                layout = max(layouts, key=lambda lay: (len(layouts[lay]), ctx.name in layouts[lay]))
            for name, m in manifests.items():
                if m.layout != layout:
                    rejected[name] = "names, shapes or dtypes differ from the majority's (manifest layout)"
            candidates = sorted(n for n, m in manifests.items() if m.layout == layout)
            states = await self._slice_inputs(ctx, close, candidates, manifests, chunk_ids, rejected, reasons)
            merge_start = loop.time()
            ctx.metrics.observe_phase("fetch", merge_start - fetch_start)
            reference = majority_structure(states, prefer=ctx.name)
            accepted = []
            for name, state in states.items():
                problem = validate_peer_model(reference, state)
                if problem is None:
                    accepted.append(name)
                else:
                    rejected[name] = problem
            for name, why in sorted(rejected.items()):
                ctx.note(f"{what}: rejected input of {name}: {why}")
                ctx.metrics.rejected(reasons.get(name) or reject_reason(why))
            if not accepted:
                raise RoundFailed(f"{what}: every input was rejected: {rejected}")
            accepted.sort()
            weights = merge_weights(close, accepted)
            result = await asyncio.to_thread(
                merge,
                ctx.method,
                [states[n] for n in accepted],
                [weights[n] for n in accepted],
                **ctx.merge_options(),
            )
            merged = await asyncio.to_thread(_encode_chunks, result.state, chunk_ids)
            digests = [
                ctx.store.put(ModelKey(close.contract, close.round_no, chunk_kind("merged-chunk", i)), data)
                for i, data in zip(chunk_ids, merged, strict=True)
            ]
            ctx.metrics.observe_phase("merge", loop.time() - merge_start)
            finished = sorted(n for n, h in held.items() if h.final)
            body = {
                "slices": s,
                "chunks": [chunk_ids.start, chunk_ids.stop],
                "layout": layout,
                "participants": accepted,
                "weights": weights,
                "input_manifests": {n: close.participant(n).manifest for n in accepted},
                "merged_chunks": digests,
                "merge_method": ctx.method,
                "rejected": rejected,
                "extra": {
                    "finished": finished,
                    **round_extra({n: h.progress for n, h in held.items()}, accepted),
                },
            }
            commit_start = loop.time()
            record = await ctx.ledger.commit_slice(close.contract, close.round_no, k, attempt, body)
            ctx.metrics.observe_phase("commit", loop.time() - commit_start)
            ctx.metrics.ledger_seq(record.seq)
        ctx.note(
            f"{what}: committed merge of {len(accepted)} inputs"
            + (f", rejected {sorted(rejected)}" if rejected else "")
        )
        return record, merged

    async def _manifests(
        self, ctx: RoundContext, close: RoundClose, rejected: dict[str, str], reasons: dict[str, str]
    ) -> tuple[dict[str, sl.Manifest], dict[str, HeldModel]]:
        raw = await asyncio.gather(
            *(_fetch(ctx, close, p.name, p.endpoint, "manifest", p.manifest) for p in close.participants),
            return_exceptions=True,
        )
        manifests: dict[str, sl.Manifest] = {}
        held: dict[str, HeldModel] = {}
        for p, got in zip(close.participants, raw, strict=True):
            if isinstance(got, BaseException):
                rejected[p.name] = f"unreachable: {got}"
                reasons[p.name] = peer_error_reason(got.kind if isinstance(got, PeerError) else "")
                continue
            held[p.name] = got
            try:
                manifests[p.name] = sl.Manifest.from_bytes(got.data)
            except ValueError as exc:
                rejected[p.name] = f"bad manifest: {exc}"
        return manifests, held

    async def _slice_inputs(
        self,
        ctx: RoundContext,
        close: RoundClose,
        names: Sequence[str],
        manifests: Mapping[str, sl.Manifest],
        chunk_ids: range,
        rejected: dict[str, str],
        reasons: dict[str, str],
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Per participant, its slice's chunks as one state_dict (``<chunk>/<tensor>`` keys): one request
        per participant, every chunk checked against its manifest."""
        kind = chunk_range_kind("input-chunk", chunk_ids.start, chunk_ids.stop)
        got = await asyncio.gather(
            *(_fetch(ctx, close, n, close.participant(n).endpoint, kind, None) for n in names),
            return_exceptions=True,
        )
        states: dict[str, dict[str, torch.Tensor]] = {}
        for name, result in zip(names, got, strict=True):
            if isinstance(result, BaseException):
                rejected[name] = f"unreachable: {result}"
                reasons[name] = peer_error_reason(result.kind if isinstance(result, PeerError) else "")
                continue
            try:
                chunks = split_chunks(result.data, len(chunk_ids))
                state: dict[str, torch.Tensor] = {}
                for i, data in zip(chunk_ids, chunks, strict=True):
                    if digest(data) != manifests[name].chunks[i]:
                        raise ValueError(f"chunk {i}'s digest differs from its manifest")
                    state.update({f"{i:02d}/{t}": v for t, v in decode_state(data).items()})
            except Exception as exc:  # a peer's garbage must not stop the round
                rejected[name] = f"bad chunks: {exc}"
                reasons[name] = "digest" if "digest" in str(exc) else ""
                continue
            states[name] = state
        return states

    # ------------------------------------------------------------------ the round record

    async def _round_record(
        self,
        ctx: RoundContext,
        rw: RoundWatch,
        records: Sequence[Record],
        own_digest: str,
        assembled: bytes | None,
    ) -> Record:
        close = rw.close

        async def lead(attempt: int) -> tuple[Record, None]:
            if assembled is None:
                raise RoundFailed(
                    f"round {close.round_no}: as its leader, this node cannot assemble the model"
                )
            async with ctx.ledger.hold_leadership(
                close.contract, close.round_no, attempt, ttl_s=ctx.leader_ttl
            ):
                await ctx.archive(close.contract, close.round_no, assembled, own_digest)
                await abandon_stale(ctx, close)
                record = await _commit(ctx, close, attempt, records, own_digest)
            ctx.metrics.round_led(close.contract)
            ctx.metrics.ledger_seq(record.seq)
            return record, None

        record, _ = await by_attempts(
            ctx,
            close,
            f"round {close.round_no}",
            lambda attempt: ctx.ledger.leader_for(close, attempt),
            lead,
            lambda attempt: rw.wait_round(attempt, leader_timeout_s=ctx.leader_timeout),
        )
        return record


async def _commit(
    ctx: RoundContext, close: RoundClose, attempt: int, records: Sequence[Record], merged_digest: str
) -> Record:
    merged: set[str] = set()
    finished: set[str] = set()
    rejected: dict[str, str] = {}
    loss: dict[str, float] = {}
    metric: dict[str, float] = {}
    epsilon: dict[str, float] = {}
    slices = []
    for rec in records:
        body, slice_extra = rec.body, rec.body.get("extra") or {}
        merged |= set(body["participants"])
        finished |= set(slice_extra.get("finished", ()))
        for name, why in sorted(body.get("rejected", {}).items()):
            rejected.setdefault(name, f"slice {body['slice']}: {why}")
        loss.update(slice_extra.get("loss", {}))
        metric.update(slice_extra.get("metric", {}))
        epsilon.update(slice_extra.get("epsilon", {}))
        slices.append(
            {
                "slice": body["slice"],
                "seq": rec.seq,
                "leader": rec.author,
                "digest": hashlib.sha256("".join(body["merged_chunks"]).encode()).hexdigest(),
            }
        )
    participants = sorted(merged)
    extra: dict[str, Any] = {
        "mode": "sharded",
        "selected": participants,
        "iterations": 0,
        "final": sorted(finished & merged),
        "training": await still_training(ctx, close, finished),
        **({"loss": loss} if loss else {}),
        **({"metric": metric} if metric else {}),
        **({"epsilon": epsilon} if epsilon else {}),
    }
    if protected := privacy.privacy_extra(ctx.params, close.round_no):
        extra["privacy"] = protected
    return await ctx.ledger.commit_round(
        close.contract,
        close.round_no,
        attempt,
        participants=participants,
        weights=merge_weights(close, participants),
        input_digests={n: close.participant(n).digest for n in participants},
        merged_digest=merged_digest,
        merge_method=ctx.method,
        rejected=rejected,
        extra=extra,
        slices=slices,
    )


def _encode_chunks(state: Mapping[str, torch.Tensor], chunk_ids: range) -> list[bytes]:
    per_chunk: dict[int, dict[str, torch.Tensor]] = {i: {} for i in chunk_ids}
    for key, tensor in state.items():
        chunk, _, name = key.partition("/")
        per_chunk[int(chunk)][name] = tensor
    return [encode_state(per_chunk[i]) for i in chunk_ids]


def _assemble_own(ctx: RoundContext, close: RoundClose, chunk_bytes: Sequence[bytes]) -> bytes | None:
    """The merged model in this node's own layout, or None when its layout is not the merged one."""
    own = ctx.store.get(ModelKey(close.contract, close.round_no, "input"))
    if own is None:
        return None
    layout = sl.layout_of(decode_state(own.data))
    try:
        state = sl.assemble(layout, sl.chunk_plan(layout), [decode_state(b) for b in chunk_bytes])
    except ValueError:
        return None
    return encode_state(state)


async def _fetch(
    ctx: RoundContext, close: RoundClose, name: str, endpoint: str, kind: str, expected: str | None
) -> HeldModel:
    if name == ctx.name:
        held = ctx.store.get(ModelKey(close.contract, close.round_no, kind))
        if held is None and (span := chunk_range(kind)) is not None:
            held = ctx.store.chunks(close.contract, close.round_no, *span)
        if held is None:
            raise PeerError(f"own {kind} is no longer held")
        return held
    return await ctx.peers.fetch(
        endpoint,
        close.contract,
        close.round_no,
        kind,
        timeout=FETCH_TIMEOUT_SECONDS,
        expected_digest=expected,
    )


async def _fetch_merged_chunks(ctx: RoundContext, close: RoundClose, record: Record) -> list[bytes]:
    """The merged chunks a slice record names, from its leader first, then from any participant that
    has them (each checked against the record)."""
    body = record.body
    try:
        first, stop = (int(x) for x in body["chunks"])
        digests = [str(d) for d in body["merged_chunks"]]
        if len(digests) != stop - first or not 0 <= first < stop <= CHUNKS:
            raise ValueError(f"chunks {first}..{stop} with {len(digests)} digests")
    except (KeyError, TypeError, ValueError) as exc:
        raise RoundFailed(f"round {close.round_no}: malformed slice record {record.seq}: {exc}") from exc
    endpoints = [str(body.get("leader_endpoint") or "")]
    endpoints += [p.endpoint for p in close.participants if p.name != ctx.name]
    endpoints = [e for e in dict.fromkeys(endpoints) if e]
    loop = asyncio.get_running_loop()

    keys = [
        ModelKey(close.contract, close.round_no, chunk_kind("merged-chunk", i)) for i in range(first, stop)
    ]
    held = [ctx.store.get(k) for k in keys]
    if all(h is not None and h.digest == d for h, d in zip(held, digests, strict=True)):
        return [h.data for h in held if h is not None]
    kind = chunk_range_kind("merged-chunk", first, stop)
    deadline = loop.time() + RESULT_FETCH_SECONDS
    errors: list[str] = []
    while loop.time() < deadline:
        for ep in endpoints:
            try:
                got = await ctx.peers.fetch(
                    ep, close.contract, close.round_no, kind, timeout=FETCH_TIMEOUT_SECONDS
                )
                chunks = split_chunks(got.data, stop - first)
            except (PeerError, ValueError) as exc:
                errors.append(str(exc))
                continue
            bad = [first + j for j, (c, d) in enumerate(zip(chunks, digests, strict=True)) if digest(c) != d]
            if bad:
                errors.append(f"{ep}: merged chunks {bad} differ from slice record {record.seq}")
                continue
            for k, c in zip(keys, chunks, strict=True):
                ctx.store.put(k, c)
            return chunks
        await asyncio.sleep(0.5)
    raise RoundFailed(
        f"round {close.round_no}: could not download merged chunks {first}..{stop - 1} of slice record "
        f"{record.seq} within {RESULT_FETCH_SECONDS:g}s: {errors[-3:]}"
    )
