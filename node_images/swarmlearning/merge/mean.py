"""Weighted mean (FedAvg; HPE's default ``mean``): sum_i w_i x_i with the weights normalised to 1.

Streams every tensor slice by slice as an in-place running weighted mean in the work dtype (float32 for
float32/float16/bfloat16 models, so half-precision sums cannot overflow; float64 for float64 models):
each input is read once, the result written once, nothing is stacked (``layers.weighted_mean_tensor``).
float32 accumulation over a few dozen models keeps relative errors near 1e-7. Not robust: one peer with
huge values moves the result arbitrarily.
"""

from __future__ import annotations

from swarmlearning.merge.layers import mean_state
from swarmlearning.merge.types import MergeInputs, MergeResult


def merge_mean(inputs: MergeInputs) -> MergeResult:
    """Weighted mean of the contributing models."""
    return MergeResult(state=mean_state(inputs.models, inputs.weights), selected=inputs.indices)
