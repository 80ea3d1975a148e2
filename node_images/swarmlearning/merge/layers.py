"""Layer-by-layer plumbing shared by the methods: coordinate blocks, streaming means, sorting, order stats.

Precision: floating tensors are computed in their "work dtype", float32 for float32/float16/bfloat16
models (half-precision values are widened block by block, so sums cannot overflow at 65504) and float64
for float64 models. Weights stay float64 where they decide which value is picked (cumulative weights
against a cut point) and where a weighted sum is formed from sorted blocks.

Memory bound: nothing concatenates a whole model. Streaming passes (mean, multikrum's average,
geomedian) read each model's tensor in slices of ``STREAM_VALUES`` values; a stacked block (one slice of
one tensor from all N models, ``blocks``) holds at most ``BLOCK_VALUES`` values whatever N (16 MiB in
float32), so the extra memory of a merge is a few blocks plus one output layer. The limits are read at
call time so tests can shrink them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from swarmlearning.merge import kernels

# At most this many values (all N models together) in one stacked block (krum's Gram products, the
# torch.sort paths above NETWORK_MAX_MODELS models). Larger blocks mean fewer calls: the former 256 Ki
# values made every method pay per-call and thread-sync overhead, badly so on a loaded machine.
BLOCK_VALUES = 1 << 22
# Per-model slice of the streaming passes: small enough that the accumulator stays in the CPU cache
# while N models are added into it, large enough to amortise the per-call overhead.
STREAM_VALUES = 1 << 16
# Per-model slice of the sorting networks: 64 Ki was about the best of 16 Ki..256 Ki for N = 4 and 16
# (noisy 2-core machine): smaller slices pay per-call overhead over the O(N log^2 N) elementwise calls.
NETWORK_VALUES = 1 << 16
# Up to this many models coordmedian/trimmedmean sort with a sorting network of elementwise min/max
# (vectorised; 10-50x faster than torch.sort over so few values per coordinate); beyond it torch.sort.
NETWORK_MAX_MODELS = 32
# Cumulative weights within this share of the total count as equal (e.g. exactly half the weight),
# so float rounding of normalised weights does not change which order statistic is picked.
WEIGHT_TOL = 1e-9
# Weights equal within this relative spread take the equal-weight paths (same picks as the weighted rule:
# the cut points above are compared with a 1e-9 tolerance, far wider than this).
EQUAL_RTOL = 1e-12

Models = Sequence[Mapping[str, torch.Tensor]]
# A compiled kernel for one tensor: (flat rows of all N models, flat output in the work dtype) -> None.
Kernel = Callable[[list[torch.Tensor], torch.Tensor], None]


def is_continuous(t: torch.Tensor) -> bool:
    """Floating tensors are merged by the method; integer and bool tensors by the weighted lower median."""
    return t.is_floating_point()


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 models are computed in float64, every other floating dtype in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def equal_weights(weights: torch.Tensor) -> bool:
    """True when all weights are equal (within ``EQUAL_RTOL``), e.g. the same nodeWeightage x samples."""
    return float(weights.max() - weights.min()) <= EQUAL_RTOL * float(weights.max())


def slices(numel: int, step: int) -> Iterator[slice]:
    """Consecutive slices of at most ``step`` (>= 1) values covering 0..numel."""
    step = max(1, step)
    for start in range(0, numel, step):
        yield slice(start, min(start + step, numel))


def flat_rows(models: Models, name: str) -> list[torch.Tensor]:
    """Tensor ``name`` of every model, flat (a view unless non-contiguous), on models[0]'s device."""
    device = models[0][name].device
    return [m[name].to(device).reshape(-1) for m in models]


