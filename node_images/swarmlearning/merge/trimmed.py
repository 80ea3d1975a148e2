"""Weighted coordinate-wise trimmed mean (``trimmedmean``, Yin et al. 2018).

Per coordinate the N values are sorted. With weights normalised to 1 and a = trim_fraction in [0, 0.5),
whole models are cut from the low end while their cumulative weight stays <= a, and likewise from the
high end; the rest is averaged with their weights. With equal weights this drops floor(a * N) values at
each end, the usual count-based trimmed mean (scipy.stats.trim_mean). Weights are compared with a 1e-9
tolerance so that e.g. a = 0.3 with 10 equal models cuts exactly 3. A model is never cut partially, so
a weight-3 model is not the same as three weight-1 copies here (unlike mean). At least one model always
remains because less than half the weight is cut from each end.
"""

from __future__ import annotations

import torch

from swarmlearning.merge.layers import WEIGHT_TOL, merge_tensorwise, weighted_median
from swarmlearning.merge.types import MergeInputs, MergeResult


def trimmed_mean(block: torch.Tensor, weights: torch.Tensor, fraction: float) -> torch.Tensor:
    """Weighted trimmed mean of every row of ``block`` (c x N, a row per coordinate)."""
    if fraction == 0:
        return block @ (weights / weights.sum())
    # Stable: among equal values the lower model index is cut first, so the kept weights are defined.
    values, order = torch.sort(block, dim=1, stable=True)
    w = weights[order]
    total = weights.sum()
    below = torch.cumsum(w, dim=1)  # weight of this value and all smaller ones
    above = total - below + w  # weight of this value and all larger ones
    cut = (fraction + WEIGHT_TOL) * total
    kept = torch.where((below > cut) & (above > cut), w, torch.zeros_like(w))
    mass = kept.sum(dim=1)
    mean = (kept * values).sum(dim=1) / mass.clamp_min(torch.finfo(torch.float64).tiny)
    if bool((mass > 0).all()):
        return mean
    # Only reachable for trim_fraction within ~1e-9 of 0.5, where nothing would be left: the median.
    return torch.where(mass > 0, mean, weighted_median(block, weights, interpolate=True))


def merge_trimmedmean(inputs: MergeInputs) -> MergeResult:
    """Weighted coordinate-wise trimmed mean of the contributing models."""
    fraction = inputs.options.trim_fraction
    state = merge_tensorwise(inputs.models, inputs.weights, lambda b, w: trimmed_mean(b, w, fraction))
    return MergeResult(state=state, selected=inputs.indices)
