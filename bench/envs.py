"""The Flower venv ``.venv-bench`` (flwr + NumPy only, never torch, never this project) and running its
scripts as subprocesses. Created idempotently: a stamp file records the requirement it was built for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.results import log

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".venv-bench"
# flwr 1.41/1.42 both run on these machines; the stamp makes a changed requirement rebuild the venv.
FLOWER_REQUIREMENTS = ("flwr>=1.41,<1.43", "numpy>=1.26")
STAMP = BENCH_VENV / ".bench-installed"


def bench_python() -> Path:
    return BENCH_VENV / "bin" / "python"


def ensure_bench_venv() -> Path:
    """Create/refresh .venv-bench when its stamp does not match FLOWER_REQUIREMENTS; return its python."""
    wanted = "\n".join(FLOWER_REQUIREMENTS)
    if STAMP.exists() and STAMP.read_text() == wanted and bench_python().exists():
        return bench_python()
    log(
        f"creating {BENCH_VENV} with {', '.join(FLOWER_REQUIREMENTS)} (once; Flower's pins stay out of .venv)"
    )
    if not bench_python().exists():
        venv.EnvBuilder(with_pip=True).create(BENCH_VENV)
    subprocess.run(
        [str(bench_python()), "-m", "pip", "install", "-q", *FLOWER_REQUIREMENTS],
        check=True,
        timeout=1800,
    )
    STAMP.write_text(wanted)
    return bench_python()


FAILURES = REPO / "bench" / "results" / "failures"


def keep_logs(logs: Path, name: str) -> None:
    """Copy a failed run's log folder to bench/results/failures/<name> (temporary folders vanish)."""
    if logs.is_dir():
        dest = FAILURES / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(logs, dest)
        log(f"logs of the failed run kept in {dest}")


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: the bench venv first on PATH, no telemetry, nothing of .venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{BENCH_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_worker_lines(script: Path, request: Mapping[str, Any], timeout_s: float) -> Iterator[dict[str, Any]]:
    """Run a .venv-bench script with ``request`` as JSON on stdin; yield each JSON line it prints.

    Its stderr (progress) is passed through. Raises RuntimeError naming the script on failure/timeout.
    """
    proc = subprocess.Popen(
        [str(ensure_bench_venv()), str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env=flower_env(),
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    import threading

    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.strip():
                yield json.loads(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        raise RuntimeError(
            f"{script.name} in {BENCH_VENV} failed with exit code {rc} (killed after {timeout_s:.0f} s?)"
        )
