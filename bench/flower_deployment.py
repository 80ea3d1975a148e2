"""A real Flower deployment on loopback for the round benchmarks: one SuperLink, N SuperNodes and
``flwr run`` of the hand-written app in ``bench/flower/roundapp`` (all from .venv-bench, --insecure,
telemetry off, a FLWR_HOME of its own in a temporary folder that is removed afterwards)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.envs import BENCH_VENV, ensure_bench_venv, flower_env
from bench.procs import free_port, process_group, tail, wait_for_port
from bench.results import log

APP = Path(__file__).resolve().parent / "flower" / "roundapp"


@dataclass(frozen=True)
class FlowerRounds:
    """Per-round seconds measured inside the ServerApp (send, train, receive, aggregate), plus the wall
    time from ``flwr run`` to its exit (includes app start-up and SuperNode polling)."""

    round_s: tuple[float, ...]
    exchange_s: tuple[float, ...]
    aggregate_s: tuple[float, ...]
    wall_s: float


def run_flower_rounds(
    n_nodes: int, shapes: Sequence[tuple[int, ...]], rounds: int, timeout_s: float = 900.0
) -> FlowerRounds:
    """Deploy Flower with ``n_nodes`` SuperNodes on loopback and time ``rounds`` FedAvg rounds."""
    ensure_bench_venv()
    bin_ = BENCH_VENV / "bin"
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp_s:
        tmp = Path(tmp_s)
        home = tmp / "flwr-home"
        home.mkdir()
        # flwr 1.42 serves its Control, Fleet and Runtime APIs over HTTP on one port.
        port = free_port()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n'
            f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        out = tmp / "result.json"
        overrides = tmp / "overrides.toml"
        shapes_json = json.dumps([list(s) for s in shapes], separators=(",", ":"))
        overrides.write_text(
            f"shapes = '{shapes_json}'\nrounds = {rounds}\nnodes = {n_nodes}\nout = '{out}'\n"
        )
        env = flower_env({"FLWR_HOME": str(home)})
        with process_group(tmp) as group:
            link = group.start(
                "superlink",
                [
                    str(bin_ / "flower-superlink"),
                    "--insecure",
                    "--disable-runtime-dependency-installation",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env,
                cwd=tmp,
            )
            wait_for_port(port, 60, "flower-superlink", link)
            for k in range(n_nodes):
                group.start(
                    f"supernode{k}",
                    [
                        str(bin_ / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{port}",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        f"partition-id={k}",
                    ],
                    env,
                    cwd=tmp,
                )
            t0 = time.perf_counter()
            try:
                with open(tmp / "flwr-run.log", "wb") as run_log:
                    subprocess.run(
                        [str(bin_ / "flwr"), "run", str(APP), "--stream", "--run-config", str(overrides)],
                        env=env,
                        cwd=tmp,
                        timeout=timeout_s,
                        check=True,
                        stdout=run_log,
                        stderr=subprocess.STDOUT,
                    )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                logs = f"--- flwr run:\n{tail(tmp / 'flwr-run.log')}\n"
                logs += f"--- superlink:\n{tail(tmp / 'superlink.log')}"
                raise RuntimeError(f"flwr run ({n_nodes} SuperNodes) failed: {exc}\n{logs}") from exc
            wall = time.perf_counter() - t0
            if not out.exists():
                raise RuntimeError(
                    f"Flower ServerApp wrote no result at {out}\n--- flwr run:\n{tail(tmp / 'flwr-run.log')}"
                    f"\n--- superlink:\n{tail(tmp / 'superlink.log')}"
                )
            data = json.loads(out.read_text())
    rs = data["rounds"]
    log(
        f"flower: {n_nodes} SuperNodes, {len(rs)} rounds: "
        + ", ".join(f"{r['seconds']:.2f}" for r in rs)
        + " s"
    )
    return FlowerRounds(
        tuple(r["seconds"] for r in rs),
        tuple(r["exchange_s"] for r in rs),
        tuple(r["aggregate_s"] for r in rs),
        wall,
    )
