"""Securely aggregated round: the leader merges masked inputs and learns only their weighted sum.

The contract's ``secureAggregation`` turns it on for every round after the initial one (round 1 adopts
one random initialisation, which holds no data). The cryptography is ``swarmlearning.privacy.secagg``
(SecAgg: pairwise masks from X25519, dropouts recovered from Shamir-shared secrets); this module carries
its messages over the SL links. Every message is an item a node holds in its store and serves on 30305
(``sa-<step>-<attempt>``, :data:`swarmlearning.sl.kinds.SECAGG_STEPS`); the leader of the attempt pulls
the participants' messages and the participants pull the leader's, each waiting for the other's:

1. ``keys``: each participant's fresh public keys for this attempt, signed with its node key (its
   certificate is included), so a leader cannot slip in keys of its own and learn a pairwise mask;
2. ``keyset``: the leader's collection of the signed keys it received; everyone checks every signature
   against the swarm CA;
3. ``shares`` (to the leader only): per participant, its Shamir shares of its secrets, each encrypted
   for one peer; ``relay``: the leader's collection of them, and so the set U2 of nodes that shared;
4. ``masked``: each sharer's input × its merge weight in fixed point plus its masks (uniform noise to
   anyone alone); the leader's ``unmask`` names the survivors whose masked input it received;
5. ``reveal`` (to the leader only): each survivor's shares of the survivors' self masks and of the
   dropped nodes' mask keys; with ``threshold`` of them the leader removes the masks and divides by the
   summed weights.

Inputs cannot be checked for poison when nobody sees them: the leader checks only their layout (names
and shapes against its own input), so robust merges and secure aggregation exclude each other (the
callback, the CRD and the contract refuse the pair). With site-level DP every input counts with weight
1, so one site's influence on the sum is its clip bound. A leader that fails is replaced as in the
single mode; the next attempt starts over with fresh keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from swarmlearning import pki
from swarmlearning.ledger import Record, RoundClose
from swarmlearning.privacy import secagg
from swarmlearning.sl import privacy
from swarmlearning.sl.kinds import secagg_kind
from swarmlearning.sl.modes.base import (
    FETCH_TIMEOUT_SECONDS,
    RoundContext,
    RoundFailed,
    abandon_stale,
    merge_weights,
    one_leader_round,
    still_training,
)
from swarmlearning.sl.peers import HeldModel, ModelKey, PeerError
from swarmlearning.sl.progress import Progress, round_extra
from swarmlearning.sl.server_optimizer import FedAvgM, continue_from_ledger
from swarmlearning.sl.weights import decode_state, encode_state

POLL_SECONDS = 0.1
"""Between two requests for a message that is not there yet."""
PHASE_SECONDS = FETCH_TIMEOUT_SECONDS
"""How long the leader waits for the participants' messages of one step; who is late drops out."""


class SecureAggregation:
    name = "secagg"

    async def complete(self, ctx: RoundContext, close: RoundClose) -> tuple[Record, bytes]:
        return await one_leader_round(
            ctx,
            close,
            lambda attempt: _Attempt(ctx, close, attempt).lead(),
            lambda attempt: _Attempt(ctx, close, attempt).follow(),
        )


