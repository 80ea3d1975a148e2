"""Weighted coordinate-wise median (HPE's ``coordmedian``).

For every coordinate the values of the N models are sorted; with C_k the cumulative normalised weight of
the k+1 smallest, the result is the first value with C_k >= 1/2 (lower median) averaged with the first
value with C_k > 1/2 (upper median). They differ only when a cumulative weight is exactly 1/2 (within
1e-9), e.g. equal weights and even N, where this gives NumPy's median. A model with weight >= 1/2 of the
total therefore decides alone; a minority of wild peers (< 1/2 of the weight) cannot move the result
outside the range of the honest values.

Computed in the work dtype (float32 for float32/float16/bfloat16 models, float64 for float64 ones; the
result is an input value or the midpoint of two, rounded once). Equal weights (the common case) take
the middle row(s) of a sorting network (elementwise min/max over N x c blocks of 64 Ki values per model,
cache-resident); other weights run the same network carrying model indices and pick by float64
cumulative weights. Above 32 models, c x N blocks are sorted with torch.sort instead. Where the compiled
kernels serve a tensor (``kernels.py``), the same rules run as one blocked pass of sorting networks
over cache-sized blocks for any N (``kernels.order_statistic``).
"""

from __future__ import annotations

import torch

from swarmlearning.merge import kernels, layers
from swarmlearning.merge.types import MergeInputs, MergeResult


def _weighted(block: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return layers.weighted_median(block, weights, interpolate=True)


def _equal(block: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Equal weights, N x c block: the middle value (odd N) or the midpoint of the two middle ones."""
    n = block.shape[0]
    rows = layers.sort_rows(block)
    if n % 2:
        return rows[n // 2]
    return layers.midpoint(rows[n // 2 - 1], rows[n // 2])


def _weighted_network(block: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Any weights, N x c block (N <= NETWORK_MAX_MODELS): sorting network carrying model indices."""
    rows, wrows = layers.sort_rows_weighted(block, weights, stable=False)
    return layers.median_of_sorted(rows, wrows, float(weights.sum()))


def merge_coordmedian(inputs: MergeInputs) -> MergeResult:
    """Weighted coordinate-wise median of the contributing models."""
    w = inputs.weights
    equal = layers.equal_weights(w)

    def kernel(rows: list[torch.Tensor], out: torch.Tensor) -> None:
        trim = (0, 0) if equal else None  # (0, 0): the equal-weight network path
        kernels.order_statistic(rows, w, out, statistic="median", trim=trim, tol=layers.WEIGHT_TOL)

    if equal:
        state = layers.merge_rowwise(inputs.models, w, _equal, kernel)
    elif len(inputs.models) <= layers.NETWORK_MAX_MODELS:
        state = layers.merge_rowwise(inputs.models, w, _weighted_network, kernel)
    else:
        state = layers.merge_tensorwise(inputs.models, w, _weighted, kernel=kernel)
    return MergeResult(state=state, selected=inputs.indices)
