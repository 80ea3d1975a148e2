"""Merge-side momentum (FedAvgM, Hsu et al. 2019): the round's leader treats the merged update as a
pseudo-gradient and steps the previous committed model with momentum.

    delta_t = merge(inputs) - x_{t-1}          (the inputs all started from x_{t-1})
    v_t     = momentum * v_{t-1} + delta_t
    x_t     = x_{t-1} + lr * v_t

With ``lr`` = 1 and ``momentum`` = 0 this is plain FedAvg. Under label skew and many sites each round's
mean update is small and noisy; a server learning rate above 1 with mild momentum makes up for the steps
the average loses (bench part ``quality`` measures it). The contract's ``serverOptimizer`` turns it on.

The state travels with the ledger-committed model, so whichever participant leads the next round
continues it: the merged safetensors blob holds the model plus one momentum tensor per floating tensor,
named ``PREFIX + name``; the record's ``extra["server_optimizer"]`` names the optimiser, its settings and
the digest of its state. The SL node strips the state before a model reaches the ML process
(:func:`strip`), so scripts load exactly their own state_dict. Integer tensors (BatchNorm counters) are the
merge's, untouched. Single-leader rounds only: the sharded mode cuts the model, not the state.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from swarmlearning.sl.weights import decode_state, encode_state

if TYPE_CHECKING:
    from swarmlearning.sl.modes.base import RoundContext

PREFIX = "swarm.server_momentum."
"""Name prefix of the momentum tensors inside a merged blob (never a model's own name: no model uses it)."""
OPTIMIZERS = ("none", "fedavgm")


@dataclass(frozen=True)
class FedAvgM:
    """Server learning rate (> 0, 1 = FedAvg's step) and momentum (0 <= momentum < 1)."""

    lr: float
    momentum: float

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> FedAvgM | None:
        """The contract's server optimiser, or None when ``serverOptimizer`` is unset or ``none``."""
        if str(params.get("serverOptimizer") or "none") == "none":
            return None
        return cls(float(params.get("serverLearningRate", 1.0)), float(params.get("serverMomentum", 0.0)))

    def step(
        self, merged: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The model and momentum after one server step. ``previous`` is the last committed blob (model
        and, after its first step, momentum); its floating tensors must match ``merged``'s names and
        shapes, or the step starts over from ``merged`` with zero momentum (a changed model)."""
        out: dict[str, torch.Tensor] = {}
        for name, value in merged.items():
            start = previous.get(name)
            if not value.is_floating_point() or start is None or start.shape != value.shape:
                out[name] = value
                continue
            x0 = start.to(torch.float32)
            delta = value.to(torch.float32) - x0
            old = previous.get(PREFIX + name)
            v = delta if old is None or old.shape != value.shape else self.momentum * old.float() + delta
            out[name] = (x0 + self.lr * v).to(value.dtype)
            out[PREFIX + name] = v
        return out

    def record(self, state: Mapping[str, torch.Tensor], round_from: int) -> dict[str, Any]:
        """What the round record says: the optimiser, its settings, the round it stepped from and the
        sha256 of its state (the momentum tensors in name order, raw bytes)."""
        h = hashlib.sha256()
        for name in sorted(k for k in state if k.startswith(PREFIX)):
            h.update(name.encode())
            h.update(state[name].contiguous().numpy().tobytes())
        return {
            "name": "fedavgm",
            "lr": self.lr,
            "momentum": self.momentum,
            "from_round": round_from,
            "state_digest": h.hexdigest(),
        }


def has_state(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(PREFIX) for k in state)


def model_only(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def strip(data: bytes) -> bytes:
    """A merged blob without the optimiser state (the bytes unchanged when it holds none)."""
    if PREFIX.encode() not in data[: 8 + int.from_bytes(data[:8], "little")]:
        return data
    return encode_state(model_only(decode_state(data)))


async def continue_from_ledger(
    ctx: RoundContext, contract: str, server: FedAvgM, merged: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """As a round's leader: one server step from the latest committed blob (held by every node that
    took part in it, else fetched from its holders), and the record's ``server_optimizer`` entry.
    Without a committed round (or its close) the step starts from ``merged`` itself."""
    previous: dict[str, torch.Tensor] = {}
    round_from = 0
    latest = await ctx.ledger.latest_round(contract)
    if latest is not None:
        close = await ctx.ledger.round_close(contract, int(latest.body["round"]))
        if close is not None:
            round_from = close.round_no
            previous = await asyncio.to_thread(decode_state, await ctx.fetch_merged(close, latest))
    state = await asyncio.to_thread(server.step, merged, previous)
    return state, server.record(state, round_from)
