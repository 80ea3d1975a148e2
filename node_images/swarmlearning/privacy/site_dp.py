"""Site-level (user-level) differential privacy for one site's model update: clip, then add a noise share.

Distributed DP-FedAvg: each site clips its update (its weights minus the round's start weights) to L2
norm C and adds Gaussian noise of std σ·C/√m, with m = ``min_participants``. The sum of at least m such
updates then carries noise of std >= σ·C, while any one site changes that sum by at most C: a Gaussian
mechanism with noise multiplier σ on the aggregate, whose ε :func:`swarmlearning.privacy.accountant.
site_epsilon` counts. That guarantee is for an observer who sees only the sum (secure aggregation); a
single share on its own carries just σ/√m, so without secure aggregation a peer that sees one site's
share gets far weaker privacy (noise multiplier σ/√m for that site).

Only floating-point tensors are clipped and noised; integer and bool tensors (step counters,
``num_batches_tracked``, masks) are passed through as copies and are not protected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["apply_site_dp", "clip_and_noise"]


def _check_params(clip_norm: float, noise_multiplier: float, min_participants: int) -> None:
    if not (isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0 (L2 norm of the update), got {clip_norm!r}")
    if not (
        isinstance(noise_multiplier, int | float)
        and math.isfinite(noise_multiplier)
        and noise_multiplier >= 0
    ):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not (
        isinstance(min_participants, int) and not isinstance(min_participants, bool) and min_participants >= 1
    ):
        raise ValueError(f"min_participants must be an integer >= 1, got {min_participants!r}")


def _is_noised(name: str, tensor: torch.Tensor) -> bool:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"update[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_complex():
        raise ValueError(f"update[{name!r}] is complex ({tensor.dtype}): site DP supports real tensors only")
    return tensor.is_floating_point()


def _global_norm(update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all floating-point tensors, tensor by tensor (no flattened copy of the model)."""
    total = 0.0
    for name, tensor in update.items():
        if not _is_noised(name, tensor):
            continue
        # Half precision overflows past 65504 and loses digits: take each tensor's norm in float32 at least.
        dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        norm = float(torch.linalg.vector_norm(tensor.detach(), ord=2, dtype=dtype))
        total += norm * norm
    result = math.sqrt(total)
    if not math.isfinite(result):
        raise ValueError(
            "update has a non-finite L2 norm (NaN or inf in a tensor): refusing to clip and share it"
        )
    return result


def _clip_and_noise_(
    owned: dict[str, torch.Tensor],
    norm: float,
    clip_norm: float,
    noise_multiplier: float,
    min_participants: int,
    generator: torch.Generator | None,
) -> None:
    """Clip and noise, in place, the float tensors of ``owned`` (tensors the caller allocated)."""
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm / math.sqrt(min_participants)
    for tensor in owned.values():
        if not tensor.is_floating_point():
            continue
        if scale < 1.0:
            tensor.mul_(scale)
        if std > 0:
            # One tensor's worth of noise at a time, never a second copy of the whole model.
            tensor.add_(torch.empty_like(tensor).normal_(0.0, std, generator=generator))


@torch.no_grad()
def clip_and_noise(
    update: Mapping[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    min_participants: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Clip a site's update to global L2 norm ``clip_norm`` and add this site's share of Gaussian noise.

    The global norm is taken over all floating-point tensors together; they are scaled by
    min(1, clip_norm / norm) and get i.i.d. Gaussian noise of std
    ``noise_multiplier * clip_norm / sqrt(min_participants)`` per coordinate, so that the sum of at least
    ``min_participants`` such shares carries noise of std ``noise_multiplier * clip_norm`` (the Gaussian
    mechanism :func:`~swarmlearning.privacy.accountant.site_epsilon` accounts for; private only when
    peers see the sum, not the single share). Integer/bool tensors are returned as unchanged copies.

    Args:
        update: tensor name -> tensor (e.g. a state_dict difference); not modified.
        clip_norm: L2 bound C on the float part of the update (same units as the weights), > 0.
        noise_multiplier: σ, the aggregate noise std in units of C, >= 0 (0: clip only).
        min_participants: m, the fewest sites whose updates are summed, >= 1.
        generator: torch random generator for the noise (on the tensors' device); default torch's global.

    Returns:
        (the clipped and noised update as new tensors of the same dtypes, the pre-clip L2 norm).
    """
    _check_params(clip_norm, noise_multiplier, min_participants)
    norm = _global_norm(update)
    owned = {name: tensor.detach().clone() for name, tensor in update.items()}
    _clip_and_noise_(owned, norm, clip_norm, noise_multiplier, min_participants, generator)
    return owned, norm


@torch.no_grad()
def apply_site_dp(
    model: Mapping[str, torch.Tensor],
    start: Mapping[str, torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    min_participants: int,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """``start + clip_and_noise(model - start)``: the weights a site shares after a DP-FedAvg round.

    Float tensors: the update ``model - start`` is clipped and noised as in :func:`clip_and_noise`, then
    added back onto ``start``. Integer/bool tensors: ``model``'s values (copies), unprotected. One new
    tensor per entry is allocated (the result); the update is formed and noised in it, in place.

    Args:
        model: this site's weights after local training (name -> tensor); not modified.
        start: the weights the round started from; same names, shapes and dtypes as ``model``.
        clip_norm, noise_multiplier, min_participants, generator: as in :func:`clip_and_noise`.

    Returns:
        (the weights to share, the pre-clip L2 norm of the update).
    """
    _check_params(clip_norm, noise_multiplier, min_participants)
    if model.keys() != start.keys():
        missing = sorted(set(model) ^ set(start))
        raise ValueError(f"model and start must have the same tensor names; differing: {missing[:10]}")
    owned: dict[str, torch.Tensor] = {}
    for name, tensor in model.items():
        base = start[name]
        if not isinstance(base, torch.Tensor) or base.shape != tensor.shape or base.dtype != tensor.dtype:
            raise ValueError(
                f"start[{name!r}] must match model[{name!r}] in shape and dtype"
                f" ({tuple(tensor.shape)}, {tensor.dtype}), got {getattr(base, 'shape', type(base).__name__)}"
                f" {getattr(base, 'dtype', '')}".rstrip()
            )
        owned[name] = torch.sub(tensor, base) if _is_noised(name, tensor) else tensor.detach().clone()
    norm = _global_norm(owned)
    _clip_and_noise_(owned, norm, clip_norm, noise_multiplier, min_participants, generator)
    for name, tensor in owned.items():
        if tensor.is_floating_point():
            tensor.add_(start[name])
    return owned, norm
