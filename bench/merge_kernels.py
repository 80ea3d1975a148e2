"""Part 1: merge kernels. This project's merge engine vs Flower's aggregation functions vs plain NumPy,
and vs the memory-bandwidth lower bound, for N peers x P float32 parameters split over realistic layers.

Lower bound: (N + 1) * P * 4 bytes (read every input once, write the result once) divided by the best
copy bandwidth measured just before (bytes read + written per second). Geomedian needs several passes by
nature; its row also gives the time and the bound per pass (iterations + 1 passes: the start point and
each update).

Rows per cell: ``swarm merge`` is the compiled kernels (SWARM_MERGE_KERNELS=numba), ``swarm torch code``
the pure-torch fallback (=torch) on the same inputs, as a baseline measured in the same run. Peers have
unequal weights (their sample counts); coordmedian and trimmedmean also run with equal weights (Flower's
median and trimmed mean ignore weights). The baselines also give numba's first-merge cost in a fresh
process, with an empty and with a warm on-disk cache.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.envs import run_worker_lines
from bench.limits import Bandwidth, bound_seconds, copy_size_for, measure_copy_bandwidth, merge_bytes
from bench.results import PartResult, Row, Value, log, num
from bench.shapes import human, layer_shapes

METHODS = ("mean", "coordmedian", "geomedian", "trimmedmean")
# Flower's counterpart of each method (geomedian has none in Flower).
FLOWER_OF = {"mean": "mean", "coordmedian": "median", "trimmedmean": "trimmed"}
FLOWER_LABEL = {
    "mean": "flower aggregate()",
    "median": "flower aggregate_median()",
    "trimmed": "flower aggregate_trimmed_avg()",
    "arrayrecords": "flower aggregate_arrayrecords()",
}
KERNELS = "swarm merge"
TORCH_CODE = "swarm torch code"
IMPL_ENV = {KERNELS: "numba", TORCH_CODE: "torch"}
# (method, weighting) cells of this project's merge; equal weights only where the path differs.
SWARM_CELLS = (
    ("mean", "unequal"),
    ("coordmedian", "unequal"),
    ("coordmedian", "equal"),
    ("geomedian", "unequal"),
    ("trimmedmean", "unequal"),
    ("trimmedmean", "equal"),
)
GOALS = {"mean": 1.5, "coordmedian": 5.0, "trimmedmean": 5.0, "geomedian": 2.0}
# 0.25 so Flower's unweighted int(0.25 * N) cut is non-zero for every N in the grid (1, 2, 4 per end).
TRIM = 0.25
WORKER = Path(__file__).resolve().parent / "flower" / "aggregate_worker.py"


@dataclass(frozen=True)
class MergeConfig:
    """Grid and limits: ns peers, ps parameters, cells predicted above budget_s seconds are skipped."""

    ns: tuple[int, ...] = (4, 8, 16)
    ps: tuple[int, ...] = (10**6, 10**7, 10**8)
    budget_s: float = 60.0
    mem_fraction: float = 0.75


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


def peer_weights(n: int) -> list[int]:
    """Sample counts of the peers (unequal, so weighting matters): 1000, 1100, 1200, ..."""
    return [1000 + 100 * i for i in range(n)]


def synthetic_models(
    n: int, shapes: Sequence[tuple[int, ...]], seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """n float32 state_dicts close to a common point (base + 1 % noise), as peers' models are."""
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen) for s in shapes]
    return [
        {f"layer{j}": b + 0.01 * torch.randn(b.shape, generator=gen) for j, b in enumerate(base)}
        for _ in range(n)
    ]


def best_time(
    fn: Callable[[], object], min_total_s: float = 2.0, max_repeats: int = 3
) -> tuple[float, object]:
    """Best of up to ``max_repeats`` runs; stops repeating once ``min_total_s`` has been spent."""
    best, spent, out = float("inf"), 0.0, None
    for _ in range(max_repeats):
        t0 = time.perf_counter()
        out = fn()
        t = time.perf_counter() - t0
        best, spent = min(best, t), spent + t
        if spent >= min_total_s:
            break
    return best, out


