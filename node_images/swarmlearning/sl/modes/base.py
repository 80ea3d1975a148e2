"""What a round mode gets from the SL node, and the parts of a round every mode shares.

A mode turns a closed round into its committed result: ``await mode.complete(ctx, close)`` returns
the round's record and the merged model (safetensors bytes) this node hands to its ML process. The SL
node (``swarmlearning.sl.node.SLNode``) is the conductor: it marks the node ready, closes the round,
picks the mode with :func:`swarmlearning.sl.modes.mode_for` and archives and records the result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from swarmlearning import pki
from swarmlearning.etcd import EtcdError
from swarmlearning.ledger import (
    LeaderFailed,
    Ledger,
    LedgerError,
    NoEligibleLeader,
    Record,
    RoundAlreadyCommitted,
    RoundClose,
)
from swarmlearning.sl.metrics import SLMetrics
from swarmlearning.sl.peers import ModelStore, PeerClient

log = logging.getLogger("swarmlearning.sl")

INITIAL_ROUND = 1
FETCH_TIMEOUT_SECONDS = 30.0
"""Per peer download of a model (a few MB on a LAN is well below this)."""


class RoundFailed(RuntimeError):
    """A sync could not complete; the message is shown to the user by the ML process."""


class RoundAbandoned(Exception):
    """The round this node was in got an ``abandon`` record (it came back after everyone had left)."""


@dataclass(frozen=True)
class RoundContext:
    """One node's view of the round being completed."""

    name: str
    """This node's name (its certificate CN)."""
    ledger: Ledger
    peers: PeerClient
    store: ModelStore
    metrics: SLMetrics
    settings: Mapping[str, Any]
    """The ML side's contract settings (timeouts are per node)."""
    params: Mapping[str, Any]
    """The contract's recorded parameters (merge method etc.)."""
    note: Callable[[str], None]
    """Tell the user (logged and shown by the ML process)."""
    archive: Callable[[str, int, bytes, str], Awaitable[None]]
    """Keep a merged model on disk: (contract, round, bytes, digest)."""
    fetch_merged: Callable[[RoundClose, Record], Awaitable[bytes]]
    """Download the whole merged model of a committed round record from whoever holds it."""
    cert: pki.NodeCert | None = None
    """This node's certificate and key (secure aggregation signs its public keys with it)."""

    @property
    def leader_timeout(self) -> float:
        return float(self.settings.get("leaderFailureTimeoutSeconds", 600))

    @property
    def leader_ttl(self) -> int:
        """Seconds of a leadership lease: a dead leader is noticed within this."""
        return int(max(2, min(10, self.leader_timeout / 3)))

    @property
    def method(self) -> str:
        return str(self.params.get("mergeMethod", "mean"))

    def merge_options(self) -> dict[str, Any]:
        return {
            "trim_fraction": float(self.params.get("trimFraction", 0.1)),
            "byzantine": int(self.params.get("byzantine", 0)),
        }


class RoundMode(Protocol):
    """A way of completing a closed round (Flower's strategies are the model)."""

    name: str

    async def complete(self, ctx: RoundContext, close: RoundClose) -> tuple[Record, bytes]:
        """The round's committed record and its merged model; raises RoundFailed or RoundAbandoned."""
        ...


T = TypeVar("T")


