"""Parts round and scaling: sync-round latency and model bytes per node of the real local runtime, in the
single-leader and the sharded merge mode, vs the lower bound of moving the busiest node's bytes over
loopback TLS (and, in part round, vs a real Flower deployment), measured in the same run.

Swarm: ``swarmlearning.local.runner.LocalSwarm`` (SN = etcd, N SL nodes with mTLS, N ML processes) runs
``bench/swarm_roundapp/train.py`` (torch, ``swarmlearning.pyt.SwarmCallback``) or, from
``RoundConfig.weights_only_from`` nodes on, ``train_weights.py`` (NumPy arrays through the framework-free
``SwarmCallbackBase`` over the same channel: 32 torch processes do not fit 2 cores): a model of P float32
values split over realistic layers, trivial training, one sync per batch, ``minPeers = maxPeers = N``.
The merge mode goes to the nodes as swarm.yaml ``swarm: {merge_mode}`` (train.py's ``--merge-mode`` ->
``SwarmCallback(mergeMode=...)``) and ``SWARM_MERGE_MODE``; for ``single`` only when the runtime has
merge modes (:func:`runtime_merge_modes`; without them sharded cells are skipped). Every site keeps its
own model archive (``shared_model_archive=False``) so merged models cross the peer links.

A round's latency is max over nodes of (merged model loaded) - max over nodes of (model handed to the SL
node): barrier, election, exchange, validation, merge, ledger commit and distribution. Bytes per node
per round: each ML process reads its SL node's ``swarm_sl_peer_bytes_{sent,received}_total`` after
each round once its sends settled (swarm_roundapp/roundclock.py: a leader still serves the merged model
when its own round ended) and the differences between rounds are that node's bytes; per round the max
and the mean over nodes, then the median over rounds.
Flower: SuperLink + N SuperNodes on loopback, ``flwr run`` of ``bench/flower/roundapp``, timed inside the
ServerApp. Bound: :func:`bench.limits.node_bytes` of the mode / one TLS stream's loopback bandwidth.
The first round (connections, imports, allocation) is excluded from the medians.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.envs import keep_logs
from bench.flower_deployment import run_flower_rounds
from bench.limits import (
    FLOAT32_BYTES,
    MERGE_MODES,
    Bandwidth,
    bound_seconds,
    measure_tls_loopback_bandwidth,
    node_bytes,
)
from bench.results import PartResult, Row, Value, log, num
from bench.shapes import human, layer_shapes

SWARM_APP = Path(__file__).resolve().parent / "swarm_roundapp"
METRICS_URLS_ENV = "BENCH_SL_METRICS_URLS"  # read by swarm_roundapp/roundclock.py
STARTUP_S_PER_NODE = 3.0
"""Predicted seconds per node to start an SL node and its ML process (imports, certificates) on 2 cores."""
SL_BASE_BYTES, SL_MODEL_COPIES = 250e6, 12.0
"""Predicted private memory of one SL node: torch and the runtime, plus copies of the model it holds
(input, chunks, merged, archive; measured about 700 MB at P = 10M)."""
ML_BASE_BYTES = {"torch": 250e6, "weights": 80e6}
ML_MODEL_COPIES = {"torch": 6.0, "weights": 4.0}
"""Predicted private memory of one ML process by kind (torch about 490 MB at P = 10M)."""
MEMORY_SHARE = 0.75
"""A cell may use at most this share of MemAvailable at its start (the machine is shared; no swap)."""
DEFAULT_X_BOUND = 30.0
"""Predicted round time / bound before a cell of the same mode was measured (observed: 4-25x)."""


@dataclass(frozen=True)
class RoundConfig:
    """Grid: ns peers x ps parameters x merge modes, ``rounds`` timed rounds each (first excluded).

    flower: also time a Flower deployment per (N, P). weights_only_from: N from which the ML processes
    are train_weights.py (no torch). cell_budget_s: a cell predicted to take longer (startup +
    rounds x bound x the last measured ratio of its mode) is skipped with a note; a started cell is
    stopped after 3x its prediction (at least 300 s). A cell whose predicted memory
    (:func:`predict_cell_bytes`) exceeds MEMORY_SHARE of MemAvailable at its start is skipped too.
    """

    ns: tuple[int, ...] = (4, 8)
    ps: tuple[int, ...] = (10**6, 10**7)
    rounds: int = 5
    flower: bool = True
    part: str = "round"
    modes: tuple[str, ...] = ("single",)
    weights_only_from: int = 32
    cell_budget_s: float = 900.0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MERGE_MODES]
        if bad or not self.modes:
            raise ValueError(
                f"modes must be a non-empty subset of {', '.join(MERGE_MODES)}; got {self.modes}"
            )
        if self.rounds < 2:
            raise ValueError(f"rounds must be >= 2 (the first is warm-up); got {self.rounds}")
        if any(n < 2 for n in self.ns):
            raise ValueError(f"ns must all be >= 2 (a round needs peers); got {self.ns}")


@dataclass(frozen=True)
class SwarmRun:
    """One local swarm run: per-round latencies (s) and byte stats (:func:`round_bytes_stats`)."""

    latencies: list[float]
    bytes: list[dict[str, float]]
    whole_s: float


def round_latencies(per_node: Sequence[Sequence[dict[str, Any]]]) -> list[float]:
    """Per round: max end - max start over the nodes (each node's list: {"round","start","end"} in
    round order). Rounds missing at some node and the counters-only line (round -1) are dropped."""
    if not per_node:
        return []
    by_round: dict[int, list[dict[str, Any]]] = {}
    for node in per_node:
        for rec in node:
            if int(rec["round"]) >= 0:
                by_round.setdefault(int(rec["round"]), []).append(rec)
    out = []
    for r in sorted(by_round):
        recs = by_round[r]
        if len(recs) == len(per_node):
            out.append(max(x["end"] for x in recs) - max(x["start"] for x in recs))
    return out


def round_bytes_stats(per_node: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, float]]:
    """Per round >= 0, from each node's cumulative ``sent``/``received`` counters (bytes) and ``cpu``
    (its SL process's CPU seconds) after each round (and after the initial sync, round -1): ``in_max``,
    ``in_mean``, ``out_max``, ``out_mean`` over nodes of that round's difference, ``total_max`` (max over
    nodes of in + out) and, when every node has ``cpu``, ``cpu_max`` and ``cpu_sum`` over nodes. Rounds
    where some node lacks a byte counter or its previous round are dropped."""
    diffs: dict[int, list[tuple[float, float, float | None]]] = {}
    for node in per_node:
        prev: dict[str, Any] | None = None
        for rec in sorted(node, key=lambda x: int(x["round"])):
            ok = rec.get("sent") is not None and rec.get("received") is not None
            if prev is not None and ok and int(rec["round"]) == int(prev["round"]) + 1:
                has_cpu = rec.get("cpu") is not None and prev.get("cpu") is not None
                diffs.setdefault(int(rec["round"]), []).append(
                    (
                        float(rec["received"]) - float(prev["received"]),
                        float(rec["sent"]) - float(prev["sent"]),
                        float(rec["cpu"]) - float(prev["cpu"]) if has_cpu else None,
                    )
                )
            prev = rec if ok else None
    out = []
    for r in sorted(diffs):
        triples = diffs[r]
        if r < 0 or len(triples) != len(per_node):
            continue
        ins, outs = [a for a, _, _ in triples], [b for _, b, _ in triples]
        cpus = [c for _, _, c in triples if c is not None]
        stats = {
            "round": float(r),
            "in_max": max(ins),
            "in_mean": statistics.fmean(ins),
            "out_max": max(outs),
            "out_mean": statistics.fmean(outs),
            "total_max": max(a + b for a, b, _ in triples),
        }
        if len(cpus) == len(triples):
            stats |= {"cpu_max": max(cpus), "cpu_sum": sum(cpus)}
        out.append(stats)
    return out


def steady(values: Sequence[float]) -> float | None:
    """Median without the first (warm-up) value; None when there is nothing after it."""
    rest = list(values[1:])
    return statistics.median(rest) if rest else None


def predict_cell_s(n: int, bound_s: float, rounds: int, x_bound: float) -> float:
    """Seconds a cell should take: startup of n node pairs plus the initial sync and ``rounds`` rounds
    at ``x_bound`` times the bound ``bound_s``."""
    return STARTUP_S_PER_NODE * n + (rounds + 1) * bound_s * x_bound


def predict_cell_bytes(mode: str, n: int, p: int, ml: str) -> float:
    """Memory (bytes) a cell should need: n SL nodes and n ML processes of kind ``ml`` (torch | weights)
    holding copies of the P * 4-byte model; a single leader also holds the other n - 1 inputs twice."""
    model = p * FLOAT32_BYTES
    per_node = SL_BASE_BYTES + SL_MODEL_COPIES * model + ML_BASE_BYTES[ml] + ML_MODEL_COPIES[ml] * model
    leader = {"single": 2, "secagg": 6}.get(mode, 0) * (n - 1) * model  # masked inputs: 8 bytes a value
    return n * per_node + leader


def available_memory_bytes() -> float:
    """MemAvailable of /proc/meminfo in bytes (what can be used without swapping)."""
    with open("/proc/meminfo") as f:
        return next(int(x.split()[1]) * 1024.0 for x in f if x.startswith("MemAvailable:"))


def runtime_merge_modes() -> bool:
    """Whether this runtime's SwarmCallback takes ``mergeMode`` (else it would ignore it and run single)."""
    from swarmlearning.client.params import SwarmParams

    return "mergeMode" in {f.name for f in dataclasses.fields(SwarmParams)}


