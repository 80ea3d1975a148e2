"""``make test``: every test, as parallel pytest sessions (the e2e tier mostly waits on pods and the kubelet,
the cluster tier on the API server, while the integration tier keeps the CPUs busy).

Each session has its own temporary directory and output, streamed with its name as a prefix; the
cluster and e2e tiers stay in one session each, so their control plane (and the machine's one real node)
start once. Exits non-zero when any session fails, after all of them ended; SIGTERM/SIGINT stop them
all (each runs its teardown).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = [
    "tests/integration/test_chaos.py",
    "tests/integration/test_survival.py",
    "tests/integration/test_netns.py",
    "tests/integration/test_etcd_faults.py",
]
SESSIONS = {
    "e2e": ["-m", "e2e"],
    "cluster": ["-m", "cluster"],
    "faults": ["-m", "integration", *FAULTS],
    "unit+integration": ["-m", "unit or integration", *(f"--ignore={f}" for f in FAULTS)],
}


def _stream(name: str, proc: subprocess.Popen[str], lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()


def main() -> int:
    pytest = str(Path(sys.executable).with_name("pytest"))
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen[str]] = {}
    threads = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="st-") as tmp:  # short: Unix socket paths live below it

        def stop(signum: int, _frame: object) -> None:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for name, args in SESSIONS.items():
            base = Path(tmp) / name[:4]
            cmd = [pytest, "-p", "no:cacheprovider", f"--basetemp={base}", *args]
            print(f">>> session {name}: {' '.join(cmd[1:])}", flush=True)
            procs[name] = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=dict(os.environ),
            )
            t = threading.Thread(target=_stream, args=(name, procs[name], lock), daemon=True)
            t.start()
            threads.append(t)
        codes = {name: p.wait() for name, p in procs.items()}
        for t in threads:
            t.join(timeout=10)
    took = time.monotonic() - started
    print(
        f">>> test sessions done in {took / 60:.1f} min: "
        + ", ".join(f"{n} exit {c}" for n, c in codes.items())
    )
    # pytest exit 5 = no tests collected: a tier that lost its tests is a failure too.
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
