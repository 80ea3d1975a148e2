"""What the SL node does for the contract's privacy options (``siteDp*``, ``secureAggregation``).

Site-level differential privacy happens here, on the site, before an input is stored and served: the
round's update (the ML process's weights minus the model the round started from, which this node handed
to it) is clipped to ``siteDpClipNorm`` and gets Gaussian noise (``swarmlearning.privacy.site_dp``). Who
sees a single input decides how much noise one site must add:

- without secure aggregation the round's leader sees every input, so each one carries the whole noise
  (std ``siteDpNoiseMultiplier × siteDpClipNorm``): every input on its own is as private as the
  accountant says, and whatever merge follows is post-processing;
- with secure aggregation the leader learns only the sum, so each site adds its share of it (std divided
  by √m, m = the fewest inputs a committed sum can have: the unmasking threshold of ``minPeers``), and
  every input counts with weight 1 (the sum's sensitivity to one site is then the clip bound).

Each DP round is one Gaussian mechanism of noise multiplier σ over the sites' updates; ε after r rounds
comes from the RDP accountant (``swarmlearning.privacy.accountant.site_epsilon``). The initial round
(random weights, before any training) spends nothing. The leader writes the contract's figures into the
round record (``extra["privacy"]``), so anyone can audit what a training spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from swarmlearning.sl.modes.base import INITIAL_ROUND, RoundFailed
from swarmlearning.sl.weights import decode_state, encode_state


@dataclass(frozen=True)
class SiteDP:
    """The contract's site-level DP settings; ``clip_norm`` 0 = off."""

    clip_norm: float
    noise_multiplier: float
    delta: float
    budget: float
    """ε a training may spend; 0 = none."""
    on_budget_spent: str
    """``stop`` (fail the sync saying so) or ``warn``."""

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> SiteDP:
        return cls(
            clip_norm=float(params.get("siteDpClipNorm", 0.0) or 0.0),
            noise_multiplier=float(params.get("siteDpNoiseMultiplier", 1.0)),
            delta=float(params.get("siteDpDelta", 1e-5)),
            budget=float(params.get("siteDpEpsilonBudget", 0.0) or 0.0),
            on_budget_spent=str(params.get("siteDpOnBudgetSpent", "stop")),
        )

    @property
    def enabled(self) -> bool:
        return self.clip_norm > 0

    def epsilon(self, round_no: int) -> float:
        """ε once round ``round_no`` has merged (rounds 2..round_no each one DP mechanism)."""
        from swarmlearning.privacy.accountant import site_epsilon

        return site_epsilon(self.noise_multiplier, max(0, round_no - INITIAL_ROUND), self.delta)


def secure_aggregation(params: Mapping[str, Any]) -> bool:
    return bool(params.get("secureAggregation", False))


def secagg_threshold(params: Mapping[str, Any], participants: int) -> int:
    """Revealers a masked round needs: ``secaggThreshold`` (0 = 2/3) of its participants, at least 2
    (one would reveal that participant's own input) and at most all of them."""
    share = float(params.get("secaggThreshold", 0.0) or 0.0) or 2 / 3
    return min(participants, max(2, math.ceil(share * participants)))


def noise_share_divisor(params: Mapping[str, Any]) -> int:
    """m of the docstring above: 1 without secure aggregation, else the fewest survivors of a sum."""
    if not secure_aggregation(params):
        return 1
    return secagg_threshold(params, max(2, int(params.get("minPeers", 2))))


def check_budget(dp: SiteDP, round_no: int, note: Callable[[str], None]) -> None:
    """Before contributing to ``round_no``: RoundFailed (``stop``) or a warning (``warn``) if merging it
    would take ε past the budget."""
    if not dp.enabled or not dp.budget or round_no <= INITIAL_ROUND:
        return
    eps = dp.epsilon(round_no)
    if eps <= dp.budget:
        return
    message = (
        f"site-level privacy budget spent: round {round_no} would bring ε to {eps:.3g} "
        f"(δ={dp.delta:g}), over siteDpEpsilonBudget={dp.budget:g}"
    )
    if dp.on_budget_spent == "stop":
        raise RoundFailed(message + "; training stops (siteDpOnBudgetSpent=stop)")
    note(message + "; going on (siteDpOnBudgetSpent=warn)")


def privatise(params: Mapping[str, Any], payload: bytes, start: bytes, seed: int | None = None) -> bytes:
    """``payload`` (safetensors) with its update since ``start`` clipped and noised per the contract.
    RoundFailed when the two do not have the same tensors (the ML process changed its model)."""
    import torch

    from swarmlearning.privacy.site_dp import apply_site_dp

    dp = SiteDP.of(params)
    model, base = decode_state(payload), decode_state(start)
    if model.keys() != base.keys() or any(model[k].shape != base[k].shape for k in model):
        raise RoundFailed(
            "site-level DP needs the round's input to have the tensors of the model the round started "
            "from; the ML process sent a model with other names or shapes"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    noised, _ = apply_site_dp(
        model,
        base,
        clip_norm=dp.clip_norm,
        noise_multiplier=dp.noise_multiplier,
        min_participants=noise_share_divisor(params),
        generator=generator,
    )
    return encode_state(noised)


def privacy_extra(params: Mapping[str, Any], round_no: int, threshold: int | None = None) -> dict[str, Any]:
    """The round record's ``extra["privacy"]``: what protected this round's inputs (empty when nothing
    did). ``threshold``: the revealers a securely aggregated round needed."""
    out: dict[str, Any] = {}
    dp = SiteDP.of(params)
    if dp.enabled and round_no > INITIAL_ROUND:
        out["siteDp"] = {
            "clipNorm": dp.clip_norm,
            "noiseMultiplier": dp.noise_multiplier,
            "delta": dp.delta,
            "epsilon": dp.epsilon(round_no),
            "noiseShareDivisor": noise_share_divisor(params),
        }
    if threshold is not None:
        out["secureAggregation"] = {"threshold": threshold}
    return out
