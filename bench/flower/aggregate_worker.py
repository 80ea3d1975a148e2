"""Times Flower's aggregation functions on given shapes; runs in .venv-bench (NumPy + flwr only).

Input (stdin, JSON): {"shapes": [[...], ...], "ns": [4, 8, 16], "weights": [int, ...] (one per peer, the
largest N), "methods": ["mean", "median", "trimmed", "arrayrecords"], "trim": 0.25, "repeats": 3,
"budget_s": 300, "mem_fraction": 0.8}.
Output (stdout): one JSON object per line: {"kind": "bandwidth", ...} first, then {"kind": "cell",
"method", "n", "seconds" | "skipped"}; progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


def copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5) -> float:
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def best_time(fn: Any, repeats: int, min_total_s: float = 2.0) -> float:
    """Best of up to ``repeats`` runs; stops repeating once ``min_total_s`` has been spent."""
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        best, spent = min(best, t), spent + t
        if spent >= min_total_s:
            break
    return best


def main() -> int:
    cfg = json.load(sys.stdin)
    shapes = [tuple(s) for s in cfg["shapes"]]
    ns: list[int] = cfg["ns"]
    weights: list[int] = cfg["weights"]
    repeats: int = cfg["repeats"]
    budget: float = cfg["budget_s"]
    n_params = sum(int(np.prod(s)) for s in shapes)
    emit({"kind": "bandwidth", "bytes_per_second": copy_bandwidth(), "how": "numpy copy, 512 MiB, best of 5"})
    max_n = max(ns)
    # Flower's aggregate() materialises a weighted copy of every model: inputs x 2 plus the output.
    need = 2.2 * max_n * n_params * 4
    if need > cfg["mem_fraction"] * available_bytes():
        fitting = [n for n in ns if 2.2 * n * n_params * 4 <= cfg["mem_fraction"] * available_bytes()]
        max_n = max(fitting, default=0)
    rng = np.random.default_rng(1)
    base = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    models = [
        [
            b + np.float32(0.01) * rng.standard_normal(s, dtype=np.float32)
            for b, s in zip(base, shapes, strict=True)
        ]
        for _ in range(max_n)
    ]
    del base
    print(f"flower worker: {max_n} models of {n_params} params ready", file=sys.stderr, flush=True)
    per_elem: dict[str, float] = {}
    for n in ns:
        for method in cfg["methods"]:
            if n > max_n:
                emit({"kind": "cell", "method": method, "n": n, "skipped": "not enough memory"})
                continue
            predicted = per_elem.get(method, 0.0) * n * n_params
            if predicted > budget:
                emit(
                    {
                        "kind": "cell",
                        "method": method,
                        "n": n,
                        "skipped": f"predicted {predicted:.0f} s > budget {budget:.0f} s",
                    }
                )
                continue
            results = list(zip(models[:n], weights[:n], strict=True))
            seconds = time_method(method, results, n_params, repeats, cfg["trim"])
            if seconds is None:
                emit({"kind": "cell", "method": method, "n": n, "skipped": "not enough memory"})
                continue
            per_elem[method] = max(per_elem.get(method, 0.0), seconds / (n * n_params))
            emit({"kind": "cell", "method": method, "n": n, "seconds": seconds})
            print(f"flower worker: {method} N={n}: {seconds:.3f} s", file=sys.stderr, flush=True)
    return 0


def time_method(
    method: str, results: list[tuple[list[np.ndarray], int]], n_params: int, repeats: int, trim: float
) -> float | None:
    """Best time of one Flower aggregation over ``results``; None when it would not fit in memory."""
    if method == "mean":
        return best_time(lambda: aggregate(results), repeats)
    if method == "median":
        return best_time(lambda: aggregate_median(results), repeats)
    if method == "trimmed":
        return best_time(lambda: aggregate_trimmed_avg(results, trim), repeats)
    if method == "arrayrecords":
        return time_arrayrecords(results, n_params, repeats)
    raise ValueError(f"method must be one of mean, median, trimmed, arrayrecords; got {method!r}")


def time_arrayrecords(
    results: list[tuple[list[np.ndarray], int]], n_params: int, repeats: int
) -> float | None:
    """Flower's Message-API path: aggregate_arrayrecords over RecordDicts (deserialises every Array)."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    # Records hold serialised copies of the inputs; each deserialisation makes another transient copy.
    if 1.3 * len(results) * n_params * 4 > 0.8 * available_bytes():
        return None
    records = [
        RecordDict({"arrays": ArrayRecord(list(layers)), "metrics": MetricRecord({"num-examples": w})})
        for layers, w in results
    ]
    return best_time(lambda: aggregate_arrayrecords(records, "num-examples"), repeats)


if __name__ == "__main__":
    sys.exit(main())
