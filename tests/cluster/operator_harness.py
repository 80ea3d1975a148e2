"""Running the operator for cluster tests: a real `swarm-operator` process against the test cluster.

`OperatorProcess` starts `python -m swarm_operator.main` in its own process group, watching one
namespace, with metrics and health on free loopback ports; `stop()` (SIGTERM, then SIGKILL after a
timeout) always runs in the fixture's teardown. `wait_for` is the one polling helper: every wait
has a timeout and says what it waited for, with the operator's last log lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from swarm_operator.kube import Kube

from tests.testbed import Cluster

T = TypeVar("T")

STOP_TIMEOUT = 15.0
"""Seconds to wait for the operator to exit after SIGTERM before SIGKILL."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """One operator process; `start`/`stop` may be called repeatedly (restart tests)."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, resync_seconds: float = 5.0) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_dir = log_dir
        self.resync_seconds = resync_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0
        self.health_port = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        assert self.proc is None, "operator already running"
        self.starts += 1
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "GRPC_VERBOSITY": "ERROR"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "swarm_operator.main",
                    "-n",
                    self.namespace,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--health-port",
                    str(self.health_port),
                    "--resync-seconds",
                    str(self.resync_seconds),
                    "--ledger-timeout-seconds",
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(lambda: self._healthy(), 60, "the operator's /healthz to answer", self)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


def wait_for(
    fn: Callable[[], T], timeout: float, what: str, op: OperatorProcess | None = None, interval: float = 0.3
) -> T:
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            tail = f"\n--- operator log ---\n{op.log_tail()}" if op is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){tail}")
        time.sleep(interval)


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """Events about object `name`, oldest first (by resourceVersion: timestamps have 1 s resolution;
    on an etcd-backed API server, creation order is resourceVersion order)."""
    out = kube.request("GET", f"/api/v1/namespaces/{namespace}/events", "list events")
    items = [e for e in out.get("items", []) if e["involvedObject"].get("name") == name]
    return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


# ------------------------------------------------------------------ fixtures (imported by test modules)


@pytest.fixture(name="kube")
def kube_fixture(cluster: Cluster) -> Iterator[Kube]:
    k = Kube.connect(str(cluster.kubeconfig))
    yield k
    k.close()


@pytest.fixture(name="operator")
def operator_fixture(
    cluster: Cluster, crds: tuple[str, ...], namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path)
    try:
        op.start()
        yield op
    finally:
        op.stop()