def blocks(
    models: Models,
    name: str,
    dtype: torch.dtype,
    *,
    by_coordinate: bool = False,
    per_model: int | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (coordinate slice, block) of tensor ``name`` of all models in ``dtype``, on models[0]'s device.

    The block is N x c (one row per model), or c x N with ``by_coordinate`` (one row per coordinate,
    contiguous, which makes the per-coordinate torch.sort about twice as fast). c is at most
    ``per_model`` and at most ``BLOCK_VALUES // N``.
    """
    rows = flat_rows(models, name)
    step = BLOCK_VALUES // len(models)
    if per_model is not None:
        step = min(step, per_model)
    for s in slices(max(rows[0].numel(), 1), step):
        yield s, torch.stack([r[s].to(dtype) for r in rows], dim=1 if by_coordinate else 0)


def weighted_mean_tensor(models: Models, weights: Sequence[float], name: str) -> torch.Tensor:
    """sum_i w_i x_i of floating tensor ``name`` (weights > 0 summing to 1), in the input dtype.

    Streams slice by slice as a running weighted mean, acc <- acc + (w_i / (w_0 + ... + w_i)) (x_i - acc)
    with an in-place ``lerp_`` in the work dtype: it reads each input once and writes the result once,
    with no stacking, and identical inputs give exactly that input back. Always torch: ATen's vectorised,
    multithreaded ``lerp_`` took 0.16-0.6x the time of a numba pass doing the same (``make bench`` part
    merge, 2026-12-02, same run).
    """
    ref = models[0][name]
    work = work_dtype(ref.dtype)
    rows = flat_rows(models, name)
    out = torch.empty(ref.numel(), dtype=work, device=ref.device)
    fractions, cum = [], 0.0
    for w in weights:
        cum += float(w)
        fractions.append(float(w) / cum)
    for s in slices(ref.numel(), STREAM_VALUES):
        acc = out[s]
        acc.copy_(rows[0][s])
        for row, t in zip(rows[1:], fractions[1:], strict=True):
            acc.lerp_(row[s] if row.dtype == work else row[s].to(work), t)
    return out.reshape(ref.shape).to(ref.dtype)


def mean_state(models: Models, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted mean of every floating tensor; integer/bool tensors by :func:`merge_discrete`."""
    w = (weights / weights.sum()).tolist()
    return {
        name: weighted_mean_tensor(models, w, name)
        if is_continuous(ref)
        else merge_discrete(models, weights, name)
        for name, ref in models[0].items()
    }


def merge_tensorwise(
    models: Models,
    weights: torch.Tensor,
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    by_coordinate: bool = True,
    per_model: int | None = None,
    kernel: Kernel | None = None,
) -> dict[str, torch.Tensor]:
    """Merge every tensor coordinate-wise: floats with ``kernel(rows, out)`` where the compiled kernels
    serve the tensor (:func:`kernels.supported`), else with ``reduce(block, weights) -> (c,)`` on blocks
    in the work dtype (c x N, or N x c without ``by_coordinate``); integer/bool ones by
    :func:`merge_discrete`."""
    out: dict[str, torch.Tensor] = {}
    for name, ref in models[0].items():
        if not is_continuous(ref):
            out[name] = merge_discrete(models, weights, name)
            continue
        work = work_dtype(ref.dtype)
        flat = torch.empty(ref.numel(), dtype=work, device=ref.device)
        rows = flat_rows(models, name) if kernel is not None else []
        if kernel is not None and kernels.supported(rows):
            kernel(rows, flat)
        else:
            w = weights.to(ref.device)
            for s, block in blocks(models, name, work, by_coordinate=by_coordinate, per_model=per_model):
                flat[s] = reduce(block, w)
        out[name] = flat.reshape(ref.shape).to(ref.dtype)
    return out


def merge_rowwise(
    models: Models,
    weights: torch.Tensor,
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    kernel: Kernel | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`merge_tensorwise` on N x c blocks of ``NETWORK_VALUES`` values per model: the shape the
    sorting-network paths of the order-statistic merges (median, trimmed mean) work on."""
    return merge_tensorwise(
        models, weights, reduce, by_coordinate=False, per_model=NETWORK_VALUES, kernel=kernel
    )


def merge_discrete(models: Models, weights: torch.Tensor, name: str) -> torch.Tensor:
    """Integer/bool tensor: per-element weighted lower median, computed exactly in int64.

    Always one of the inputs' values (a counter such as num_batches_tracked stays a real count, a bool
    stays a weighted majority with ties going to the smaller value, False).
    """
    ref = models[0][name]
    flat = torch.empty(ref.numel(), dtype=torch.int64, device=ref.device)
    rows = flat_rows(models, name)
    if kernels.supported(rows):
        kernels.order_statistic(rows, weights, flat, statistic="lower_median", tol=WEIGHT_TOL)
        return flat.reshape(ref.shape).to(ref.dtype)
    w = weights.to(ref.device)
    for s, block in blocks(models, name, torch.int64, by_coordinate=True):
        flat[s] = weighted_median(block, w, interpolate=False)
    return flat.reshape(ref.shape).to(ref.dtype)


def midpoint(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(low + high) / 2 rounded once, without overflow for values near the dtype's maximum."""
    return low.mul(0.5).add_(high, alpha=0.5) if low.is_floating_point() else (low + high) // 2


def weighted_median(block: torch.Tensor, weights: torch.Tensor, *, interpolate: bool) -> torch.Tensor:
    """Per row weighted median of ``block`` (c x N, a row per coordinate) with ``weights`` (N,) > 0.

    Sort each row; C_k is the cumulative weight of the k+1 smallest values, W the total. The lower
    median is the first value with C_k >= W/2, the upper one the first with C_k > W/2; they differ only
    when some C_k equals W/2 exactly (e.g. equal weights, even N). With ``interpolate`` the result is
    their midpoint (for equal weights this is NumPy's median), otherwise the lower one. Cumulative
    weights are float64 whatever the block's dtype, so the pick does not depend on it.
    """
    # An unstable sort is fine (and faster): equal values may swap, but the result is a value, not a model.
    values, order = torch.sort(block, dim=1)
    cum = torch.cumsum(weights.to(torch.float64)[order], dim=1)
    total = float(weights.sum())
    half, tol = total / 2, WEIGHT_TOL * total
    lower = (cum < half - tol).sum(dim=1, keepdim=True)
    low = values.gather(1, lower)[:, 0]
    if not interpolate:
        return low
    upper = (cum <= half + tol).sum(dim=1, keepdim=True)
    return midpoint(low, values.gather(1, upper)[:, 0])


def sorting_network(n: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs (i < j) of Batcher's merge-exchange network sorting n items (Knuth,
    TAOCP 5.2.2 Algorithm M): O(n log^2 n) comparators, e.g. 5 for n = 4 and 63 for n = 16."""
    pairs: list[tuple[int, int]] = []
    if n < 2:
        return pairs
    t = (n - 1).bit_length()
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while True:
            pairs += [(i, i + d) for i in range(n - d) if i & p == r]
            if q == p:
                break
            d, q, r = q - p, q >> 1, p
        p >>= 1
    return pairs


def sort_rows(block: torch.Tensor) -> list[torch.Tensor]:
    """Sort an N x c block along the model dimension; returns the N sorted rows (row k = k-th smallest).

    Up to ``NETWORK_MAX_MODELS`` rows this runs a sorting network of elementwise min/max on the rows,
    in place with one scratch row, several times faster than torch.sort over so few values per column.
    Values only: which model a value came from is lost, so this serves the equal-weight paths.
    """
    n = block.shape[0]
    if n > NETWORK_MAX_MODELS:
        return list(torch.sort(block, dim=0).values.unbind(0))
    rows = list(block.unbind(0))
    spare = torch.empty_like(rows[0])
    for i, j in sorting_network(n):
        torch.minimum(rows[i], rows[j], out=spare)
        torch.maximum(rows[i], rows[j], out=rows[j])
        rows[i], spare = spare, rows[i]
    return rows


def sort_rows_weighted(
    block: torch.Tensor, weights: torch.Tensor, *, stable: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Sort an N x c block (N <= ``NETWORK_MAX_MODELS``) along the model dimension, keeping each value's
    weight: returns the sorted value rows and the float64 weight rows that go with them.

    With ``stable`` the network orders (value, model index) pairs, so equal values keep the models'
    order, exactly as a stable sort would; without it, equal values may come in any model order (fine
    for a median, which is a value).
    """
    n, c = block.shape
    rows = list(block.unbind(0))
    # Model indices as float32 (exact below 2^24): swapped arithmetically, i + m * (j - i) with m in {0, 1},
    # which is several times faster than torch.where on integer rows.
    index = [torch.full((c,), float(i), dtype=torch.float32, device=block.device) for i in range(n)]
    for i, j in sorting_network(n):
        a, b = rows[i], rows[j]
        swap = a > b
        if stable:
            swap |= (a == b) & (index[i] > index[j])
        rows[i], rows[j] = torch.minimum(a, b), torch.maximum(a, b)
        step = (index[j] - index[i]).mul_(swap)
        index[i], index[j] = index[i] + step, index[j] - step
    w = weights.to(device=block.device, dtype=torch.float64)
    return rows, [w[k.to(torch.int64)] for k in index]


def median_of_sorted(rows: list[torch.Tensor], wrows: list[torch.Tensor], total: float) -> torch.Tensor:
    """Interpolated weighted median (the rule of :func:`weighted_median`) from sorted rows and weights."""
    half, tol = total / 2, WEIGHT_TOL * total
    # Positions of the lower and the upper median: how many cumulative weights stay below each bound.
    cum = torch.zeros_like(wrows[0])
    lower = torch.zeros(cum.shape, dtype=torch.int64, device=cum.device)
    upper = torch.zeros_like(lower)
    for w in wrows:
        cum += w
        lower += cum < half - tol
        upper += cum <= half + tol
    stacked = torch.stack(rows)
    return midpoint(stacked.gather(0, lower[None])[0], stacked.gather(0, upper[None])[0])


def float_names(models: Models) -> list[str]:
    """Names of the floating tensors, the ones that make up the model vector for distances."""
    return [name for name, t in models[0].items() if is_continuous(t)]
