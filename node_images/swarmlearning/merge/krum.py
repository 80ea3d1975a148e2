"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017).

Each contributing model i (n of them, f = ``byzantine`` assumed attackers, n >= 2f + 3) gets the score
sum of its n - f - 2 smallest squared Euclidean distances to the other models, over the whole flattened
model (all floating tensors; the squared distances are accumulated block by block, never concatenating
the model: each N x c block in the work dtype, float32 for float32/float16/bfloat16 models, one reused
buffer per tensor, is centred on model 0 in place and gives all pairwise squared distances from one
Gram matrix product, |a|^2 + |b|^2 - 2ab of the centred rows, so the cancellation is relative to the
models' spread, not their size; the blocks' contributions are summed in float64). Scores ignore the
weights, as in the paper: an attacker cannot buy a better score with a large nodeWeightage. Ties go to
the lower input index.

- ``krum`` returns the single best-scored model unchanged.
- ``multikrum`` averages the m best-scored models (``multikrum_keep``, default n - f) with their weights
  renormalised among them (the streaming weighted mean of ``mean``).
Integer/bool tensors come from the picked models (weighted lower median among them).
"""

from __future__ import annotations

import torch

from swarmlearning.merge import layers
from swarmlearning.merge.types import MergeInputs, MergeResult


def pairwise_squared_distances(inputs: MergeInputs) -> torch.Tensor:
    """n x n float64 matrix of squared distances between the contributing models."""
    n = len(inputs.models)
    d2 = torch.zeros(n, n, dtype=torch.float64)
    for name in layers.float_names(inputs.models):
        ref = inputs.models[0][name]
        rows = layers.flat_rows(inputs.models, name)
        step = max(1, layers.BLOCK_VALUES // n)
        # One N x c block buffer per tensor, filled and centred in place: no stacked or centred copies.
        buf = torch.empty(n, min(step, ref.numel()), dtype=layers.work_dtype(ref.dtype), device=ref.device)
        for s in layers.slices(ref.numel(), step):
            block = buf[:, : s.stop - s.start]
            for i, row in enumerate(rows):
                block[i].copy_(row[s])
            # Gram matrix of the block centred on model 0: ||d_i - d_j||^2 = |d_i|^2 + |d_j|^2 - 2 d_i.d_j
            # with d = x - x_0, so the cancellation is relative to the models' spread, not to their size
            # (close models stay accurate); one matmul per block, summed over blocks in float64.
            block[1:] -= block[0]
            block[0].zero_()
            gram = (block @ block.T).to(torch.float64).cpu()
            sq = gram.diagonal()
            d2 += sq[:, None] + sq[None, :] - 2 * gram
    return d2.clamp_min_(0.0)


def krum_scores(inputs: MergeInputs) -> torch.Tensor:
    """Krum score of every contributing model (lower is better)."""
    n, f = len(inputs.models), inputs.options.byzantine
    d2 = pairwise_squared_distances(inputs)
    d2.fill_diagonal_(float("inf"))
    nearest = torch.sort(d2, dim=1).values[:, : n - f - 2]
    return nearest.sum(dim=1)


def _merge_best(inputs: MergeInputs, keep: int) -> MergeResult:
    scores = krum_scores(inputs)
    picked = torch.sort(scores, stable=True).indices[:keep].tolist()
    models = [inputs.models[p] for p in picked]
    weights = inputs.weights[picked]
    state = layers.mean_state(models, weights)
    return MergeResult(state=state, selected=tuple(sorted(inputs.indices[p] for p in picked)))


def merge_krum(inputs: MergeInputs) -> MergeResult:
    """The contributing model with the best Krum score."""
    return _merge_best(inputs, 1)


def merge_multikrum(inputs: MergeInputs) -> MergeResult:
    """Weighted mean of the ``multikrum_keep`` (default n - f) best Krum-scored models."""
    keep = inputs.options.multikrum_keep
    return _merge_best(inputs, len(inputs.models) - inputs.options.byzantine if keep is None else keep)
