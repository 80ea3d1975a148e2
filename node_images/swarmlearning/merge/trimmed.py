"""Weighted coordinate-wise trimmed mean (``trimmedmean``, Yin et al. 2018).

Per coordinate the N values are sorted. With weights normalised to 1 and a = trim_fraction in [0, 0.5),
whole models are cut from the low end while their cumulative weight stays <= a, and likewise from the
high end; the rest is averaged with their weights. With equal weights this drops floor(a * N) values at
each end, the usual count-based trimmed mean (scipy.stats.trim_mean). Weights are compared with a 1e-9
tolerance so that e.g. a = 0.3 with 10 equal models cuts exactly 3. A model is never cut partially, so
a weight-3 model is not the same as three weight-1 copies here (unlike mean). At least one model always
remains because less than half the weight is cut from each end.

Computation: a = 0 is the streaming weighted mean. Equal weights sort N x c blocks in the work dtype
(float32 for float32/float16/bfloat16 models, float64 for float64 ones) with a sorting network and
average the kept rows as a running mean in that dtype. Other weights run the same network carrying model
indices (ties ordered by index, as a stable sort), decide the cuts on float64 cumulative weights and form
the weighted sum of the kept values in float64, rounded once; above 32 models a stable torch.sort of
c x N blocks replaces the network. Where the compiled kernels serve a tensor (``kernels.py``), the same
rules run as one blocked pass of sorting networks over cache-sized blocks for any N.
"""

from __future__ import annotations

import torch

from swarmlearning.merge import kernels, layers
from swarmlearning.merge.types import MergeInputs, MergeResult


def trimmed_mean(block: torch.Tensor, weights: torch.Tensor, fraction: float) -> torch.Tensor:
    """Weighted trimmed mean of every row of ``block`` (c x N, a row per coordinate)."""
    # Stable: among equal values the lower model index is cut first, so the kept weights are defined.
    values, order = torch.sort(block, dim=1, stable=True)
    w = weights.to(torch.float64)[order]
    total = float(weights.sum())
    below = torch.cumsum(w, dim=1)  # weight of this value and all smaller ones
    above = total - below + w  # weight of this value and all larger ones
    cut = (fraction + layers.WEIGHT_TOL) * total
    kept = torch.where((below > cut) & (above > cut), w, torch.zeros_like(w))
    mass = kept.sum(dim=1)
    mean = (kept * values).sum(dim=1) / mass.clamp_min(torch.finfo(torch.float64).tiny)
    if bool((mass > 0).all()):
        return mean
    # Only reachable for trim_fraction within ~1e-9 of 0.5, where nothing would be left: the median.
    return torch.where(mass > 0, mean, layers.weighted_median(block, weights, interpolate=True))


def _weighted_network(block: torch.Tensor, weights: torch.Tensor, fraction: float) -> torch.Tensor:
    """Any weights, N x c block (N <= NETWORK_MAX_MODELS): the rule of :func:`trimmed_mean` on the rows
    of a sorting network that orders equal values by model index (as the stable sort does)."""
    rows, wrows = layers.sort_rows_weighted(block, weights, stable=True)
    total = float(weights.sum())
    cut = (fraction + layers.WEIGHT_TOL) * total
    below = torch.zeros_like(wrows[0])
    acc, mass = torch.zeros_like(wrows[0]), torch.zeros_like(wrows[0])
    for row, w in zip(rows, wrows, strict=True):
        above = total - below  # weight of this value and all larger ones
        below = below + w  # weight of this value and all smaller ones
        kept = w * ((below > cut) & (above > cut))
        acc.addcmul_(kept, row)
        mass += kept
    mean = acc / mass.clamp_min(torch.finfo(torch.float64).tiny)
    if bool((mass > 0).all()):
        return mean
    return torch.where(mass > 0, mean, layers.median_of_sorted(rows, wrows, total))


def cut_counts(weights: torch.Tensor, fraction: float) -> tuple[int, int]:
    """Equal weights: how many values the weighted rule cuts from the low and from the high end."""
    w = weights.to(torch.float64)
    cut = (fraction + layers.WEIGHT_TOL) * float(w.sum())
    low = int((torch.cumsum(w, 0) <= cut).sum())
    high = int((torch.cumsum(w.flip(0), 0) <= cut).sum())
    return low, high


def _equal(block: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """N x c block: the mean of sorted rows low .. N - high - 1 (running mean, exact for equal values)."""
    rows = layers.sort_rows(block)[low : block.shape[0] - high]
    acc = rows[0].clone()
    for k, row in enumerate(rows[1:], start=2):
        acc.lerp_(row, 1.0 / k)
    return acc


def merge_trimmedmean(inputs: MergeInputs) -> MergeResult:
    """Weighted coordinate-wise trimmed mean of the contributing models."""
    fraction, models, weights = inputs.options.trim_fraction, inputs.models, inputs.weights
    trim: tuple[int, int] | None = None  # equal weights: how many sorted values to drop at each end
    if layers.equal_weights(weights) and sum(cut_counts(weights, fraction)) < len(models):
        trim = cut_counts(weights, fraction)

    def kernel(rows: list[torch.Tensor], out: torch.Tensor) -> None:
        kernels.order_statistic(
            rows, weights, out, statistic="trimmed", trim=trim, fraction=fraction, tol=layers.WEIGHT_TOL
        )

    if fraction == 0:
        state = layers.mean_state(models, weights)
    elif trim is not None:
        low, high = trim
        state = layers.merge_rowwise(models, weights, lambda b, w: _equal(b, low, high), kernel)
    elif len(models) <= layers.NETWORK_MAX_MODELS:
        state = layers.merge_rowwise(models, weights, lambda b, w: _weighted_network(b, w, fraction), kernel)
    else:
        state = layers.merge_tensorwise(
            models, weights, lambda b, w: trimmed_mean(b, w, fraction), kernel=kernel
        )
    return MergeResult(state=state, selected=inputs.indices)
