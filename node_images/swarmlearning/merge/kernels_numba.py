"""The compiled merge kernels (numba): one blocked, multithreaded pass over the peers' tensors each.

Imported only by :mod:`swarmlearning.merge.kernels` (lazily, on the first merge that uses a kernel).
Every kernel takes the N inputs as an int64 array of the data addresses of contiguous CPU tensors of
``n`` values of one storage ``kind`` (the codes below), so one compiled version serves any N and any
input dtype; only the work dtype of the output (float32, float64, int64) is specialised. The caller keeps
the tensors alive during the call.

Blocks: the coordinates are cut into blocks of ``block`` values; ``prange`` spreads the blocks over
numba's threads; each block loads the N models' values once into an N x block scratch (cache-resident;
inputs widened to the work dtype there, half precision through exact 64 Ki-entry tables) and writes its
outputs once. Per-block partial sums (geomedian) go to their own row, so results do not depend on the
thread count. fastmath is off: IEEE rounding, no reassociation, the arithmetic of the torch paths.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

# Storage kinds of the inputs (how the bytes at an address are read); U8 also serves bool.
F32, F64, F16, BF16, I64, I32, I16, I8, U8 = range(9)
# Order-statistic modes of :func:`sort_reduce`.
EQUAL_MEDIAN, EQUAL_TRIMMED, WEIGHTED_MEDIAN, WEIGHTED_TRIMMED, LOWER_MEDIAN = range(5)
TINY = np.finfo(np.float64).tiny


@intrinsic
def _address(typingctx, addr):
    """An int64 data address as a void pointer, for ``numba.carray``."""
    sig = types.voidptr(addr)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

    return sig, codegen


@njit(cache=True, fastmath=False)
def _load(addr, kind, n, start, dst, f16, bf16):
    """dst[:] <- values start .. start + len(dst) of the input at ``addr``, converted to dst's dtype."""
    cnt = dst.shape[0]
    p = _address(addr)  # type: ignore[call-arg,var-annotated]  # numba passes typingctx
    if kind == F32:
        s32 = carray(p, n, np.float32)
        for c in range(cnt):
            dst[c] = s32[start + c]
    elif kind == F64:
        s64 = carray(p, n, np.float64)
        for c in range(cnt):
            dst[c] = s64[start + c]
    elif kind in (F16, BF16):
        table = f16 if kind == F16 else bf16
        s16 = carray(p, n, np.uint16)
        for c in range(cnt):
            dst[c] = table[s16[start + c]]
    elif kind == I64:
        si64 = carray(p, n, np.int64)
        for c in range(cnt):
            dst[c] = si64[start + c]
    elif kind == I32:
        si32 = carray(p, n, np.int32)
        for c in range(cnt):
            dst[c] = si32[start + c]
    elif kind == I16:
        si16 = carray(p, n, np.int16)
        for c in range(cnt):
            dst[c] = si16[start + c]
    elif kind == I8:
        si8 = carray(p, n, np.int8)
        for c in range(cnt):
            dst[c] = si8[start + c]
    else:
        su8 = carray(p, n, np.uint8)
        for c in range(cnt):
            dst[c] = su8[start + c]


@njit(cache=True, fastmath=False)
def _lerp(acc, x, t, u):
    """acc <- acc + t (x - acc) in acc's dtype, torch.lerp's formula (u = 1 - t): exact for x == acc."""
    if abs(t) < 0.5:
        for c in range(acc.shape[0]):
            acc[c] = acc[c] + t * (x[c] - acc[c])
    else:
        for c in range(acc.shape[0]):
            acc[c] = x[c] - (x[c] - acc[c]) * u


@njit(cache=True, fastmath=False)
def _network(vals, pi, pj, cnt):
    """Sort columns 0..cnt-1 of vals (N x block) along the model axis with the comparator pairs."""
    for k in range(pi.shape[0]):
        a = vals[pi[k]]
        b = vals[pj[k]]
        for c in range(cnt):
            x = a[c]
            y = b[c]
            a[c] = y if y < x else x
            b[c] = x if y < x else y


@njit(cache=True, fastmath=False)
def _network_carry(vals, idx, pi, pj, cnt, stable):
    """:func:`_network` carrying each value's model index; with ``stable`` equal values keep the index
    order (exactly a stable sort), else they may come in any order."""
    for k in range(pi.shape[0]):
        a = vals[pi[k]]
        b = vals[pj[k]]
        ia = idx[pi[k]]
        ib = idx[pj[k]]
        if stable:
            for c in range(cnt):
                x = a[c]
                y = b[c]
                p = ia[c]
                q = ib[c]
                swap = (y < x) | ((y == x) & (q < p))
                a[c] = y if swap else x
                b[c] = x if swap else y
                ia[c] = q if swap else p
                ib[c] = p if swap else q
        else:
            for c in range(cnt):
                x = a[c]
                y = b[c]
                p = ia[c]
                q = ib[c]
                swap = y < x
                a[c] = y if swap else x
                b[c] = x if swap else y
                ia[c] = q if swap else p
                ib[c] = p if swap else q