def swarm_rounds(
    n: int,
    shapes: Sequence[tuple[int, ...]],
    rounds: int,
    work: Path,
    mode: str,
    weights_only: bool,
    timeout_s: float,
) -> SwarmRun:
    """Run the real local runtime with ``n`` nodes for ``rounds`` syncs in merge ``mode``."""
    from swarmlearning.local.config import MAX_NODES, load_config
    from swarmlearning.local.runner import LocalSwarm

    example = work / f"swarm-{mode}-{n}-{time.monotonic_ns()}"
    shutil.copytree(SWARM_APP, example)
    raw = yaml.safe_load((example / "swarm.yaml").read_text())
    raw["train"]["rounds"] = rounds
    raw["train"]["shapes"] = json.dumps([list(s) for s in shapes], separators=(",", ":"))
    raw["swarm"]["min_peers"] = raw["swarm"]["max_peers"] = n
    # The mode always when the runtime has merge modes (its default, auto, shards from 4 peers); a
    # runtime without them would warn about an unknown parameter and run single anyway.
    merge_mode = "single" if mode == "secagg" else mode
    pass_mode = merge_mode != "single" or runtime_merge_modes()
    if pass_mode:
        raw["swarm"]["merge_mode"] = merge_mode
    if mode == "secagg":
        raw["swarm"]["secure_aggregation"] = True
    raw["timeout_seconds"] = int(max(60.0, timeout_s))
    (example / "swarm.yaml").write_text(yaml.safe_dump(raw))
    # swarm.yaml allows up to MAX_NODES (16) nodes; the runner itself has no limit, and this benchmark
    # needs 32: load with the limit, then set the count.
    config = dataclasses.replace(load_config(example, nodes=min(n, MAX_NODES)), nodes=n)
    run_dir = example / "run"
    env = {METRICS_URLS_ENV: str((run_dir / "sl-metrics.json").resolve())}
    if pass_mode:
        env["SWARM_MERGE_MODE"] = merge_mode
    names = config.node_names()
    # One model archive per site, as separate organisations have: with the run's shared archive a
    # non-leader would read the merged model from disk instead of downloading it from the leader.
    swarm = LocalSwarm(
        config,
        run_dir,
        shared_model_archive=False,
        node_env={name: env for name in names},
        ml_command={name: [sys.executable, str(example / "train_weights.py")] for name in names}
        if weights_only
        else {},
    )
    try:
        return _run_swarm(swarm, run_dir, timeout_s)
    except Exception:
        keep_logs(run_dir / "logs", f"{mode}-{n}-{sum(_count(s) for s in shapes)}")
        raise


