"""Compiled merge kernels behind a few functions, with the pure-torch code of the methods as fallback.

The kernels (numba, :mod:`swarmlearning.merge.kernels_numba`) do each merge step in one blocked,
multithreaded pass over the peers' tensors: coordinate-wise order statistics (sorting networks on
cache-sized blocks, weights carried along), the integer lower median, one Weiszfeld pass and
Vardi-Zhang's residual. The method modules ask :func:`supported` per tensor and otherwise run their
torch code, which gives the same results (to rounding: see the unit tests). The weighted mean has no
kernel: torch's streaming ``lerp_`` measured faster than one (``swarmlearning.merge.layers``).

``SWARM_MERGE_KERNELS`` (read at every merge): ``auto`` (default) uses numba when it imports, else
torch; ``torch`` forces the torch code (tests cover both paths); ``numba`` requires numba (ImportError
otherwise). In ``auto`` mode a process loads numba on its first merge of at least ``AUTO_MIN_VALUES``
values over all tensors and models (:func:`prepare`; small merges, e.g. in tests and demos, stay on
torch until then). Kernels
serve CPU tensors of float32/64, float16, bfloat16, int8/16/32/64, uint8 and bool; other devices and
dtypes take the torch code.

Compile cost: numba compiles each kernel on its first use per work dtype (seconds) and caches the
machine code on disk, so later processes only load it (see the bench notes). The cache is
``NUMBA_CACHE_DIR`` when set; else numba's ``__pycache__`` beside this package when that is writable;
else (read-only package, as in the node images) ``$XDG_CACHE_HOME/swarmlearning/numba`` (default
``~/.cache``) or, failing that, ``/tmp/swarmlearning-numba-<uid>``. numba is imported only when the
first kernel runs, so processes that never merge do not pay its import (~0.5 s).
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

ENV = "SWARM_MERGE_KERNELS"
_MODES = ("auto", "torch", "numba")
# Values per block: the N x block scratch of the sorting networks stays within ~128 KiB (L2), the
# streaming kernels' blocks are big enough to amortise the per-block overhead.
_SORT_BYTES = 128 << 10
_GEO_BYTES = 256 << 10
# Tensors of fewer values (all N models together) run on the calling thread: waking numba's workers costs
# tens of microseconds on an idle machine and milliseconds on a loaded one.
PARALLEL_MIN_VALUES = 1 << 20
# Runs of blocks per thread, so a thread slowed by other load does not hold up the pass.
_CHUNKS_PER_THREAD = 4

# auto mode loads numba (~1.5-2 s once per process with a warm cache) only for a merge of at least this
# many values (all tensors of all N models), where the torch code takes about that long for a median.
AUTO_MIN_VALUES = 1 << 24

_KINDS: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.int16: 6,
    torch.int8: 7,
    torch.uint8: 8,
    torch.bool: 8,
}

_lock = threading.Lock()  # numba's default (workqueue) threading layer must not be entered concurrently
_module: ModuleType | None = None
_missing: str | None = None


def mode() -> str:
    """The kernel mode from ``SWARM_MERGE_KERNELS`` (``auto`` when unset); ValueError on other values."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in _MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(_MODES)}; got {value!r}")
    return value


def enabled() -> bool:
    """True when merges may use the compiled kernels (numba importable and not forced off)."""
    chosen = mode()
    if chosen == "torch":
        return False
    return _load_module(required=chosen == "numba") is not None