@njit(cache=True, fastmath=False)
def _midpoint(low, high):
    """(low + high) / 2 as torch's merge code forms it: low * 0.5 + high * 0.5 (floats), (low + high) // 2."""
    return low * 0.5 + high * 0.5


@njit(cache=True, fastmath=False)
def _median_picks(vals, idx, w, c, half, tol):
    """Sorted positions of the lower and the upper weighted median of column c: how many cumulative
    weights stay below half - tol, and how many stay at or below half + tol."""
    cum = 0.0
    lower = 0
    upper = 0
    for k in range(vals.shape[0]):
        cum += w[idx[k, c]]
        lower += cum < half - tol
        upper += cum <= half + tol
    return lower, upper


@njit(cache=True, fastmath=False)
def _median_rows(vals, idx, w, half, tol, res, interpolate):
    """res <- weighted median of every column of the sorted vals (rule of :func:`_median_picks`), with
    the cumulative weights formed row by row (contiguous, vectorisable) instead of column by column."""
    m, cnt = vals.shape
    cum = np.zeros(cnt, np.float64)
    lower = np.zeros(cnt, np.int64)
    upper = np.zeros(cnt, np.int64)
    for k in range(m):
        irow = idx[k]
        for c in range(cnt):
            cum[c] += w[irow[c]]
            lower[c] += cum[c] < half - tol
            upper[c] += cum[c] <= half + tol
    for c in range(cnt):
        if interpolate:
            res[c] = _midpoint(vals[lower[c], c], vals[upper[c], c])
        else:  # exact for integers too (no float in between)
            res[c] = vals[lower[c], c]


