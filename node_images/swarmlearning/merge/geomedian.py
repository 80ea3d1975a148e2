"""Weighted geometric median (HPE's ``geomedian``; RFA, Pillutla et al. 2022) by Weiszfeld's algorithm.

Minimises sum_i w_i ||x_i - z|| over the whole flattened model vector (all floating tensors together),
starting at the weighted mean. One Weiszfeld update is z <- sum_i b_i x_i / sum_i b_i with
b_i = w_i / ||x_i - z||. It runs layer by layer: the estimate z is kept as float64 per tensor (the only
float64 copy of the model), and the full-vector distances ||x_i - z|| are accumulated from per-slice
squared distances in the same pass that writes the new z, so each iteration reads every model once,
in its own dtype (added into reused float64 slice buffers, no stacking, no float64 copy of an input),
and never concatenates a model. Every sum is float64, so the stopping rules below see float64 values.

Scale: "relative" below means relative to s(z) = ||z|| + the weighted median of the distances
||x_i - z||. The median distance keeps s positive when the median is near the origin, and a minority
(< half the weight) of attackers cannot inflate it.

Zero distances (z on a model x_k, e.g. when the mean is one of the inputs or the median is a model):
models within 1e-12 * s(z) of z count as coinciding, with total weight eta. The Vardi-Zhang (2000) rule
then applies: with R = sum_{i not coinciding} b_i (x_i - z) and r = ||R||, z is the median if r <= eta
(stop); otherwise z <- (1 - eta / r) T + (eta / r) z, where T is the Weiszfeld point of the other
models. This keeps the iteration from sticking to a model that is not the median.

Stopping: after an update with ||z_new - z|| <= geomedian_tol * s(z_new) (relative change, HPE's 1e-6);
when the objective sum_i w_i ||x_i - z|| no longer decreases (oscillation at rounding level; exact
Weiszfeld steps always decrease it), keeping the current estimate; when all models coincide with z; or
after geomedian_max_iter updates. ``MergeResult.iterations`` counts the updates made.
Integer/bool tensors take the weighted lower median of all contributing models.

Where the compiled kernels serve a tensor (``kernels.py``), each of its passes is one fused blocked
kernel (``kernels.weiszfeld_pass``: the weighted sum, the change, the norm and all N distances from one
read of every input).
"""

from __future__ import annotations

import math

import torch

from swarmlearning.merge import kernels, layers
from swarmlearning.merge.layers import (
    flat_rows,
    float_names,
    merge_discrete,
    slices,
    weighted_median,
)
from swarmlearning.merge.types import MergeInputs, MergeResult

COINCIDE_RTOL = 1e-12


def _weighted_sum(rows: list[torch.Tensor], s: slice, coef: list[float], out: torch.Tensor) -> torch.Tensor:
    """out <- sum_i coef_i * rows_i[s] in float64, added in place (inputs are read in their own dtype)."""
    out.zero_()
    for row, c in zip(rows, coef, strict=True):
        if c:
            out.add_(row[s], alpha=c)
    return out


def _update(
    inputs: MergeInputs, z: dict[str, torch.Tensor], beta: torch.Tensor, keep: float
) -> tuple[float, float, torch.Tensor]:
    """One pass: z <- (1 - keep) * (beta @ x / sum beta) + keep * z, slice by slice.

    Returns (||z_new - z||^2, ||z_new||^2, squared distances of every model to z_new).
    """
    delta2, norm2 = 0.0, 0.0
    d2 = [0.0] * len(inputs.models)
    b = (beta / beta.sum()).tolist()
    for name in float_names(inputs.models):
        rows, zf = flat_rows(inputs.models, name), z[name]
        if kernels.supported(rows):  # the same pass fused: one read of every input, z read and written once
            dz2, nz2, dist2 = kernels.weiszfeld_pass(rows, b, keep, zf)
            delta2, norm2 = delta2 + dz2, norm2 + nz2
            d2 = [a + float(x) for a, x in zip(d2, dist2, strict=True)]
            continue
        new_buf, diff_buf = _buffers(zf)
        for s in slices(zf.numel(), layers.STREAM_VALUES):
            old = zf[s]
            new = _weighted_sum(rows, s, b, new_buf[: old.numel()])
            if keep:
                new.mul_(1 - keep).add_(old, alpha=keep)
            diff = torch.sub(new, old, out=diff_buf[: old.numel()])
            delta2 += float(torch.dot(diff, diff))
            norm2 += float(torch.dot(new, new))
            for i, row in enumerate(rows):
                torch.sub(row[s], new, out=diff)
                d2[i] += float(torch.dot(diff, diff))
            old.copy_(new)
    return delta2, norm2, torch.tensor(d2, dtype=torch.float64)


