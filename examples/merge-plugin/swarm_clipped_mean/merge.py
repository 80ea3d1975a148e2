"""The norm-clipped mean: a weighted mean in which no input can pull further than a typical one.

1. m = the coordinate-wise median of the inputs (lower median of each value over the N inputs);
2. d_i = the L2 distance of input i to m over all floating-point tensors;
3. tau = the median of the d_i; every input further than tau is pulled in along its direction to m
   until it is at distance tau (x_i' = m + min(1, tau / d_i) (x_i - m));
4. the result is the weighted mean of the x_i' (the weights the swarm gives: nodeWeightage x samples).

A minority of wild inputs (scaled, noised, sign-flipped) moves the result by at most tau times their
share of the weight, while honest inputs near each other keep their full say: a mean where inputs agree,
median-like where one is far off. Integer tensors (e.g. BatchNorm's ``num_batches_tracked``) take the
coordinate median. Memory: one stacked copy of one tensor of all inputs at a time, plus the median.

Contract (swarmlearning.merge.plugins.MergePlugin): the models are validated (same names, shapes,
dtypes, finite), the weights a float64 tensor of positive weights summing to 1; the options are the
contract's merge options (unused here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def clipped_mean(
    models: Sequence[Mapping[str, torch.Tensor]],
    weights: torch.Tensor,
    options: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """Merge ``models`` with the norm-clipped mean (see the module docstring); returns a new state_dict."""
    del options  # no parameters: tau comes from the inputs themselves
    names = list(models[0])
    medians: dict[str, torch.Tensor] = {}
    squared = torch.zeros(len(models), dtype=torch.float64)
    for name in names:
        stacked = torch.stack([m[name].detach() for m in models])
        if stacked.is_floating_point():
            work = stacked.to(torch.float64)
            median = work.median(dim=0).values
            squared += (work - median).reshape(len(models), -1).square().sum(dim=1)
        else:
            median = stacked.median(dim=0).values
        medians[name] = median
    distances = squared.sqrt()
    tau = distances.median()
    scale = torch.where(distances > tau, tau / distances.clamp_min(1e-300), torch.ones_like(distances))
    coeff = weights.to(torch.float64) * scale  # weight of each input's offset from the median
    out: dict[str, torch.Tensor] = {}
    for name in names:
        like = models[0][name]
        median = medians[name]
        if not like.is_floating_point():
            out[name] = median.to(like.dtype)
            continue
        merged = median.clone()
        for c, model in zip(coeff.tolist(), models, strict=True):
            merged += c * (model[name].detach().to(torch.float64) - median)
        out[name] = merged.to(like.dtype)
    return out