@dataclass
class _Attempt:
    """One node's part in one attempt of a securely aggregated round."""

    ctx: RoundContext
    close: RoundClose
    attempt: int

    def __post_init__(self) -> None:
        close = self.close
        self.leader = self.ctx.ledger.leader_for(close, self.attempt)
        self.context = f"{close.contract}|{close.round_no}|{self.attempt}".encode()
        names = sorted(close.names)
        self.setup = secagg.RoundSetup.of(
            names, self.context, privacy.secagg_threshold(self.ctx.params, len(names))
        )
        self.keys = secagg.RoundKeys.generate()
        self.me = secagg.Participant(self.ctx.name, self.setup, self.keys)

    # ------------------------------------------------------------------ the two roles

    async def follow(self) -> Record:
        """Take part under another leader until its round record appears (LeaderFailed moves on)."""
        steps = asyncio.create_task(self._participate())
        try:
            return await self.ctx.ledger.wait_round_result(
                self.close, self.attempt, leader_timeout_s=self.ctx.leader_timeout
            )
        finally:
            steps.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await steps

    async def lead(self) -> tuple[Record, bytes]:
        ctx, close = self.ctx, self.close
        ctx.note(
            f"round {close.round_no}: leading attempt {self.attempt}, securely aggregating "
            f"{len(close.participants)} masked inputs"
        )
        loop = asyncio.get_running_loop()
        async with ctx.ledger.hold_leadership(
            close.contract, close.round_no, self.attempt, ttl_s=ctx.leader_ttl
        ):
            fetch_start = loop.time()
            own = self._own_input()
            self._put("keys", self._key_statement())
            statements = {
                n: _json(h.data, f"keys of {n}")
                for n, h in (await self._collect("keys", close.names)).items()
            }
            public = self._check_keyset(statements)
            self._put("keyset", statements)
            self._put("shares", secagg.bytes_map_to_json(self.me.share_keys(public)))
            bundles = {
                n: _json(h.data, f"key shares of {n}")
                for n, h in (await self._collect("shares", public)).items()
            }
            sharers = sorted(n for n, b in bundles.items() if isinstance(b, dict))
            self._put("relay", {"sharers": sharers, "ciphertexts": bundles})
            received = self._received(bundles)
            self._put_masked(own, sharers)
            got = await self._collect("masked", sharers)
            layout = secagg.layout_of(_numpy(own[1]))
            masked: dict[str, dict[str, np.ndarray]] = {}
            rejected: dict[str, str] = {}
            for name in sharers:
                held = got.get(name)
                if held is None:
                    rejected[name] = "dropped out before sending its masked input"
                    continue
                try:
                    masked[name] = _checked(secagg.masked_from_safetensors(held.data, name), layout, name)
                except secagg.SecAggError as exc:
                    rejected[name] = str(exc)
            survivors = sorted(masked)
            dropped = sorted(set(sharers) - set(survivors))
            self._put("unmask", {"survivors": survivors, "dropped": dropped})
            reveals = {ctx.name: self.me.reveal(received, survivors, dropped)}
            for name, held in (
                await self._collect("reveal", [n for n in survivors if n != ctx.name])
            ).items():
                try:
                    reveals[name] = secagg.bytes_map_from_json(
                        _json(held.data, f"reveal of {name}"), f"reveal of {name}"
                    )
                except secagg.SecAggError as exc:
                    ctx.note(f"round {close.round_no}: ignored the reveal of {name}: {exc}")
            merge_start = loop.time()
            ctx.metrics.observe_phase("fetch", merge_start - fetch_start)
            try:
                sums, total = await asyncio.to_thread(
                    secagg.unmask, self.setup, public, sharers, masked, reveals, layout
                )
                mean = secagg.weighted_mean(sums, total, layout)
            except secagg.SecAggError as exc:
                raise RoundFailed(f"round {close.round_no}: secure aggregation failed: {exc}") from exc
            state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in mean.items()}
            server_extra: dict[str, Any] = {}
            if (server := FedAvgM.of(ctx.params)) is not None:
                # The unmasked mean is the round's merged update, as in a single-leader round: one step
                # from the latest committed model (and its momentum), both public to the participants.
                state, server_extra["server_optimizer"] = await continue_from_ledger(
                    ctx, close.contract, server, state
                )
            merged_bytes = await asyncio.to_thread(encode_state, state)
            for name in close.names:
                if name not in public:
                    rejected.setdefault(name, "published no signed keys in time")
                elif name not in sharers:
                    rejected.setdefault(name, "shared no keys in time")
            record = await self._commit(
                survivors, got, merged_bytes, rejected, reveals, sharers, server_extra
            )
            ctx.metrics.observe_phase("merge", loop.time() - merge_start)
        ctx.note(
            f"round {close.round_no}: committed the secure aggregate of {len(survivors)} inputs"
            + (f", without {sorted(rejected)}" if rejected else "")
        )
        return record, merged_bytes

    async def _participate(self) -> None:
        """A follower's steps: each answers the leader's previous message."""
        ctx, close = self.ctx, self.close
        try:
            own = self._own_input()
            self._put("keys", self._key_statement())
            public = self._check_keyset(
                _json((await self._from_leader("keyset")).data, "the leader's keyset")
            )
            if ctx.name not in public:
                ctx.note(f"round {close.round_no}: the leader did not take this node's keys; sitting it out")
                return
            self._put("shares", secagg.bytes_map_to_json(self.me.share_keys(public)), reader=self.leader)
            relay = _json((await self._from_leader("relay")).data, "the leader's relay")
            sharers = list(relay.get("sharers") or [])
            if ctx.name not in sharers:
                ctx.note(f"round {close.round_no}: this node's shares missed the relay; sitting it out")
                return
            received = self._received(relay.get("ciphertexts") or {})
            self._put_masked(own, sharers)
            unmask = _json((await self._from_leader("unmask")).data, "the leader's survivor list")
            reveal = self.me.reveal(received, unmask.get("survivors") or [], unmask.get("dropped") or [])
            self._put("reveal", secagg.bytes_map_to_json(reveal), reader=self.leader)
        except (secagg.SecAggError, PeerError, RoundFailed) as exc:
            ctx.note(f"round {close.round_no} attempt {self.attempt}: secure aggregation step failed: {exc}")

    # ------------------------------------------------------------------ messages

    def _key(self, step: str) -> ModelKey:
        return ModelKey(self.close.contract, self.close.round_no, secagg_kind(step, self.attempt))

    def _put(self, step: str, body: Any, reader: str = "") -> None:
        self.ctx.store.put(self._key(step), json.dumps(body, sort_keys=True).encode(), reader=reader)

    def _put_masked(self, own: tuple[HeldModel, dict[str, torch.Tensor]], sharers: list[str]) -> None:
        held, state = own
        masked = self.me.mask(_numpy(state), self._weight(self.ctx.name), sharers)
        self.ctx.store.put(
            self._key("masked"),
            secagg.masked_to_safetensors(masked),
            final=held.final,
            progress=held.progress,
        )

    def _own_input(self) -> tuple[HeldModel, dict[str, torch.Tensor]]:
        held = self.ctx.store.get(ModelKey(self.close.contract, self.close.round_no, "input"))
        if held is None:
            raise RoundFailed(f"round {self.close.round_no}: own input is no longer held")
        return held, decode_state(held.data)

    def _weight(self, name: str) -> float:
        """Merge weight: nodeWeightage × samples scaled so the round's weights sum to the participant
        count (the same mean; the fixed-point sum keeps its range whatever the sample counts), or 1
        each under site-level DP (so one site's influence on the sum is bounded by the clip norm)."""
        if privacy.SiteDP.of(self.ctx.params).enabled:
            return 1.0
        raw = merge_weights(self.close, list(self.close.names))
        total = sum(raw.values())
        return raw[name] * len(raw) / total if total else 1.0

    def _key_statement(self) -> dict[str, str]:
        cert = self.ctx.cert
        if cert is None:
            raise RoundFailed("secure aggregation needs the node's certificate to sign its keys")
        public = self.keys.public
        signature = pki.sign(cert.key_path, _signed(self.context, self.ctx.name, public))
        return {"public": public.hex(), "signature": signature.hex(), "cert": cert.cert_pem().decode()}

    def _check_keyset(self, statements: Mapping[str, Any]) -> dict[str, bytes]:
        """The public keys whose statements are signed by a swarm certificate of that very node."""
        cert = self.ctx.cert
        assert cert is not None
        ca = cert.ca_pem()
        out: dict[str, bytes] = {}
        for name, st in statements.items():
            try:
                public = bytes.fromhex(st["public"])
                cert_pem = st["cert"].encode()
                if pki.check_cert(cert_pem, ca).name != name:
                    raise ValueError("its certificate names another node")
                if not pki.verify_signature(
                    cert_pem, _signed(self.context, name, public), bytes.fromhex(st["signature"])
                ):
                    raise ValueError("its signature does not verify")
            except (KeyError, TypeError, ValueError, AttributeError, pki.PKIError) as exc:
                self.ctx.note(f"round {self.close.round_no}: ignored the keys of {name}: {exc}")
                continue
            out[name] = public
        return out

    def _received(self, bundles: Mapping[str, Any]) -> dict[str, bytes]:
        """From every sharer's bundle the ciphertext addressed to this node."""
        out: dict[str, bytes] = {}
        for sender, bundle in bundles.items():
            if isinstance(bundle, dict) and isinstance(bundle.get(self.ctx.name), str):
                out[sender] = secagg.bytes_map_from_json(
                    {sender: bundle[self.ctx.name]}, f"shares of {sender}"
                )[sender]
        return out

    async def _from_leader(self, step: str) -> HeldModel:
        """The leader's message of ``step``, waiting for it up to leaderFailureTimeoutSeconds."""
        kind = secagg_kind(step, self.attempt)
        endpoint = self.close.participant(self.leader).endpoint
        return await _poll(
            lambda: self.ctx.peers.fetch(
                endpoint, self.close.contract, self.close.round_no, kind, timeout=FETCH_TIMEOUT_SECONDS
            ),
            self.ctx.leader_timeout,
            f"round {self.close.round_no}: the leader {self.leader}'s {step} message",
        )

    async def _collect(self, step: str, names: Any) -> dict[str, HeldModel]:
        """Each named participant's ``step`` message that arrives within PHASE_SECONDS."""
        kind = secagg_kind(step, self.attempt)

        async def one(name: str) -> HeldModel:
            if name == self.ctx.name:
                held = self.ctx.store.get(self._key(step))
                if held is None:
                    raise RoundFailed(f"own {step} message is not held")
                return held
            endpoint = self.close.participant(name).endpoint
            return await _poll(
                lambda: self.ctx.peers.fetch(
                    endpoint, self.close.contract, self.close.round_no, kind, timeout=FETCH_TIMEOUT_SECONDS
                ),
                PHASE_SECONDS,
                f"{name}'s {step} message",
            )

        wanted = sorted(names)
        got = await asyncio.gather(*(one(n) for n in wanted), return_exceptions=True)
        out: dict[str, HeldModel] = {}
        for name, held in zip(wanted, got, strict=True):
            if isinstance(held, BaseException):
                self.ctx.note(f"round {self.close.round_no}: no {step} message from {name}: {held}")
            else:
                out[name] = held
        return out

    async def _commit(
        self,
        survivors: list[str],
        held: Mapping[str, HeldModel],
        merged_bytes: bytes,
        rejected: dict[str, str],
        reveals: Mapping[str, Any],
        sharers: list[str],
        server_extra: Mapping[str, Any],
    ) -> Record:
        ctx, close = self.ctx, self.close
        finished = {n for n in survivors if held[n].final}
        progress: dict[str, Progress] = {n: held[n].progress for n in survivors}
        extra: dict[str, Any] = {
            "mode": "secagg",
            "selected": survivors,
            "iterations": 0,
            "final": sorted(finished),
            "training": await still_training(ctx, close, finished),
            **round_extra(progress, survivors),
            **server_extra,
        }
        extra["privacy"] = privacy.privacy_extra(ctx.params, close.round_no, self.setup.threshold)
        extra["privacy"]["secureAggregation"] |= {
            "sharers": sharers,
            "dropped": sorted(set(sharers) - set(survivors)),
            "revealers": sorted(reveals),
        }
        merged_digest = ctx.store.put(ModelKey(close.contract, close.round_no, "merged"), merged_bytes)
        ctx.metrics.distribution_started(
            close.contract, close.round_no, sum(1 for n in close.names if n != ctx.name)
        )
        await ctx.archive(close.contract, close.round_no, merged_bytes, merged_digest)
        await abandon_stale(ctx, close)
        record = await ctx.ledger.commit_round(
            close.contract,
            close.round_no,
            self.attempt,
            participants=survivors,
            weights={n: self._weight(n) for n in survivors},
            input_digests={n: held[n].digest for n in survivors},
            merged_digest=merged_digest,
            merge_method="mean",
            rejected=rejected,
            extra=extra,
        )
        ctx.metrics.ledger_seq(record.seq)
        ctx.metrics.round_led(close.contract)
        return record


