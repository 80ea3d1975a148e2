"""Byzantine update attacks: what a poisoned site sends instead of its honest weights.

Each attack is relative to the round's starting model ``w0`` (the last merged weights the site
received) and the site's honest weights ``w`` after its local training, tensor by tensor:

- ``scaled``:   ``w0 + s * (w - w0)``, the update blown up (s = 10 by default), as a model-replacement
  attack does;
- ``signflip``: ``w0 - s * (w - w0)``, the update reversed and amplified (s = 4 by default), pulling the
  swarm away from where the data leads;
- ``random``:   ``w0 + N(0, sigma_t^2)`` per coordinate, no training at all, with ``sigma_t`` =
  ``sigma`` (default 3) times the standard deviation of this tensor's honest update ``w - w0``.

All three keep names, shapes, dtypes and finiteness, so the leader's input checks accept them: only a
robust merge can keep them out. Integer and bool tensors (step counters) are sent as trained.
Pure torch, no swarm imports: ``tests/chaos/poison.py`` (real processes) and ``bench/byzantine.py``
(simulated rounds) use the same math.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ATTACKS: tuple[str, ...] = ("scaled", "signflip", "random")
DEFAULT_SCALE: Mapping[str, float] = {"scaled": 10.0, "signflip": 4.0}
"""``s`` per attack when none is given (``random`` has none)."""
DEFAULT_SIGMA = 3.0
"""``random``: noise std in units of the honest update's per-tensor std."""
MAX_FACTOR = 1e6
"""Upper bound of ``scale`` and ``sigma``: beyond it float32 weights overflow to inf."""


@dataclass(frozen=True)
class Attack:
    """One attack and its strength.

    kind: one of :data:`ATTACKS`.
    scale: ``s`` of ``scaled``/``signflip``, in (0, 1e6]; None = :data:`DEFAULT_SCALE` of the kind.
    sigma: ``random``'s noise std in units of the honest update's per-tensor std, in (0, 1e6]
        (default 3).
    """

    kind: str
    scale: float | None = None
    sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack kind must be one of {', '.join(ATTACKS)}; got {self.kind!r}")
        for name, value in (("scale", self.scale), ("sigma", self.sigma)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number in (0, {MAX_FACTOR:g}]; got {value!r}")
            if not (math.isfinite(value) and 0 < value <= MAX_FACTOR):
                raise ValueError(f"{name} must be a number in (0, {MAX_FACTOR:g}]; got {value!r}")

    @property
    def s(self) -> float:
        """The scale in use (the given one, else the kind's default; 0 for ``random``)."""
        if self.scale is not None:
            return float(self.scale)
        return DEFAULT_SCALE.get(self.kind, 0.0)

    def describe(self) -> str:
        """``signflip (s=4)``, ``random (sigma=3 x update std)``: for logs and bench notes."""
        if self.kind == "random":
            return f"random (sigma={self.sigma:g} x update std)"
        return f"{self.kind} (s={self.s:g})"


def poison_update(
    w0: Mapping[str, torch.Tensor],
    w: Mapping[str, torch.Tensor],
    attack: Attack,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The state_dict a site running ``attack`` sends, from the round's start ``w0`` and its honest ``w``.

    ``w0`` and ``w`` need the same tensor names and shapes (ValueError naming the tensor otherwise).
    ``generator`` seeds ``random``'s noise (CPU; default: torch's global generator). New tensors; the
    inputs are left alone. Floating tensors are computed in float64 and cast back to ``w``'s dtype.
    """
    if set(w0) != set(w):
        missing, extra = sorted(set(w) - set(w0)), sorted(set(w0) - set(w))
        raise ValueError(
            f"w0 and w must name the same tensors: only in w {missing[:5]}, only in w0 {extra[:5]}"
        )
    out: dict[str, torch.Tensor] = {}
    for name, t in w.items():
        start = w0[name]
        if start.shape != t.shape:
            raise ValueError(f"tensor {name!r}: w0 has shape {tuple(start.shape)}, w has {tuple(t.shape)}")
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        base = start.detach().to(torch.float64)
        update = t.detach().to(torch.float64) - base
        if attack.kind == "scaled":
            sent = base + attack.s * update
        elif attack.kind == "signflip":
            sent = base - attack.s * update
        else:
            std = float(update.std(correction=0)) if update.numel() else 0.0
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
            sent = base + attack.sigma * std * noise
        out[name] = sent.to(dtype=t.dtype, device=t.device)
    return out