@njit(cache=True, fastmath=False)
def sort_blocks(
    addrs, kind, n, mode, w, total, low, high, tol, cut, t, u, pi, pj, block, out, f16, bf16, first, last
):
    """Per coordinate order statistic of the N inputs, written to out (its dtype is the work dtype).

    The N values of a block are sorted by a sorting network (pairs pi < pj) run across the block's
    columns (vectorised compare-exchange, the block stays in cache). Modes: EQUAL_MEDIAN (middle value
    or midpoint of the two middle ones), EQUAL_TRIMMED (running mean of sorted rows low .. N - high - 1),
    and with the normalised float64 weights w carried along as model indices: WEIGHTED_MEDIAN (midpoint
    of the lower and upper weighted medians of the weights' ``total``, cut points compared with
    tolerance ``tol``),
    WEIGHTED_TRIMMED (weights cut from each end while their cumulative weight stays <= ``cut``, the
    kept values averaged with their weights in float64; the median where nothing is kept) and
    LOWER_MEDIAN (the lower weighted median, for integer tensors). EQUAL_TRIMMED's running mean uses
    t[k] = 1 / k and u[k] = 1 - t[k] in out's dtype (torch.lerp's weights).
    """
    m = addrs.shape[0]
    weighted = mode >= WEIGHTED_MEDIAN
    half = total / 2
    for b in range(first, last):
        s = b * block
        e = min(s + block, n)
        cnt = e - s
        vals = np.empty((m, cnt), out.dtype)
        for i in range(m):
            _load(addrs[i], kind, n, s, vals[i], f16, bf16)
        res = out[s:e]
        if not weighted:
            _network(vals, pi, pj, cnt)
            if mode == EQUAL_MEDIAN:
                if m % 2:
                    res[:] = vals[m // 2]
                else:
                    lo_row = vals[m // 2 - 1]
                    hi_row = vals[m // 2]
                    for c in range(cnt):
                        res[c] = _midpoint(lo_row[c], hi_row[c])
            else:
                res[:] = vals[low]
                for k in range(low + 1, m - high):
                    _lerp(res, vals[k], t[k - low + 1], u[k - low + 1])
            continue
        idx = np.empty((m, cnt), np.int32)
        for i in range(m):
            idx[i, :] = i
        _network_carry(vals, idx, pi, pj, cnt, mode == WEIGHTED_TRIMMED)
        if mode == WEIGHTED_TRIMMED:
            below = np.zeros(cnt, np.float64)
            acc = np.zeros(cnt, np.float64)
            mass = np.zeros(cnt, np.float64)
            for k in range(m):
                row = vals[k]
                irow = idx[k]
                for c in range(cnt):
                    wk = w[irow[c]]
                    above = total - below[c]  # weight of this value and all larger ones
                    below[c] += wk  # weight of this value and all smaller ones
                    kept = wk if (below[c] > cut) & (above > cut) else 0.0
                    acc[c] += kept * np.float64(row[c])
                    mass[c] += kept
            for c in range(cnt):
                if mass[c] > 0:
                    res[c] = acc[c] / max(mass[c], TINY)
                else:
                    lower, upper = _median_picks(vals, idx, w, c, half, tol)
                    res[c] = _midpoint(vals[lower, c], vals[upper, c])
        else:
            _median_rows(vals, idx, w, half, tol, res, mode != LOWER_MEDIAN)


@njit(cache=True, fastmath=False)
def weiszfeld_blocks(addrs, kind, n, coef, keep, block, z, partial, f16, bf16, first, last):
    """One fused geomedian pass, z <- (1 - keep) sum_i coef_i x_i + keep z in float64, block by block.

    partial[b] gets block b's ||z_new - z||^2, ||z_new||^2 and the N squared distances ||x_i - z_new||^2
    (columns 0, 1, 2..N+1); each input is read once, z read and written once.
    """
    m = addrs.shape[0]
    for b in range(first, last):
        s = b * block
        e = min(s + block, n)
        cnt = e - s
        vals = np.empty((m, cnt), np.float64)
        for i in range(m):
            _load(addrs[i], kind, n, s, vals[i], f16, bf16)
        new = np.zeros(cnt, np.float64)
        for i in range(m):
            ci = coef[i]
            if ci != 0.0:
                row = vals[i]
                for c in range(cnt):
                    new[c] = new[c] + ci * row[c]
        old = z[s:e]
        if keep != 0.0:
            for c in range(cnt):
                new[c] = new[c] * (1.0 - keep) + old[c] * keep
        delta2 = 0.0
        norm2 = 0.0
        for c in range(cnt):
            d = new[c] - old[c]
            delta2 += d * d
            norm2 += new[c] * new[c]
        partial[b, 0] = delta2
        partial[b, 1] = norm2
        for i in range(m):
            row = vals[i]
            d2 = 0.0
            for c in range(cnt):
                d = row[c] - new[c]
                d2 += d * d
            partial[b, 2 + i] = d2
        old[:] = new


@njit(cache=True, fastmath=False)
def pull_blocks(addrs, kind, n, beta, total, block, z, partial, f16, bf16, first, last):
    """partial[b] <- ||sum_i beta_i x_i - total z||^2 over block b (Vardi-Zhang's residual)."""
    m = addrs.shape[0]
    for b in range(first, last):
        s = b * block
        e = min(s + block, n)
        cnt = e - s
        row = np.empty(cnt, np.float64)
        pull = np.zeros(cnt, np.float64)
        for i in range(m):
            if beta[i] != 0.0:
                _load(addrs[i], kind, n, s, row, f16, bf16)
                for c in range(cnt):
                    pull[c] = pull[c] + beta[i] * row[c]
        r2 = 0.0
        for c in range(cnt):
            d = pull[c] - total * z[s + c]
            r2 += d * d
        partial[b] = r2


# Parallel drivers: ``chunks`` contiguous runs of blocks spread over numba's threads (the *_blocks
# functions above run serially when called directly, which small tensors do: no thread wake-ups).


@njit(cache=True, parallel=True, fastmath=False)
def sort_parallel(
    addrs, kind, n, mode, w, total, low, high, tol, cut, t, u, pi, pj, block, out, f16, bf16, blocks, chunks
):
    for k in prange(chunks):
        sort_blocks(
            addrs,
            kind,
            n,
            mode,
            w,
            total,
            low,
            high,
            tol,
            cut,
            t,
            u,
            pi,
            pj,
            block,
            out,
            f16,
            bf16,
            blocks * k // chunks,
            blocks * (k + 1) // chunks,
        )


@njit(cache=True, parallel=True, fastmath=False)
def weiszfeld_parallel(addrs, kind, n, coef, keep, block, z, partial, f16, bf16, blocks, chunks):
    for k in prange(chunks):
        weiszfeld_blocks(
            addrs,
            kind,
            n,
            coef,
            keep,
            block,
            z,
            partial,
            f16,
            bf16,
            blocks * k // chunks,
            blocks * (k + 1) // chunks,
        )


@njit(cache=True, parallel=True, fastmath=False)
def pull_parallel(addrs, kind, n, beta, total, block, z, partial, f16, bf16, blocks, chunks):
    for k in prange(chunks):
        pull_blocks(
            addrs,
            kind,
            n,
            beta,
            total,
            block,
            z,
            partial,
            f16,
            bf16,
            blocks * k // chunks,
            blocks * (k + 1) // chunks,
        )