def numpy_weighted_mean(
    layers_per_model: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """Plain NumPy weighted mean in float32, one accumulator and one scratch buffer per layer."""
    total = float(sum(weights))
    out = []
    for layer in zip(*layers_per_model, strict=True):
        acc = np.multiply(layer[0], np.float32(weights[0] / total))
        tmp = np.empty_like(acc)
        for x, w in zip(layer[1:], weights[1:], strict=True):
            np.multiply(x, np.float32(w / total), out=tmp)
            acc += tmp
        out.append(acc)
    return out


def numpy_median(layers_per_model: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    return [np.median(np.stack(layer), axis=0) for layer in zip(*layers_per_model, strict=True)]


def run(config: MergeConfig) -> PartResult:
    from swarmlearning.merge import merge

    rows: list[Row] = []
    baselines: dict[str, float | int | str | None] = {}
    per_elem: dict[str, float] = {}  # worst seconds per (peer x parameter) seen, to predict bigger cells
    for p in config.ps:
        shapes = layer_shapes(p)
        largest = max(int(np.prod(s)) for s in shapes)
        log(f"merge: P={human(p)} in {len(shapes)} tensors")

        def need(n: int, p: int = p, largest: int = largest) -> float:
            # inputs + float64 geomedian estimate + output + numpy median's stacked layer and its copy
            return n * p * 4 + p * 8 + p * 4 + 2 * n * largest * 4 + (256 << 20)

        avail = config.mem_fraction * available_bytes()
        ns = [n for n in config.ns if need(n) <= avail]
        for n in config.ns:
            if n not in ns:
                rows.append(
                    _skip_row(n, p, f"needs {need(n) / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB usable")
                )
        if not ns:
            continue
        cell_rows, bws = _swarm_and_numpy(merge, p, shapes, ns, per_elem, baselines, config)
        rows += cell_rows
        gc.collect()  # the models died with _swarm_and_numpy: the Flower worker needs the memory
        rows += _flower_rows(p, shapes, ns, bws, config)
    _add_flower_ratios(rows)
    baselines.update(jit_costs())
    return PartResult("merge", tuple(rows), baselines, summary=tuple(_summary(rows)))


def _swarm_and_numpy(
    merge: Callable[..., object],
    p: int,
    shapes: list[tuple[int, ...]],
    ns: list[int],
    per_elem: dict[str, float],
    baselines: dict[str, Value],
    config: MergeConfig,
) -> tuple[list[Row], dict[int, Bandwidth]]:
    """Time this project's merge and the NumPy baselines for every N at one P; per-N copy bandwidths.

    A function of its own so that the models (up to 6.4 GB) are freed when it returns."""
    rows: list[Row] = []
    t0 = time.perf_counter()
    models = synthetic_models(max(ns), shapes)
    log(f"merge: {max(ns)} models of P={human(p)} generated in {time.perf_counter() - t0:.1f} s")
    as_numpy = [[t.numpy() for t in m.values()] for m in models]
    _warm_up(merge)
    bws: dict[int, Bandwidth] = {}
    for n in ns:
        sub, w = models[:n], peer_weights(n)
        # Re-measured per cell (noisy machines), with the cell's footprint (small ones run in cache).
        bw = bws[n] = measure_copy_bandwidth(copy_size_for(merge_bytes(n, p)))
        baselines[f"copy GB/s N={n} P={human(p)}"] = bw.bytes_per_second / 1e9
        bound = bound_seconds(merge_bytes(n, p), bw)
        log(
            f"merge: N={n} P={human(p)}: copy bandwidth {bw.bytes_per_second / 1e9:.1f} GB/s "
            f"({bw.how}), bound {bound * 1e3:.2f} ms"
        )
        for (method, weighting), impl in [(cell, impl) for cell in SWARM_CELLS for impl in IMPL_ENV]:
            weights = [1.0] * n if weighting == "equal" else [float(x) for x in w]
            rows.append(_swarm_row(merge, impl, method, weighting, sub, weights, p, bound, per_elem, config))
        layers = as_numpy[:n]
        for label, fn in (
            ("numpy weighted mean", lambda layers=layers, w=w: numpy_weighted_mean(layers, w)),
            ("numpy median", lambda layers=layers: numpy_median(layers)),
        ):
            method = "mean" if "mean" in label else "coordmedian"
            seconds, _ = best_time(fn)
            rows.append(
                Row(
                    "merge",
                    f"{label} N={n} P={human(p)}",
                    {"method": method, "impl": label, "N": n, "P": human(p)},
                    {"seconds": seconds, "bound_s": bound, "x_bound": seconds / bound},
                )
            )
            log(f"merge: {label} N={n} P={human(p)}: {seconds:.3f} s")
    return rows, bws


def _swarm_row(
    merge: Callable[..., object],
    impl: str,
    method: str,
    weighting: str,
    models: list[dict[str, torch.Tensor]],
    weights: list[float],
    p: int,
    bound: float,
    per_elem: dict[str, float],
    config: MergeConfig,
) -> Row:
    """Time one merge of this project with the kernels or the torch code (``impl``)."""
    n = len(models)
    label = method if weighting == "unequal" else f"{method} equal-weights"
    case = f"{label} N={n} P={human(p)}" if impl == KERNELS else f"torch code {label} N={n} P={human(p)}"
    base: dict[str, Value] = {"method": method, "impl": impl, "weights": weighting, "N": n, "P": human(p)}
    key = f"{impl} {method}"
    predicted = per_elem.get(key, 0.0) * n * p
    if predicted > config.budget_s:
        why = f"skipped: predicted {predicted:.0f} s > budget {config.budget_s:.0f} s"
        return Row("merge", case, base, {"bound_s": bound}, why)

    def call() -> object:
        return merge(method, models, weights, trim_fraction=TRIM)

    old = os.environ.get("SWARM_MERGE_KERNELS")
    os.environ["SWARM_MERGE_KERNELS"] = IMPL_ENV[impl]
    try:
        seconds, result = best_time(call)
    finally:
        if old is None:
            os.environ.pop("SWARM_MERGE_KERNELS", None)
        else:
            os.environ["SWARM_MERGE_KERNELS"] = old
    per_elem[key] = max(per_elem.get(key, 0.0), seconds / (n * p))
    metrics: dict[str, Value] = {"seconds": seconds, "bound_s": bound, "x_bound": seconds / bound}
    if method == "geomedian":
        passes = getattr(result, "iterations", 0) + 1
        metrics["iterations"] = passes - 1
        metrics["s_per_pass"] = seconds / passes
        metrics["x_bound_per_pass"] = seconds / (bound * passes)
    log(f"merge: {case} ({impl}): {seconds:.3f} s = {seconds / bound:.2f}x bound")
    return Row("merge", case, base, metrics)


def jit_costs() -> dict[str, Value]:
    """Seconds of a fresh process's first merges (import of numba, loading or compiling the kernels, and
    the merges: all four methods on 4 float32 models of 4 Mi values) with an empty on-disk cache, then
    with the cache it filled, and the same merges once more in that process (the compute alone)."""
    script = (
        "import time, torch\n"
        "from swarmlearning.merge import merge\n"
        "g = torch.Generator().manual_seed(0)\n"
        "models = [{'w': torch.randn(1 << 22, generator=g)} for _ in range(4)]\n"
        "def once():\n"
        "    t = time.perf_counter()\n"
        "    for m in ('mean', 'coordmedian', 'trimmedmean', 'geomedian'):\n"
        "        merge(m, models, [1.0, 2.0, 3.0, 4.0])\n"
        "    return time.perf_counter() - t\n"
        "print(once(), once())\n"
    )
    out: dict[str, Value] = {}
    with tempfile.TemporaryDirectory(prefix="bench-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "SWARM_MERGE_KERNELS": "numba"}
        for label in ("empty cache", "warm cache"):
            done = subprocess.run(
                [sys.executable, "-c", script],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
            first, again = (float(x) for x in done.stdout.split())
            out[f"first 4 merges in a fresh process, {label} (s)"] = first
            out[f"same 4 merges again in that process, {label} (s)"] = again
            log(f"merge: numba first merges, {label}: {first:.2f} s (again: {again:.2f} s)")
    return out


def _skip_row(n: int, p: int, why: str) -> Row:
    return Row(
        "merge",
        f"N={n} P={human(p)}",
        {"method": "*", "impl": "*", "N": n, "P": human(p)},
        {},
        f"skipped: {why}",
    )


def _warm_up(merge: Callable[..., object]) -> None:
    """A small merge per method and path first, so lazy imports, torch's first-call setup and numba's
    compilation or cache load (serial and multithreaded kernels) are not timed."""
    small = synthetic_models(4, [(64, 16), (16,), (1 << 18,)])
    old = os.environ.get("SWARM_MERGE_KERNELS")
    try:
        for env in IMPL_ENV.values():
            os.environ["SWARM_MERGE_KERNELS"] = env
            for method in METHODS:
                for weights in ([1.0, 2.0, 3.0, 4.0], [1.0] * 4):
                    merge(method, small, weights, trim_fraction=TRIM)
    finally:
        if old is None:
            os.environ.pop("SWARM_MERGE_KERNELS", None)
        else:
            os.environ["SWARM_MERGE_KERNELS"] = old


def _flower_rows(
    p: int, shapes: list[tuple[int, ...]], ns: list[int], bws: dict[int, Bandwidth], config: MergeConfig
) -> list[Row]:
    request = {
        "shapes": [list(s) for s in shapes],
        "ns": ns,
        "weights": peer_weights(max(ns)),
        "methods": ["mean", "arrayrecords", "median", "trimmed"],
        "trim": TRIM,
        "repeats": 3,
        "budget_s": config.budget_s,
        "mem_fraction": config.mem_fraction,
    }
    rows: list[Row] = []
    log(f"merge: Flower aggregation in .venv-bench, P={human(p)}, N={ns}")
    worker_bw: float | None = None
    for msg in run_worker_lines(WORKER, request, timeout_s=max(600.0, 20 * config.budget_s)):
        if msg["kind"] == "bandwidth":
            worker_bw = msg["bytes_per_second"]
            continue
        n, fmethod = msg["n"], msg["method"]
        method = {"mean": "mean", "arrayrecords": "mean", "median": "coordmedian", "trimmed": "trimmedmean"}[
            fmethod
        ]
        bound = bound_seconds(merge_bytes(n, p), bws[n])
        params = {"method": method, "impl": FLOWER_LABEL[fmethod], "N": n, "P": human(p)}
        case = f"{FLOWER_LABEL[fmethod]} N={n} P={human(p)}"
        if "skipped" in msg:
            rows.append(Row("merge", case, params, {"bound_s": bound}, f"skipped: {msg['skipped']}"))
            continue
        s = float(msg["seconds"])
        note = f"worker's own 512 MiB copy: {worker_bw / 1e9:.1f} GB/s" if worker_bw else ""
        rows.append(Row("merge", case, params, {"seconds": s, "bound_s": bound, "x_bound": s / bound}, note))
    return rows


def _add_flower_ratios(rows: list[Row]) -> None:
    """Give each swarm row x_flower = swarm seconds / Flower's counterpart's seconds (< 1: faster)."""
    flower = {
        (r.params["method"], r.params["N"], r.params["P"]): r.metrics["seconds"]
        for r in rows
        if str(r.params.get("impl", "")).startswith("flower aggregate")
        and "arrayrecords" not in str(r.params["impl"])
        and r.metrics.get("seconds") is not None
    }
    numpy_ = {
        (r.params["method"], r.params["N"], r.params["P"]): r.metrics["seconds"]
        for r in rows
        if str(r.params.get("impl", "")).startswith("numpy") and r.metrics.get("seconds") is not None
    }
    torch_code = {
        (r.params["method"], r.params["weights"], r.params["N"], r.params["P"]): r.metrics["seconds"]
        for r in rows
        if r.params.get("impl") == TORCH_CODE and r.metrics.get("seconds") is not None
    }
    for i, r in enumerate(rows):
        if r.params.get("impl") not in (KERNELS, TORCH_CODE) or r.metrics.get("seconds") is None:
            continue
        key = (r.params["method"], r.params["N"], r.params["P"])
        metrics = dict(r.metrics)
        s = num(r.metrics["seconds"])
        f, npy = flower.get(key), numpy_.get(key)
        metrics["x_flower"] = s / num(f) if f else None
        metrics["x_numpy"] = s / num(npy) if npy else None
        if r.params["impl"] == KERNELS:
            t = torch_code.get((r.params["method"], r.params["weights"], r.params["N"], r.params["P"]))
            metrics["x_torch_code"] = s / num(t) if t else None
        rows[i] = Row(r.part, r.case, r.params, metrics, r.note)


def _summary(rows: Sequence[Row]) -> list[str]:
    """Per method and weighting: the kernels' range against the bound, Flower and the torch code."""
    out = []
    swarm = [r for r in rows if r.params.get("impl") == KERNELS and r.metrics.get("x_bound") is not None]
    for method, weighting in SWARM_CELLS:
        mine = [r for r in swarm if r.params["method"] == method and r.params["weights"] == weighting]
        if not mine:
            continue
        metric = "x_bound_per_pass" if method == "geomedian" else "x_bound"
        xb = [num(r.metrics[metric]) for r in mine]
        per = " per Weiszfeld pass" if method == "geomedian" else ""
        line = f"{method} ({weighting} weights): {min(xb):.2f}-{max(xb):.2f}x the bandwidth bound{per}"
        line += f" (goal <= {GOALS[method]:g}x)"
        xf = [num(r.metrics["x_flower"]) for r in mine if r.metrics.get("x_flower") is not None]
        if xf:
            goal = "goal <= 0.1" if method != "mean" else "goal < 1"
            line += f"; {min(xf):.3f}-{max(xf):.3f}x Flower's time ({goal})"
        xt = [num(r.metrics["x_torch_code"]) for r in mine if r.metrics.get("x_torch_code") is not None]
        if xt:
            line += f"; {min(xt):.3f}-{max(xt):.3f}x the torch code's time"
        out.append(line)
    return out
