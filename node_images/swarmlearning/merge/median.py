"""Weighted coordinate-wise median (HPE's ``coordmedian``).

For every coordinate the values of the N models are sorted; with C_k the cumulative normalised weight of
the k+1 smallest, the result is the first value with C_k >= 1/2 (lower median) averaged with the first
value with C_k > 1/2 (upper median). They differ only when a cumulative weight is exactly 1/2 (within
1e-9), e.g. equal weights and even N, where this gives NumPy's median. A model with weight >= 1/2 of the
total therefore decides alone; a minority of wild peers (< 1/2 of the weight) cannot move the result
outside the range of the honest values.
"""

from __future__ import annotations

import torch

from swarmlearning.merge.layers import merge_tensorwise, weighted_median
from swarmlearning.merge.types import MergeInputs, MergeResult


def _median(block: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return weighted_median(block, weights, interpolate=True)


def merge_coordmedian(inputs: MergeInputs) -> MergeResult:
    """Weighted coordinate-wise median of the contributing models."""
    state = merge_tensorwise(inputs.models, inputs.weights, _median)
    return MergeResult(state=state, selected=inputs.indices)