def _signed(context: bytes, name: str, public: bytes) -> bytes:
    """What a participant signs: its public keys for this round attempt, under its name."""
    return b"swarm-secagg/v1/keys|" + context + b"|" + name.encode() + b"|" + public


async def _poll(fetch: Callable[[], Awaitable[HeldModel]], timeout: float, what: str) -> HeldModel:
    """``fetch()`` until it returns, retrying while the peer does not hold the message yet (404); after
    ``timeout`` seconds a RoundFailed naming ``what``. Other peer errors are raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await fetch()
        except PeerError as exc:
            if exc.status != 404 or loop.time() >= deadline:
                raise
        await asyncio.sleep(POLL_SECONDS)
        if loop.time() >= deadline:
            raise RoundFailed(f"waited {timeout:g} s for {what}")


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise secagg.SecAggError(f"{what} is not JSON: {exc}") from None


def _numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays (bfloat16/half widened: numpy has no bfloat16)."""
    out = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        out[name] = t.numpy()
    return out


def _checked(
    masked: dict[str, np.ndarray], layout: Mapping[str, secagg.TensorSpec], node: str
) -> dict[str, np.ndarray]:
    """``node``'s masked input if it has exactly the leader's tensors and shapes (+ the weight entry)."""
    names = set(layout) | {secagg.WEIGHT_ENTRY}
    if set(masked) != names:
        differ = sorted(set(masked) ^ names)[:5]
        raise secagg.SecAggError(f"the masked input of {node} differs from the leader's in tensors {differ}")
    for name, spec in layout.items():
        if tuple(masked[name].shape) != spec.shape:
            raise secagg.SecAggError(
                f"the masked input of {node}: {name!r} has shape {masked[name].shape}, not {spec.shape}"
            )
    return masked