def _count(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _run_swarm(swarm: Any, run_dir: Path, timeout_s: float) -> SwarmRun:
    t0 = time.perf_counter()
    with swarm:
        swarm.prepare()
        # start_all's steps, with a wait for the SL nodes that grows with N (each imports torch).
        swarm.start_sn()
        for name in swarm.nodes:
            swarm.start_sl(name)
        swarm.wait_sl_ready(list(swarm.nodes), timeout=60.0 + 10.0 * len(swarm.nodes))
        for name in swarm.nodes:
            swarm.start_ml(name)
        codes = swarm.wait_ml(timeout=timeout_s, fail_fast=True)
        failed = {k: c for k, c in codes.items() if c != 0}
        if failed:
            name = sorted(failed)[0]
            log_tail = (run_dir / "logs" / f"{name}-ml.log").read_text(errors="replace").splitlines()[-8:]
            raise RuntimeError(f"swarm ML process {name} exited {failed[name]}: " + " | ".join(log_tail))
        per_node = []
        for node in swarm.nodes.values():
            lines = (node.out_dir / "round-times.jsonl").read_text().splitlines()
            per_node.append([json.loads(x) for x in lines if x.strip()])
    return SwarmRun(round_latencies(per_node), round_bytes_stats(per_node), time.perf_counter() - t0)


def run(config: RoundConfig) -> PartResult:
    tls = measure_tls_loopback_bandwidth()
    log(f"{config.part}: TLS loopback bandwidth {tls.bytes_per_second / 1e6:.0f} MB/s ({tls.how})")
    has_modes = runtime_merge_modes()
    baselines: dict[str, Value] = {
        "TLS loopback MB/s": tls.bytes_per_second / 1e6,
        "TLS how": tls.how,
        "rounds per cell": config.rounds,
        "ML processes": f"torch below N={config.weights_only_from}, weights-only (NumPy) from it",
        "runtime has mergeMode": "yes" if has_modes else "no (sharded cells skipped)",
    }
    rows: list[Row] = []
    x_seen: dict[str, float] = {}  # latest measured round time / bound per mode, to predict bigger cells
    with tempfile.TemporaryDirectory(prefix=f"bench-{config.part}-") as tmp:
        for p in config.ps:
            shapes = layer_shapes(p)
            for mode in config.modes:
                for n in config.ns:
                    row = _cell(n, p, mode, shapes, tls, config, Path(tmp), has_modes, x_seen)
                    xb = row.metrics.get("swarm_x_bound")
                    if isinstance(xb, float):
                        x_seen[mode] = xb
                    rows.append(row)
    return PartResult(
        config.part,
        tuple(rows),
        baselines,
        summary=tuple(summary(rows)),
        headline=tuple(headline(rows)) if config.part == "scaling" else (),
    )


def _cell(
    n: int,
    p: int,
    mode: str,
    shapes: list[tuple[int, ...]],
    tls: Bandwidth,
    config: RoundConfig,
    work: Path,
    has_modes: bool,
    x_seen: dict[str, float],
) -> Row:
    nbytes = node_bytes(mode, n, p)
    bound = bound_seconds(nbytes, tls)
    weights_only = n >= config.weights_only_from
    params: dict[str, Value] = {
        "mode": mode,
        "N": n,
        "P": human(p),
        "ml": "weights" if weights_only else "torch",
    }
    metrics: dict[str, Value] = {
        "swarm_s": None,
        "bound_s": bound,
        "swarm_x_bound": None,
        "node_max_MB": None,
        "node_bound_MB": nbytes / 1e6,
        "node_x_model": None,
        "in_max_MB": None,
        "in_mean_MB": None,
        "out_max_MB": None,
        "out_mean_MB": None,
    }
    if config.flower:
        metrics |= {"flower_s": None, "flower_x_bound": None, "swarm_x_flower": None}
    case = f"{mode} N={n} P={human(p)}"
    notes: list[str] = []
    predicted = predict_cell_s(n, bound, config.rounds, x_seen.get(mode, DEFAULT_X_BOUND))
    if mode != "single" and not has_modes:
        notes.append("skipped: this runtime has no mergeMode (SwarmParams); it would run single")
        log(f"{config.part}: {case} skipped (runtime has no mergeMode)")
    elif (need := predict_cell_bytes(mode, n, p, str(params["ml"]))) > MEMORY_SHARE * (
        free := available_memory_bytes()
    ):
        notes.append(
            f"skipped: predicted memory {need / 2**30:.1f} GiB > {MEMORY_SHARE:.0%} of available "
            f"{free / 2**30:.1f} GiB"
        )
        log(
            f"{config.part}: {case} skipped (memory: ~{need / 2**30:.1f} GiB needed, {free / 2**30:.1f} free)"
        )
    elif predicted > config.cell_budget_s:
        notes.append(f"skipped: predicted {predicted:.0f} s > budget {config.cell_budget_s:.0f} s")
        log(f"{config.part}: {case} skipped (predicted {predicted:.0f} s)")
    else:
        _measure_swarm(n, p, mode, shapes, bound, config, work, weights_only, predicted, metrics, notes)
    if config.flower and mode == "single":
        _measure_flower(n, p, shapes, bound, config, metrics, notes)
    if metrics.get("swarm_s") is not None and metrics.get("flower_s") is not None:
        metrics["swarm_x_flower"] = num(metrics["swarm_s"]) / num(metrics["flower_s"])
    return Row(config.part, case, params, metrics, "; ".join(notes))


def _measure_swarm(
    n: int,
    p: int,
    mode: str,
    shapes: list[tuple[int, ...]],
    bound: float,
    config: RoundConfig,
    work: Path,
    weights_only: bool,
    predicted: float,
    metrics: dict[str, Value],
    notes: list[str],
) -> None:
    case = f"{mode} N={n} P={human(p)}"
    try:
        res = swarm_rounds(n, shapes, config.rounds, work, mode, weights_only, max(300.0, 3 * predicted))
    except Exception as exc:  # reported in the table; the other cells still run
        notes.append(f"swarm failed: {str(exc).splitlines()[0][:200]}")
        log(f"{config.part}: swarm {case} failed: {exc}")
        return
    s = steady(res.latencies)
    metrics["swarm_s"] = s
    if s is not None:
        metrics["swarm_x_bound"] = s / bound
    for key, col in (("total_max", "node_max_MB"), ("in_max", "in_max_MB"), ("in_mean", "in_mean_MB")):
        v = steady([b[key] for b in res.bytes])
        metrics[col] = None if v is None else v / 1e6
    for key, col in (("out_max", "out_max_MB"), ("out_mean", "out_mean_MB")):
        v = steady([b[key] for b in res.bytes])
        metrics[col] = None if v is None else v / 1e6
    if metrics["node_max_MB"] is not None:
        metrics["node_x_model"] = num(metrics["node_max_MB"]) * 1e6 / (p * FLOAT32_BYTES)
    else:
        notes.append("no byte counters (SL /metrics not read)")
    # CPU seconds of the SL processes per round: the busiest node's, and all nodes' over this machine's
    # cores (every node runs here, so a round cannot be shorter than that).
    cpu_max = steady([b["cpu_max"] for b in res.bytes if "cpu_max" in b])
    cpu_sum = steady([b["cpu_sum"] for b in res.bytes if "cpu_sum" in b])
    if cpu_max is not None and cpu_sum is not None:
        metrics["sl_cpu_max_s"], metrics["sl_cpu_sum_s"] = cpu_max, cpu_sum
        metrics["sl_cpu_floor_s"] = cpu_sum / (os.cpu_count() or 1)
    rounds_txt = ", ".join(f"{x:.2f}" for x in res.latencies)
    notes.append(f"swarm rounds {rounds_txt} s, whole run {res.whole_s:.0f} s (predicted {predicted:.0f})")
    log(
        f"{config.part}: swarm {case}: rounds {rounds_txt} s; busiest node "
        f"{_mb(metrics['node_max_MB'])} MB/round (bound {node_bytes(mode, n, p) / 1e6:.0f}); "
        + (
            f"SL CPU per round: busiest node {cpu_max:.2f} s, all nodes {cpu_sum:.2f} s; "
            if cpu_max is not None and cpu_sum is not None
            else ""
        )
        + f"whole run {res.whole_s:.0f} s"
    )


def _mb(v: Value) -> str:
    return "-" if v is None else f"{num(v):.1f}"


def _measure_flower(
    n: int,
    p: int,
    shapes: list[tuple[int, ...]],
    bound: float,
    config: RoundConfig,
    metrics: dict[str, Value],
    notes: list[str],
) -> None:
    try:
        fl = run_flower_rounds(n, shapes, config.rounds)
    except Exception as exc:
        notes.append(f"flower failed: {str(exc).splitlines()[0][:200]}")
        log(f"{config.part}: flower N={n} P={human(p)} failed: {exc}")
        return
    f = steady(fl.round_s)
    metrics["flower_s"] = f
    notes.append("Flower rounds " + ", ".join(f"{x:.2f}" for x in fl.round_s) + " s")
    if f is not None:
        metrics["flower_x_bound"] = f / bound
        notes.append(f"Flower aggregate {statistics.median(fl.aggregate_s) * 1e3:.0f} ms of its round")


def _get(rows: Sequence[Row], mode: str, n: int, p: str, key: str) -> float | None:
    for r in rows:
        if r.params.get("mode") == mode and r.params.get("N") == n and r.params.get("P") == p:
            v = r.metrics.get(key)
            return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
    return None


def summary(rows: Sequence[Row]) -> list[str]:
    """:func:`cell_lines` then :func:`headline`."""
    return cell_lines(rows) + headline(rows)


def cell_lines(rows: Sequence[Row]) -> list[str]:
    """Per measured cell: round time vs the bound, the busiest node's bytes, and Flower when timed."""
    out = []
    for r in rows:
        s, f, xb = r.metrics.get("swarm_s"), r.metrics.get("flower_s"), r.metrics.get("swarm_x_bound")
        if s is None:
            continue
        line = f"{r.case}: round {num(s):.2f} s = {num(xb):.1f}x the TLS loopback bound"
        mb = r.metrics.get("node_max_MB")
        if mb is not None:
            line += f", busiest node {num(mb):.1f} MB/round = {num(r.metrics['node_x_model']):.2f}x the model"
        floor = r.metrics.get("sl_cpu_floor_s")
        if floor is not None:
            line += (
                f"; SL CPU {num(r.metrics['sl_cpu_max_s']):.2f} s busiest node, "
                f"{num(r.metrics['sl_cpu_sum_s']):.2f} s all nodes = {num(floor):.2f} s on this machine's "
                "cores"
            )
        if f is not None:
            line += f", {num(s) / num(f):.2f}x Flower's {num(f):.2f} s (goal < 1)"
        out.append(line)
    return out


def headline(rows: Sequence[Row]) -> list[str]:
    """Per mode and P: the busiest node's bytes per round over N >= 4 (flat for sharded); at N = 16 and
    the largest P: sharded vs single round time; per mode at the largest P: round / TLS bound."""
    out = []
    ps = list(dict.fromkeys(str(r.params.get("P")) for r in rows))
    modes = list(dict.fromkeys(str(r.params.get("mode")) for r in rows))
    for p in ps:
        for mode in modes:
            pts = {
                int(str(r.params["N"])): float(num(r.metrics["node_max_MB"]))
                for r in rows
                if r.params.get("P") == p
                and r.params.get("mode") == mode
                and r.metrics.get("node_max_MB") is not None
            }
            big = {k: v for k, v in pts.items() if k >= 4}
            if len(big) >= 2:
                lo, hi = min(big.values()), max(big.values())
                goal = " (goal within 10%)" if mode == "sharded" else " (single: grows with N)"
                # What the data must move: sharded 4 (N-1)/N models, which itself grows 29% from 4 to 32.
                bounds = [node_bytes(mode, k, _params_of(p)) for k in (min(big), max(big))]
                out.append(
                    f"{mode} P={p}: busiest node {lo:.1f}-{hi:.1f} MB/round over N={min(big)}..{max(big)}, "
                    f"spread {100 * (hi - lo) / lo:.0f}%{goal}; the bytes that must move spread "
                    f"{100 * (bounds[1] - bounds[0]) / bounds[0]:.0f}%"
                )
        ratios = [
            (n, sh / si)
            for n in sorted({int(str(r.params["N"])) for r in rows if r.params.get("P") == p})
            if (sh := _get(rows, "sharded", n, p, "swarm_s"))
            and (si := _get(rows, "single", n, p, "swarm_s"))
        ]
        if ratios:
            txt = ", ".join(f"N={n} {x:.2f}x" for n, x in ratios)
            out.append(f"P={p}: sharded round time / single's: {txt}")
    if ps:
        big_p = max(ps, key=_params_of)
        sh, si = _get(rows, "sharded", 16, big_p, "swarm_s"), _get(rows, "single", 16, big_p, "swarm_s")
        if sh is not None and si is not None:
            out.append(
                f"N=16 P={big_p}: sharded {sh:.2f} s vs single {si:.2f} s: {si / sh:.2f}x faster (goal >= 2x)"
            )
        for mode in modes:
            xs = [
                (int(str(r.params["N"])), num(r.metrics["swarm_x_bound"]))
                for r in rows
                if r.params.get("P") == big_p
                and r.params.get("mode") == mode
                and r.metrics.get("swarm_x_bound") is not None
            ]
            if xs:
                txt = ", ".join(f"N={k} {v:.1f}x" for k, v in xs)
                out.append(f"{mode} P={big_p}: round / TLS loopback bound {txt} (goal <= 2x at P=10M)")
    return out


def _params_of(p: str) -> int:
    """'10M' -> 10**7 (inverse of bench.shapes.human, for ordering)."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if p.endswith(unit):
            return int(p[:-1]) * scale
    return int(p) if p.isdigit() else 0
