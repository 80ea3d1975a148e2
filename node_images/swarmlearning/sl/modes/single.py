"""Single-leader round: the round's leader fetches every participant's whole input, merges, commits.

The leader of attempt ``a`` (drawn from the close record) holds a leadership lease, fetches every
participant's input, checks it against the digest the peer declared, rejects wrong names, shapes, dtypes
and non-finite values, merges the rest with the contract's method, serves the result and commits a
signed round record (inputs, weights, digests, rejected peers, and in ``extra`` the latest validation
loss/metric each accepted participant's ML process reported with its input). Everyone else waits for
that record and fetches the merged model. If the leader dies, the next attempt's leader takes over.

A merge plugin (``plugin:<name>``) merges here, on the leader; the record names it in
``extra["merge_plugin"]``. If it fails on the leader, the contract's ``mergeFallback`` merges instead
(the record's ``merge_method`` is the fallback, ``extra["merge_plugin_error"]`` the message); with
``none`` the leader commits an ``abandon`` record naming the error and every participant fails the round
with it at once (see :func:`_merge`), rather than trying further leaders or waiting out a timeout.

Round 1 is the initial sync: the leader's own weights become everyone's starting point (averaging
random initialisations would shrink them). Every method can run this way; Krum and the geometric
median need whole vectors, so they always do.
"""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from swarmlearning.etcd import EtcdError
from swarmlearning.ledger import LedgerError, Record, RoundClose
from swarmlearning.merge import MergeResult, PluginError, merge, validate_peer_model
from swarmlearning.sl import privacy
from swarmlearning.sl.metrics import peer_error_reason, reject_reason
from swarmlearning.sl.modes.base import (
    FETCH_TIMEOUT_SECONDS,
    INITIAL_ROUND,
    RoundAbandoned,
    RoundContext,
    RoundFailed,
    abandon_stale,
    log,
    majority_structure,
    merge_weights,
    one_leader_round,
    still_training,
)
from swarmlearning.sl.peers import HeldModel, ModelKey, PeerError
from swarmlearning.sl.progress import Progress, round_extra
from swarmlearning.sl.server_optimizer import FedAvgM, continue_from_ledger
from swarmlearning.sl.weights import decode_state, digest, encode_state


class SingleLeader:
    name = "single"

    async def complete(self, ctx: RoundContext, close: RoundClose) -> tuple[Record, bytes]:
        try:
            return await one_leader_round(
                ctx,
                close,
                lambda attempt: self._lead(ctx, close, attempt),
                lambda attempt: ctx.ledger.wait_round_result(
                    close, attempt, leader_timeout_s=ctx.leader_timeout
                ),
            )
        except RoundAbandoned:
            # A leader whose merge failed without a fallback abandoned the round naming why: fail it here
            # too, with that message (else the next round would fail the same way, forever).
            result = await ctx.ledger.round_result(close.contract, close.round_no)
            error = result.body.get("merge_plugin_error") if result is not None else None
            if error:
                raise RoundFailed(f"{error} (mergeFallback none: the round fails)") from None
            raise

    async def _lead(self, ctx: RoundContext, close: RoundClose, attempt: int) -> tuple[Record, bytes]:
        ledger = ctx.ledger
        method = ctx.method
        ctx.note(
            f"round {close.round_no}: leading attempt {attempt}, merging {len(close.participants)} "
            f"inputs ({method})"
        )
        async with ledger.hold_leadership(close.contract, close.round_no, attempt, ttl_s=ctx.leader_ttl):
            loop = asyncio.get_running_loop()
            fetch_start = loop.time()
            raw = await asyncio.gather(
                *(_fetch_input(ctx, close, p.name, p.endpoint, p.digest) for p in close.participants),
                return_exceptions=True,
            )
            merge_start = loop.time()
            ctx.metrics.observe_phase("fetch", merge_start - fetch_start)
            reasons: dict[str, str] = {}
            inputs: dict[str, tuple[bytes, dict[str, torch.Tensor], bool]] = {}
            progress: dict[str, Progress] = {}
            rejected: dict[str, str] = {}
            finished: set[str] = set()
            for p, got in zip(close.participants, raw, strict=True):
                if isinstance(got, BaseException):
                    rejected[p.name] = f"unreachable: {got}"
                    reasons[p.name] = peer_error_reason(got.kind if isinstance(got, PeerError) else "")
                    continue
                if got.final:
                    finished.add(p.name)
                progress[p.name] = got.progress  # recorded only if the input is accepted
                try:
                    inputs[p.name] = (got.data, decode_state(got.data), got.final)
                except Exception as exc:  # a peer's garbage must not stop the round
                    rejected[p.name] = f"not safetensors: {exc}"
            reference = majority_structure({n: v[1] for n, v in inputs.items()}, prefer=ctx.name)
            accepted: list[str] = []
            for name, (_, state, _) in inputs.items():
                problem = validate_peer_model(reference, state)
                if problem is None:
                    accepted.append(name)
                else:
                    rejected[name] = problem
            for name, why in rejected.items():
                ctx.note(f"round {close.round_no}: rejected input of {name}: {why}")
                ctx.metrics.rejected(reasons.get(name) or reject_reason(why))
            if not accepted:
                raise RoundFailed(f"round {close.round_no}: every input was rejected: {rejected}")
            accepted.sort()
            extra: dict[str, Any]
            if close.round_no == INITIAL_ROUND:
                # Everyone starts from one model: the leader's (or the first valid) initial weights.
                start = ctx.name if ctx.name in accepted else accepted[0]
                merged_bytes = inputs[start][0]
                weights = {n: (1.0 if n == start else 0.0) for n in accepted}
                used_method, extra = "initial", {"start": start}
            else:
                weights = merge_weights(close, accepted)
                result, used_method, extra = await _merge(
                    ctx,
                    close,
                    attempt,
                    method,
                    [inputs[n][1] for n in accepted],
                    [weights[n] for n in accepted],
                )
                state = result.state
                if (server := FedAvgM.of(ctx.params)) is not None:
                    state, extra["server_optimizer"] = await continue_from_ledger(
                        ctx, close.contract, server, state
                    )
                merged_bytes = await asyncio.to_thread(encode_state, state)
                extra |= {"selected": [accepted[i] for i in result.selected], "iterations": result.iterations}
            extra["final"] = sorted(n for n in accepted if inputs[n][2])
            extra["training"] = await still_training(ctx, close, finished)
            extra |= round_extra(progress, accepted)
            if protected := privacy.privacy_extra(ctx.params, close.round_no):
                extra["privacy"] = protected
            merged_digest = ctx.store.put(ModelKey(close.contract, close.round_no, "merged"), merged_bytes)
            ctx.metrics.observe_phase("merge", loop.time() - merge_start)
            # Everyone in the close receives the merged model (also those rejected).
            ctx.metrics.distribution_started(
                close.contract, close.round_no, sum(1 for n in close.names if n != ctx.name)
            )
            # On disk before the commit: if this node dies right after committing, its restart (or
            # anyone sharing the archive) still serves the model the record names.
            await ctx.archive(close.contract, close.round_no, merged_bytes, merged_digest)
            await abandon_stale(ctx, close)
            commit_start = loop.time()
            record = await ledger.commit_round(
                close.contract,
                close.round_no,
                attempt,
                participants=accepted,
                weights=weights,
                input_digests={n: digest(inputs[n][0]) for n in accepted},
                merged_digest=merged_digest,
                merge_method=used_method,
                rejected=rejected,
                extra=extra,
            )
            ctx.metrics.observe_phase("commit", loop.time() - commit_start)
            ctx.metrics.ledger_seq(record.seq)
            ctx.metrics.round_led(close.contract)
        ctx.note(
            f"round {close.round_no}: committed merge of {len(accepted)} inputs"
            + (f", rejected {sorted(rejected)}" if rejected else "")
        )
        return record, merged_bytes