async def by_attempts(
    ctx: RoundContext,
    close: RoundClose,
    what: str,
    leader_of: Callable[[int], str],
    lead: Callable[[int], Awaitable[tuple[Record, T]]],
    wait: Callable[[int], Awaitable[Record]],
    *,
    announce: bool = True,
) -> tuple[Record, T | None]:
    """The committed record of one leader-elected step (a whole round, or one slice of it).

    Attempt after attempt: this node leads when ``leader_of(attempt)`` is itself, else it waits for that
    leader's record; a leader that dies, leaves or stays silent for leaderFailureTimeoutSeconds moves
    everyone to the next attempt (each eligible participant gets two). Returns the record and what
    leading produced (None when another node committed). ``announce`` tells the user who it waits for.
    """
    eligible = sum(1 for p in close.participants if p.leader_eligible)
    if not eligible:
        raise NoEligibleLeader(f"round {close.round_no}: no participant is leader-eligible")
    for attempt in range(2 * eligible):
        leader = leader_of(attempt)
        if leader == ctx.name:
            try:
                return await lead(attempt)
            except RoundAlreadyCommitted as exc:
                return exc.record, None
        if announce:
            ctx.note(
                f"{what}: waiting for leader {leader} (attempt {attempt}, up to {ctx.leader_timeout:g} s)"
            )
        try:
            record = await wait(attempt)
        except LeaderFailed as exc:
            ctx.note(f"{exc}; {what} moves to attempt {attempt + 1}")
            ctx.metrics.leader_failover()
            continue
        ctx.metrics.ledger_seq(record.seq)
        return record, None
    raise RoundFailed(
        f"{what}: no leader committed after {2 * eligible} attempts "
        f"(leaderFailureTimeoutSeconds={ctx.leader_timeout:g})"
    )


async def one_leader_round(
    ctx: RoundContext,
    close: RoundClose,
    lead: Callable[[int], Awaitable[tuple[Record, bytes]]],
    wait: Callable[[int], Awaitable[Record]],
) -> tuple[Record, bytes]:
    """A round one elected leader completes (single leader, secure aggregation): the committed record
    and the merged model, downloaded from its holders when another node led."""
    what = f"round {close.round_no}"
    record, merged = await by_attempts(
        ctx, close, what, lambda attempt: ctx.ledger.leader_for(close, attempt), lead, wait
    )
    if record.kind == "abandon":
        raise RoundAbandoned()
    if merged is None:
        with ctx.metrics.phase("fetch"):
            merged = await ctx.fetch_merged(close, record)
    return record, merged


def merge_weights(close: RoundClose, accepted: list[str]) -> dict[str, float]:
    """Per accepted participant: nodeWeightage x max(1, samples); all 0 (every node inactive) falls
    back to equal weights."""
    weights = {n: close.participant(n).weight * max(1, close.participant(n).samples) for n in accepted}
    if not any(weights.values()):
        weights = dict.fromkeys(accepted, 1.0)
    return weights


async def still_training(ctx: RoundContext, close: RoundClose, finished: set[str]) -> list[str]:
    """Who may still be training: participants that did not send a final input (also rejected or
    unreachable ones), and live nodes with an ML process connected that missed this round. While one
    is, the round is not final, so nobody stops contributing and leaves it without peers."""
    try:
        elsewhere = set((await ctx.ledger.sessions(close.contract))[1])
    except (EtcdError, LedgerError) as exc:
        log.warning("round %d: could not read who is training: %s", close.round_no, exc)
        elsewhere = set()
    return sorted((set(close.names) - finished) | (elsewhere - set(close.names)))


async def abandon_stale(ctx: RoundContext, close: RoundClose) -> None:
    """As a round's leader, record earlier rounds whose participants all left as abandoned, so the
    ledger has one result for every round (see ``Ledger.abandon_stale_rounds``)."""
    try:
        await ctx.ledger.abandon_stale_rounds(close.contract, below=close.round_no)
    except (EtcdError, LedgerError) as exc:
        log.warning("round %d: could not check earlier rounds for abandonment: %s", close.round_no, exc)


Signature = tuple[tuple[str, tuple[int, ...], str], ...]


def signature(state: Mapping[str, torch.Tensor]) -> Signature:
    return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in state.items()))


def majority_structure(
    states: Mapping[str, Mapping[str, torch.Tensor]], prefer: str
) -> Mapping[str, torch.Tensor]:
    """The state_dict whose names/shapes/dtypes most inputs share (ties: ``prefer``'s), as the reference
    every input is validated against, so one malformed peer (even the leader) cannot reject the rest."""
    if not states:
        return {}
    groups: dict[Signature, list[str]] = {}
    for name, state in states.items():
        groups.setdefault(signature(state), []).append(name)
    best = max(groups.values(), key=lambda names: (len(names), prefer in names))
    return states[prefer if prefer in best else best[0]]