def _buffers(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 scratch slices on ``like``'s device, reused for every slice of one tensor."""
    size = min(like.numel(), layers.STREAM_VALUES)
    return (
        torch.empty(size, dtype=torch.float64, device=like.device),
        torch.empty(size, dtype=torch.float64, device=like.device),
    )


def _scale(norm2: float, dist: torch.Tensor, w: torch.Tensor) -> float:
    """s(z) = ||z|| + weighted median of the distances: the yardstick for "relative" and "zero"."""
    return math.sqrt(norm2) + float(weighted_median(dist[None, :], w, interpolate=False)[0])


def _residual_norm(inputs: MergeInputs, z: dict[str, torch.Tensor], beta: torch.Tensor) -> float:
    """r = ||sum_i beta_i (x_i - z)||, the pull of the non-coinciding models (Vardi-Zhang)."""
    r2 = 0.0
    total = float(beta.sum())
    coef = beta.tolist()
    for name in float_names(inputs.models):
        rows, zf = flat_rows(inputs.models, name), z[name]
        if kernels.supported(rows):
            r2 += kernels.pull_norm2(rows, coef, zf)
            continue
        pull_buf, _ = _buffers(zf)
        for s in slices(zf.numel(), layers.STREAM_VALUES):
            pull = _weighted_sum(rows, s, coef, pull_buf[: s.stop - s.start]).sub_(zf[s], alpha=total)
            r2 += float(torch.dot(pull, pull))
    return math.sqrt(r2)


def merge_geomedian(inputs: MergeInputs) -> MergeResult:
    """Weighted geometric median of the contributing models."""
    opts, w = inputs.options, inputs.weights
    first = inputs.models[0]
    z = {
        name: torch.zeros(first[name].numel(), dtype=torch.float64, device=first[name].device)
        for name in float_names(inputs.models)
    }
    # Start at the weighted mean: an update with beta = w from z = 0 and keep = 0.
    _, norm2, d2 = _update(inputs, z, w, 0.0)
    objective = math.inf
    iterations = 0
    while iterations < opts.geomedian_max_iter:
        dist = d2.sqrt()
        new_objective = float((w * dist).sum())
        if new_objective >= objective:
            break  # no more progress: oscillating at rounding level
        objective = new_objective
        coincide = dist <= COINCIDE_RTOL * _scale(norm2, dist, w)
        if bool(coincide.all()):
            break  # every model is at z
        beta = torch.where(coincide, torch.zeros_like(w), w / dist.clamp_min(torch.finfo(torch.float64).tiny))
        eta = float(w[coincide].sum())
        keep = 0.0
        if eta > 0:
            r = _residual_norm(inputs, z, beta)
            if r <= eta:
                break  # z is a model and the others' pull cannot move it: it is the median
            keep = eta / r
        delta2, norm2, d2 = _update(inputs, z, beta, keep)
        iterations += 1
        if math.sqrt(delta2) <= opts.geomedian_tol * _scale(norm2, d2.sqrt(), w):
            break
    state: dict[str, torch.Tensor] = {}
    for name, ref in first.items():
        if name in z:
            state[name] = z[name].reshape(ref.shape).to(ref.dtype)
        else:
            state[name] = merge_discrete(inputs.models, w, name)
    return MergeResult(state=state, selected=inputs.indices, iterations=iterations)