async def _merge(
    ctx: RoundContext,
    close: RoundClose,
    attempt: int,
    method: str,
    models: list[dict[str, torch.Tensor]],
    weights: list[float],
) -> tuple[MergeResult, str, dict[str, Any]]:
    """The leader's merge: (result, the method that merged, record extras).

    A ``plugin:<name>`` method that fails (not installed here, cannot load, raises, bad output) is
    replaced by the contract's ``mergeFallback`` (extras: ``merge_plugin_error``); with ``none`` the
    round fails: the leader records it as abandoned naming the error, so every participant fails it at
    once (``SingleLeader.complete``) rather than each waiting out its leader timeout.
    """
    try:
        result = await asyncio.to_thread(merge, method, models, weights, **ctx.merge_options())
    except PluginError as exc:
        fallback = merge_fallback(ctx)
        if fallback == "none":
            message = f"round {close.round_no}: leader {ctx.name} could not merge with {method}: {exc}"
            await _record_merge_failure(ctx, close, attempt, method, message)
            raise RoundFailed(message + " (mergeFallback none: the round fails)") from exc
        ctx.note(f"round {close.round_no}: {exc}; merging with mergeFallback {fallback}")
        result = await asyncio.to_thread(merge, fallback, models, weights, **ctx.merge_options())
        return result, fallback, {"merge_plugin_error": str(exc)}
    if result.plugin is not None:
        return result, method, {"merge_plugin": result.plugin.to_record()}
    return result, method, {}


def merge_fallback(ctx: RoundContext) -> str:
    """The contract's ``mergeFallback`` (recorded, else this node's setting; default ``none``)."""
    return str(ctx.params.get("mergeFallback") or ctx.settings.get("mergeFallback") or "none")


async def _record_merge_failure(
    ctx: RoundContext, close: RoundClose, attempt: int, method: str, message: str
) -> None:
    """Give the round its one result, an ``abandon`` record naming the merge error (a closed round
    without a merge, as the ledger's rules allow any member to sign), so the others stop waiting."""
    body = {
        "round": close.round_no,
        "close_seq": close.record.seq,
        "participants": sorted(close.names),
        "reason": f"the leader's merge failed: {message}",
        "attempt": attempt,
        "merge_method": method,
        "merge_plugin_error": message,
    }
    try:
        await ctx.ledger.fail_round(close.contract, close.round_no, body)
    except (EtcdError, LedgerError) as exc:
        log.warning("round %d: could not record the failed merge: %s", close.round_no, exc)


async def _fetch_input(
    ctx: RoundContext, close: RoundClose, name: str, endpoint: str, expected: str
) -> HeldModel:
    """A participant's round input with its finished flag and reported progress."""
    key = ModelKey(close.contract, close.round_no, "input")
    if name == ctx.name:
        held = ctx.store.get(key)
        if held is None:
            raise PeerError("own input is no longer held")
        return held
    return await ctx.peers.fetch(
        endpoint,
        close.contract,
        close.round_no,
        "input",
        timeout=FETCH_TIMEOUT_SECONDS,
        expected_digest=expected,
    )