def prepare(models: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Called once per merge: in ``auto`` mode, load numba when the merge holds at least
    ``AUTO_MIN_VALUES`` values (all tensors of all models); smaller merges never pay its import and cache
    load, and use the kernels only once an earlier merge of the process has loaded them."""
    if _module is None and _missing is None and mode() == "auto":
        values = len(models) * sum(t.numel() for t in models[0].values())
        if values >= AUTO_MIN_VALUES:
            _load_module(required=False)


def supported(tensors: Sequence[torch.Tensor]) -> bool:
    """True when the kernels merge these tensors (one name of every model): CPU, a known dtype, kernels
    not forced off (``auto``: numba loaded by :func:`prepare` or earlier; ``numba``: always)."""
    first = tensors[0]
    if first.dtype not in _KINDS or first.numel() == 0 or any(t.device.type != "cpu" for t in tensors):
        return False
    chosen = mode()
    if chosen == "torch":
        return False
    if chosen == "auto":
        return _module is not None
    return _load_module(required=True) is not None


def cache_dir() -> str | None:
    """Where numba's cache goes: None means numba's default (``__pycache__`` beside the package)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    here = Path(__file__).resolve().parent
    pycache = here / "__pycache__"
    if os.access(pycache if pycache.is_dir() else here, os.W_OK):
        return None
    candidates = [
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "swarmlearning" / "numba",
        Path(tempfile.gettempdir()) / f"swarmlearning-numba-{os.getuid()}",
    ]
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return str(path)
    return None


def warm_up(dtypes: Sequence[torch.dtype] = (torch.float32,)) -> bool:
    """Load (or compile) the kernels for models of ``dtypes`` now, e.g. in a background thread when an SL
    node starts, so its first merge as leader does not pay it. Returns False when the kernels are off."""
    if mode() == "torch" or _load_module(required=mode() == "numba") is None:
        return False
    weights = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    for dtype in (*dtypes, torch.int64):
        size = PARALLEL_MIN_VALUES // 2  # 1 model of it runs serially, 3 on all threads
        rows = [torch.zeros(size, dtype=dtype) for _ in range(3)]
        if dtype.is_floating_point:
            out = torch.empty(size, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            for few in (rows[:1], rows):  # one small pass (serial) and one big (multithreaded)
                z = torch.zeros(size, dtype=torch.float64)
                weiszfeld_pass(few, [1.0 / len(few)] * len(few), 0.0, z)
                pull_norm2(few, [1.0] * len(few), z)
                for statistic, trim in (
                    ("median", (0, 0)),
                    ("median", None),
                    ("trimmed", (0, 0)),
                    ("trimmed", None),
                ):
                    order_statistic(few, weights[: len(few)], out, statistic=statistic, trim=trim)
        else:
            out = torch.empty(size, dtype=torch.int64)
            for few in (rows[:1], rows):
                order_statistic(few, weights[: len(few)], out, statistic="lower_median")
    return True


def _load_module(*, required: bool) -> ModuleType | None:
    global _module, _missing
    if _module is not None:
        return _module
    if _missing is not None and not required:
        return None
    with _lock:
        if _module is None:
            where = cache_dir()
            if where is not None:
                os.environ["NUMBA_CACHE_DIR"] = where  # read by numba when it is first imported
            try:
                import numba

                if where is not None:
                    numba.config.CACHE_DIR = where  # type: ignore[attr-defined]  # numba may be imported already
                from swarmlearning.merge import kernels_numba
            except ImportError as exc:
                _missing = str(exc)
                if required:
                    raise ImportError(f"{ENV}=numba but numba cannot be imported: {exc}") from exc
                return None
            _module = kernels_numba
    return _module


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """float16 and bfloat16 bit patterns -> float32 values (exact; 256 KiB each)."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    f16 = bits.view(np.float16).astype(np.float32)
    bf16 = (bits.astype(np.uint32) << 16).view(np.float32)
    return f16, bf16


@functools.cache
def _network(n: int) -> tuple[np.ndarray, np.ndarray]:
    from swarmlearning.merge.layers import sorting_network

    pairs = sorting_network(n)
    return (
        np.array([i for i, _ in pairs], dtype=np.int64),
        np.array([j for _, j in pairs], dtype=np.int64),
    )


def _inputs(rows: Sequence[torch.Tensor]) -> tuple[np.ndarray, int, int, list[torch.Tensor]]:
    """Data addresses, storage kind and size of the rows; the contiguous tensors to keep alive."""
    alive = [r if r.is_contiguous() else r.contiguous() for r in rows]
    addrs = np.array([t.data_ptr() for t in alive], dtype=np.int64)
    return addrs, _KINDS[rows[0].dtype], rows[0].numel(), alive


def _kernels() -> ModuleType:
    module = _load_module(required=True)
    assert module is not None
    return module


def _run(name: str, args: tuple[object, ...], n: int, block: int, values: int) -> None:
    """Run kernel ``name`` over all blocks: serially (``<name>_blocks``) for small tensors, else spread
    over numba's threads (``<name>_parallel``)."""
    k = _kernels()
    blocks = (n + block - 1) // block
    with _lock:
        if values < PARALLEL_MIN_VALUES or blocks < 2:
            getattr(k, f"{name}_blocks")(*args, 0, blocks)
        else:
            import numba

            chunks = min(blocks, _CHUNKS_PER_THREAD * numba.get_num_threads())
            getattr(k, f"{name}_parallel")(*args, blocks, chunks)


def order_statistic(
    rows: Sequence[torch.Tensor],
    weights: torch.Tensor,
    out: torch.Tensor,
    *,
    statistic: str,
    trim: tuple[int, int] | None = None,
    fraction: float = 0.0,
    tol: float = 1e-9,
) -> None:
    """out (flat; float32, float64 or int64: the work dtype) <- per coordinate statistic of the rows.

    statistic: ``median`` (interpolated weighted median), ``lower_median``, ``trimmed`` (weighted
    trimmed mean cutting ``fraction`` of the weight from each end). weights: normalised float64 (N,).
    trim: with equal weights, the (low, high) counts of sorted values the trimmed mean drops (and for
    ``median``: any value selects the equal-weight path); None takes the weighted rules. tol: the
    relative tolerance for cumulative weights against cut points (``layers.WEIGHT_TOL``).
    """
    k = _kernels()
    addrs, kind, n, alive = _inputs(rows)
    m = len(rows)
    w = weights.to(torch.float64).numpy()
    total = float(weights.sum())  # as the torch code sums it
    dst = out.numpy()
    pi, pj = _network(m)
    low, high = trim if trim is not None else (0, 0)
    if low < 0 or high < 0 or low + high >= m:
        raise ValueError(f"trim must leave at least one of the {m} values: got low={low}, high={high}")
    if statistic == "median":
        code = k.EQUAL_MEDIAN if trim is not None else k.WEIGHTED_MEDIAN
    elif statistic == "trimmed":
        code = k.EQUAL_TRIMMED if trim is not None else k.WEIGHTED_TRIMMED
    elif statistic == "lower_median":
        code = k.LOWER_MEDIAN
    else:
        raise ValueError(f"statistic must be median, lower_median or trimmed; got {statistic!r}")
    steps = np.maximum(np.arange(m + 1, dtype=np.float64), 1.0)
    t = (1.0 / steps).astype(dst.dtype)
    u = (dst.dtype.type(1) - t).astype(dst.dtype)
    per_value = dst.itemsize + (4 if code >= k.WEIGHTED_MEDIAN else 0)
    block = max(16, min(4096, _SORT_BYTES // (m * per_value)))
    cut = (fraction + tol) * total
    args = (addrs, kind, n, code, w, total, low, high, tol * total, cut, t, u, pi, pj, block, dst, *_tables())
    _run("sort", args, n, block, n * m)
    del alive


def weiszfeld_pass(
    rows: Sequence[torch.Tensor], coef: Sequence[float], keep: float, z: torch.Tensor
) -> tuple[float, float, np.ndarray]:
    """z (flat float64, updated in place) <- (1 - keep) * sum_i coef_i x_i + keep * z.

    Returns (||z_new - z||^2, ||z_new||^2, float64 (N,) squared distances ||x_i - z_new||^2) over this
    tensor; one read of every input.
    """
    addrs, kind, n, alive = _inputs(rows)
    block = max(64, min(1 << 14, _GEO_BYTES // (8 * len(rows))))
    partial = np.zeros(((n + block - 1) // block, 2 + len(rows)), dtype=np.float64)
    coefs = np.asarray(coef, dtype=np.float64)
    args = (addrs, kind, n, coefs, float(keep), block, z.numpy(), partial, *_tables())
    _run("weiszfeld", args, n, block, n * len(rows))
    del alive
    sums = partial.sum(axis=0)
    return float(sums[0]), float(sums[1]), sums[2:]


def pull_norm2(rows: Sequence[torch.Tensor], beta: Sequence[float], z: torch.Tensor) -> float:
    """||sum_i beta_i x_i - (sum_i beta_i) z||^2 over this tensor (z flat float64)."""
    addrs, kind, n, alive = _inputs(rows)
    coef = np.asarray(beta, dtype=np.float64)
    block = 1 << 14
    partial = np.zeros((n + block - 1) // block, dtype=np.float64)
    args = (addrs, kind, n, coef, float(coef.sum()), block, z.numpy(), partial, *_tables())
    _run("pull", args, n, block, n * len(rows))
    del alive
    return float(partial.sum())
