"""Parts 2 and 5: sync-round latency of the real local runtime vs a real Flower deployment vs the
lower bound of moving the round's bytes over loopback TLS, measured in the same run.

Swarm: ``swarmlearning.local.runner.LocalSwarm`` (SN = etcd, N SL nodes with mTLS, N ML processes)
runs ``bench/swarm_roundapp/train.py``: a model of P float32 values split over realistic layers,
trivial training, one sync per batch, ``minPeers = maxPeers = N``. A round's latency is
max over nodes of (merged model loaded) - max over nodes of (model handed to the SL node): barrier,
election, exchange, validation, merge, ledger commit and distribution, without waiting for stragglers.
Flower: SuperLink + N SuperNodes on loopback, ``flwr run`` of ``bench/flower/roundapp`` (send model,
trivial training, receive, ``aggregate_arrayrecords``), timed inside the ServerApp.
Bound: :func:`bench.limits.round_bytes` (2 (N-1) P 4 bytes) / one TLS stream's loopback bandwidth.
The first round (connections, imports, allocation) is excluded from the medians.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from bench.envs import keep_logs
from bench.flower_deployment import run_flower_rounds
from bench.limits import Bandwidth, bound_seconds, measure_tls_loopback_bandwidth, round_bytes
from bench.results import PartResult, Row, log, num
from bench.shapes import human, layer_shapes

SWARM_APP = Path(__file__).resolve().parent / "swarm_roundapp"


@dataclass(frozen=True)
class RoundConfig:
    """Grid: ns peers x ps parameters, ``rounds`` timed rounds each (first excluded); ``flower`` too."""

    ns: tuple[int, ...] = (4, 8)
    ps: tuple[int, ...] = (10**6, 10**7)
    rounds: int = 5
    flower: bool = True
    part: str = "round"


def round_latencies(per_node: Sequence[Sequence[dict[str, float]]]) -> list[float]:
    """Per round: max end - max start over the nodes (each node's list: {"round","start","end"} in
    round order). Rounds missing at some node are dropped."""
    if not per_node:
        return []
    by_round: dict[int, list[dict[str, float]]] = {}
    for node in per_node:
        for rec in node:
            by_round.setdefault(int(rec["round"]), []).append(rec)
    out = []
    for r in sorted(by_round):
        recs = by_round[r]
        if len(recs) == len(per_node):
            out.append(max(x["end"] for x in recs) - max(x["start"] for x in recs))
    return out


def steady(values: Sequence[float]) -> float | None:
    """Median without the first (warm-up) value; None when there is nothing after it."""
    rest = list(values[1:])
    return statistics.median(rest) if rest else None


def swarm_rounds(n: int, shapes: Sequence[tuple[int, ...]], rounds: int, work: Path) -> list[float]:
    """Run the real local runtime with ``n`` nodes for ``rounds`` syncs; per-round latencies (s)."""
    from swarmlearning.local.config import load_config
    from swarmlearning.local.runner import LocalSwarm

    example = work / f"swarm-{n}-{sum(1 for _ in shapes)}-{time.monotonic_ns()}"
    shutil.copytree(SWARM_APP, example)
    raw = yaml.safe_load((example / "swarm.yaml").read_text())
    raw["train"]["rounds"] = rounds
    raw["train"]["shapes"] = json.dumps([list(s) for s in shapes], separators=(",", ":"))
    raw["swarm"]["min_peers"] = raw["swarm"]["max_peers"] = n
    (example / "swarm.yaml").write_text(yaml.safe_dump(raw))
    config = replace(load_config(example, nodes=n))
    run_dir = example / "run"
    try:
        return _run_swarm(LocalSwarm, config, run_dir)
    except Exception:
        keep_logs(run_dir / "logs", f"rounds-{n}-{sum(math.prod(s) for s in shapes)}")
        raise


def _run_swarm(local_swarm: Any, config: Any, run_dir: Path) -> list[float]:
    with local_swarm(config, run_dir) as swarm:
        swarm.prepare()
        swarm.start_all()
        codes = swarm.wait_ml(timeout=config.timeout_seconds)
        failed = {k: c for k, c in codes.items() if c != 0}
        if failed:
            name = sorted(failed)[0]
            log_tail = (run_dir / "logs" / f"{name}-ml.log").read_text(errors="replace").splitlines()[-8:]
            raise RuntimeError(f"swarm ML process {name} exited {failed[name]}: " + " | ".join(log_tail))
        per_node = []
        for node in swarm.nodes.values():
            lines = (node.out_dir / "round-times.jsonl").read_text().splitlines()
            per_node.append([json.loads(x) for x in lines if x.strip()])
    return round_latencies(per_node)


def run(config: RoundConfig) -> PartResult:
    tls = measure_tls_loopback_bandwidth()
    log(f"{config.part}: TLS loopback bandwidth {tls.bytes_per_second / 1e6:.0f} MB/s ({tls.how})")
    baselines: dict[str, float | int | str | None] = {
        "TLS loopback MB/s": tls.bytes_per_second / 1e6,
        "TLS how": tls.how,
        "rounds per cell": config.rounds,
    }
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{config.part}-") as tmp:
        for p in config.ps:
            shapes = layer_shapes(p)
            for n in config.ns:
                rows.append(_cell(n, p, shapes, tls, config, Path(tmp)))
    return PartResult(config.part, tuple(rows), baselines, summary=tuple(_summary(rows)))


def _cell(
    n: int, p: int, shapes: list[tuple[int, ...]], tls: Bandwidth, config: RoundConfig, work: Path
) -> Row:
    nbytes = round_bytes(n, p)
    bound = bound_seconds(nbytes, tls)
    metrics: dict[str, float | int | str | None] = {
        "swarm_s": None,
        "flower_s": None,
        "bound_s": bound,
        "swarm_x_bound": None,
        "flower_x_bound": None,
        "swarm_x_flower": None,
        "MB_moved": nbytes / 1e6,
    }
    notes = []
    try:
        t0 = time.perf_counter()
        lat = swarm_rounds(n, shapes, config.rounds, work)
        s = steady(lat)
        metrics["swarm_s"] = s
        if s is not None:
            metrics["swarm_x_bound"] = s / bound
        notes.append("swarm rounds " + ", ".join(f"{x:.2f}" for x in lat) + " s")
        log(
            f"{config.part}: swarm N={n} P={human(p)}: rounds "
            + ", ".join(f"{x:.2f}" for x in lat)
            + f" s (whole run {time.perf_counter() - t0:.0f} s)"
        )
    except Exception as exc:  # reported in the table; the other cells still run
        notes.append(f"swarm failed: {str(exc).splitlines()[0][:200]}")
        log(f"{config.part}: swarm N={n} P={human(p)} failed: {exc}")
    if config.flower:
        try:
            fl = run_flower_rounds(n, shapes, config.rounds)
            f = steady(fl.round_s)
            metrics["flower_s"] = f
            notes.append("Flower rounds " + ", ".join(f"{x:.2f}" for x in fl.round_s) + " s")
            if f is not None:
                metrics["flower_x_bound"] = f / bound
                notes.append(
                    f"Flower aggregate {statistics.median(fl.aggregate_s) * 1e3:.0f} ms of its round"
                )
        except Exception as exc:
            notes.append(f"flower failed: {str(exc).splitlines()[0][:200]}")
            log(f"{config.part}: flower N={n} P={human(p)} failed: {exc}")
    if metrics["swarm_s"] is not None and metrics["flower_s"] is not None:
        metrics["swarm_x_flower"] = num(metrics["swarm_s"]) / num(metrics["flower_s"])
    return Row(config.part, f"N={n} P={human(p)}", {"N": n, "P": human(p)}, metrics, "; ".join(notes))


def _summary(rows: Sequence[Row]) -> list[str]:
    out = []
    for r in rows:
        s, f, xb = r.metrics.get("swarm_s"), r.metrics.get("flower_s"), r.metrics.get("swarm_x_bound")
        if s is None:
            continue
        line = f"{r.case}: swarm round {num(s):.2f} s = {num(xb):.1f}x the loopback bound"
        if f is not None:
            line += f", {num(s) / num(f):.2f}x Flower's {num(f):.2f} s (goal < 1)"
        out.append(line)
    return out
