"""Weighted mean (FedAvg; HPE's default ``mean``): sum_i w_i x_i with the weights normalised to 1.

Computed per coordinate block in float64, so long sums over many peers and float16/bfloat16 models lose
no precision before the final cast. Not robust: one peer with huge values moves the result arbitrarily.
"""

from __future__ import annotations

from swarmlearning.merge.layers import merge_tensorwise, weighted_sum
from swarmlearning.merge.types import MergeInputs, MergeResult


def merge_mean(inputs: MergeInputs) -> MergeResult:
    """Weighted mean of the contributing models."""
    state = merge_tensorwise(inputs.models, inputs.weights, weighted_sum)
    return MergeResult(state=state, selected=inputs.indices)
