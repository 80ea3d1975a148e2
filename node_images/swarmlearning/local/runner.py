"""Local swarm on loopback: one SN (etcd), N SL node processes and N ML processes (the example's train.py).

Layout of a run folder::

    pki/ca/, pki/<name>/        throwaway CA and certificates (root admin, sn-1, node-i)
    sn/                          etcd data
    data/test.npz                common held-out test set
    nodes/<node>/data/           the node's private train.npz and val.npz
    nodes/<node>/out/            model.safetensors (final merged), local-model.safetensors (own last)
    nodes/<node>/metrics.jsonl   what the node's SwarmCallback recorded
    models/<contract>/           the merged models the SL nodes keep (newest round): a node restarted
                                 after every other one exited still gets the final model from here
    logs/                        sn.log, <node>-sl.log, <node>-ml.log
    sl-metrics.json              {node: URL of its SL node's Prometheus /metrics} (a free port each)

Every child runs in its own process group; :meth:`LocalSwarm.close` (also on errors and Ctrl-C, through
the context manager) terminates each group, then kills what is left after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from swarmlearning import pki
from swarmlearning.local.config import RunConfig
from swarmlearning.local.datasets import Shard

log = logging.getLogger("swarmlearning.local")

ADMIN = "root"
SN_NAME = "sn-1"
ORG = "swarm-local"
STOP_GRACE_SECONDS = 5.0
SOCKET_WAIT_SECONDS = 60.0
"""How long an SL node may take to start serving its ML channel (imports torch, connects to the SN)."""


class RunError(RuntimeError):
    """The local run failed; the message names the process and quotes its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 12) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + t for t in text)


@dataclass
class Proc:
    """A child process in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the group, SIGKILL after ``grace`` seconds; always reaps and closes the log."""
        if self.running():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        # The group may hold children that outlived the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.log_file.close()

    def kill(self) -> None:
        """SIGKILL the whole group (crash simulation) and reap it."""
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self.log_file.close()


def spawn(name: str, cmd: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log_path, "ab")  # noqa: SIM115 - owned by Proc, closed in stop()/kill()
    popen = subprocess.Popen(
        cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
    )
    return Proc(name, popen, log_path, fh)


@dataclass
class Node:
    name: str
    folder: Path
    cert_dir: Path
    sl: Proc | None = None
    ml: Proc | None = None
    starts: int = 0
    data: Path | None = None
    """The node's data folder when it is not ``<folder>/data`` (a user's own, for ``--script``)."""
    metrics_url: str = ""
    """Its SL node's Prometheus ``/metrics`` URL (set when the SL node is started)."""

    @property
    def socket_path(self) -> Path:
        """``<node folder>/sl.sock``, or a short path under the temp dir when that one exceeds the
        108-byte limit of a Unix socket address (deep run folders)."""
        path = self.folder / "sl.sock"
        if len(str(path)) < 100:
            return path
        tag = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"swarm-sl-{tag}.sock"

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def out_dir(self) -> Path:
        return self.folder / "out"

    @property
    def data_dir(self) -> Path:
        return self.data if self.data is not None else self.folder / "data"


@dataclass
class LocalSwarm:
    """Start and supervise a local swarm; use as a context manager so everything is torn down.

    ``node_env``/``node_args``: per-node extra environment / train.py flag overrides (tests use them for
    shorter runs). ``ml_command``: per-node program replacing ``python <script>`` (tests run a
    misbehaving training program through it); the script's flags follow it.

    Subclasses place processes elsewhere (the chaos harness: network namespaces) by overriding
    :meth:`launch`, :meth:`start_sn`, :meth:`sl_listen` and :meth:`sl_advertise_host`.
    """

    config: RunConfig
    run_dir: Path
    node_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ml_command: Mapping[str, list[str]] = field(default_factory=dict)
    sl_linger_seconds: float = 30.0
    """Upper bound of an SL node serving the final model after its ML process finished; it exits as
    soon as every participant recorded having the model, so this only matters on slow machines."""
    shared_model_archive: bool = True
    """One merged-model folder for the whole run (as storage the sites share); False: one per site, as
    separate organisations have, so a site missing a model must download it from a peer."""
    console: bool = False
    """Also serve the swarm console (local/console.py) from when the SN is up until the run ends."""
    local_console: Any = None
    """The running console (a LocalConsole) once started."""
    nodes: dict[str, Node] = field(default_factory=dict)
    sn: Any = None
    sn_endpoints: list[str] = field(default_factory=list)
    n_classes: int = 0

    def __post_init__(self) -> None:
        # Children run with other working directories (ML: the example folder): paths must be absolute.
        self.run_dir = self.run_dir.resolve()

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ca_dir(self) -> Path:
        return self.run_dir / "pki" / "ca"

    @property
    def admin_cert_dir(self) -> Path:
        return self.run_dir / "pki" / ADMIN

    def prepare(self) -> None:
        """Certificates for every identity and the data split."""
        self.prepare_identities()
        cfg = self.config
        parts = cfg.partition()
        self.n_classes = parts.n_classes
        (self.run_dir / "data").mkdir(exist_ok=True)
        parts.test.save(self.run_dir / "data" / "test.npz")
        for i, name in enumerate(cfg.node_names()):
            node = self.add_node(i, name)
            node.data_dir.mkdir(parents=True, exist_ok=True)
            shard = parts.nodes[i]
            n_val = int(round(len(shard.y) * cfg.val_fraction))
            Shard(shard.x[n_val:], shard.y[n_val:]).save(node.data_dir / "train.npz")
            Shard(shard.x[:n_val], shard.y[:n_val]).save(node.data_dir / "val.npz")

    def prepare_identities(self) -> None:
        """The run's folders, CA, admin and SN certificates."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        pki.create_ca(self.ca_dir, "swarm-local-ca")
        pki.issue_node_cert(self.ca_dir, self.admin_cert_dir, ADMIN, ORG, "admin")
        pki.issue_node_cert(self.ca_dir, self.run_dir / "pki" / SN_NAME, SN_NAME, ORG, "sn")

    def add_node(self, index: int, name: str, data: Path | None = None) -> Node:
        """Node ``name`` (the ``index``-th, its own organisation) with its certificate; ``data``: its
        data folder when it is not the run's own split (``<node folder>/data``)."""
        node = Node(name, self.run_dir / "nodes" / name, self.run_dir / "pki" / name, data=data)
        pki.issue_node_cert(self.ca_dir, node.cert_dir, name, f"org-{index + 1}", "sl")
        node.folder.mkdir(parents=True, exist_ok=True)
        self.nodes[name] = node
        return node

    def start_sn(self) -> None:
        from swarmlearning.sn import SNConfig, SNNode

        tls = pki.NodeCert.load(self.run_dir / "pki" / SN_NAME)
        provision = ((ADMIN, "admin"), *((n, "sl") for n in self.nodes))
        cfg = SNConfig(
            name=SN_NAME,
            data_dir=self.run_dir / "sn",
            tls=tls,
            peer_port=free_port(),
            client_port=free_port(),
            provision=provision,
            log_file=self.run_dir / "logs" / "sn.log",
            start_timeout_s=60.0,
        )
        self.sn = SNNode(cfg)
        asyncio.run(self.sn.start())
        self.sn_endpoints = [cfg.endpoint]

    @property
    def model_dir(self) -> Path:
        """Merged models the SL nodes keep (per site below it unless ``shared_model_archive``)."""
        return self.run_dir / "models"

    def model_dir_of(self, name: str) -> Path:
        return self.model_dir if self.shared_model_archive else self.model_dir / name

    def launch(
        self, name: str, cmd: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
    ) -> Proc:
        """Start a child process of node or SN ``name`` (here: directly, on loopback)."""
        return spawn(name, cmd, log_path, env, cwd)

    def sl_listen(self, name: str) -> str:
        return "127.0.0.1:0"

    def sl_advertise_host(self, name: str) -> str:
        return "127.0.0.1"

    def sl_metrics_host(self, name: str) -> str:
        """Address of the SL node's ``/metrics`` server: loopback only in local runs."""
        return "127.0.0.1"

    @property
    def metrics_urls_path(self) -> Path:
        return self.run_dir / "sl-metrics.json"

    def _write_metrics_urls(self) -> None:
        urls = {n: node.metrics_url for n, node in self.nodes.items() if node.metrics_url}
        tmp = self.metrics_urls_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(urls, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.metrics_urls_path)

    def _env(self, node: Node) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "SWARM_NODE_NAME": node.name,
                "SWARM_SL_SOCKET": str(node.socket_path),
                "SWARM_METRICS_FILE": str(node.metrics_path),
                "SWARM_MODEL_OUTPUT": str(node.out_dir),
            }
        )
        env.pop("SWARM_LOOPBACK", None)
        env.update(self.node_env.get(node.name, {}))
        return env

    def start_sl(self, name: str) -> None:
        node = self.nodes[name]
        with contextlib.suppress(FileNotFoundError):
            node.socket_path.unlink()
        cmd = [
            sys.executable,
            "-m",
            "swarmlearning.sl",
            "--name",
            name,
            "--cert-dir",
            str(node.cert_dir),
            "--sn",
            ",".join(self.sn_endpoints),
            "--listen",
            self.sl_listen(name),
            "--advertise-host",
            self.sl_advertise_host(name),
            "--socket",
            str(node.socket_path),
            "--linger",
            str(self.sl_linger_seconds),
            "--model-dir",
            str(self.model_dir_of(name)),
        ]
        # A fresh free port per start (a restarted node may not get its old one back).
        metrics_host, metrics_port = self.sl_metrics_host(name), free_port()
        cmd += ["--metrics-host", metrics_host, "--metrics-port", str(metrics_port)]
        node.metrics_url = f"http://{metrics_host}:{metrics_port}/metrics"
        self._write_metrics_urls()
        node.sl = self.launch(f"{name}-sl", cmd, self.run_dir / "logs" / f"{name}-sl.log", self._env(node))

    def wait_sl_ready(self, names: list[str], timeout: float = SOCKET_WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            node = self.nodes[name]
            while not node.socket_path.exists():
                if node.sl is None or not node.sl.running():
                    raise RunError(
                        f"SL node {name} exited before serving its ML channel:\n"
                        f"{tail(self.run_dir / 'logs' / f'{name}-sl.log')}"
                    )
                if time.monotonic() > deadline:
                    raise RunError(
                        f"SL node {name} did not open {node.socket_path} within {timeout:g}s:\n"
                        f"{tail(self.run_dir / 'logs' / f'{name}-sl.log')}"
                    )
                time.sleep(0.1)

    def start_ml(self, name: str) -> None:
        node = self.nodes[name]
        node.starts += 1
        args = self.config.script_args(self.node_args.get(name))
        cmd = [
            *self.ml_command.get(name, [sys.executable, str(self.config.script)]),
            "--data-dir",
            str(node.data_dir),
            "--seed",
            str(self.config.seed + node.starts * 1000 + int(name.rsplit("-", 1)[-1])),
            *args,
        ]
        node.ml = self.launch(
            f"{name}-ml",
            cmd,
            self.run_dir / "logs" / f"{name}-ml.log",
            self._env(node),
            cwd=self.config.example_dir,
        )

    def start_all(self) -> None:
        """SN, then every SL node (waiting until each serves its channel), then every ML process."""
        self.start_sn()
        if self.console:
            from swarmlearning.local.console import start_console

            self.local_console = start_console(self)
        for name in self.nodes:
            self.start_sl(name)
        self.wait_sl_ready(list(self.nodes))
        for name in self.nodes:
            self.start_ml(name)

    # ------------------------------------------------------------------ supervision

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's ML and SL process groups (a crashed site)."""
        node = self.nodes[name]
        for proc in (node.ml, node.sl):
            if proc is not None:
                proc.kill()

    def restart_node(self, name: str) -> None:
        self.start_sl(name)
        self.wait_sl_ready([name])
        self.start_ml(name)

    def ml_exit_codes(self) -> dict[str, int | None]:
        return {n: (node.ml.returncode if node.ml else None) for n, node in self.nodes.items()}

    def wait_ml(
        self,
        names: list[str] | None = None,
        timeout: float | None = None,
        on_tick: Any = None,
        fail_fast: bool = False,
    ) -> dict[str, int]:
        """Wait until the ML processes of ``names`` (default all) exit; returns their exit codes.

        Raises RunError after ``timeout`` seconds (default: the config's ``timeout_seconds``), at once
        when an SL node dies while its ML process still runs, and with ``fail_fast`` as soon as one ML
        process exits with an error (the others would only wait for it until their quorum timeout).
        """
        names = names or list(self.nodes)
        limit = timeout if timeout is not None else self.config.timeout_seconds
        deadline = time.monotonic() + limit
        while True:
            if on_tick is not None:
                on_tick()
            procs = {n: self.nodes[n].ml for n in names}
            codes = {n: p.returncode for n, p in procs.items() if p is not None}
            if all(c is not None for c in codes.values()):
                return {n: int(c) for n, c in codes.items() if c is not None}
            failed = sorted(n for n, c in codes.items() if c not in (None, 0))
            if fail_fast and failed:
                first = procs[failed[0]]
                raise RunError(
                    f"ML process of {failed[0]} exited with code {codes[failed[0]]}:\n"
                    f"{tail(first.log_path, 15) if first else ''}"
                )
            for n in names:
                node = self.nodes[n]
                # An SL node exits 0 on its own shortly after its ML process finished; any other exit
                # while the ML process runs leaves that process without a swarm.
                sl_code = node.sl.returncode if node.sl is not None else None
                if node.ml is not None and node.ml.running() and sl_code not in (None, 0):
                    assert node.sl is not None
                    raise RunError(
                        f"SL node {n} exited ({node.sl.returncode}) while its ML process runs:\n"
                        f"{tail(node.sl.log_path)}"
                    )
            if time.monotonic() > deadline:
                waiting = [n for n, c in codes.items() if c is None]
                first = procs[waiting[0]]
                raise RunError(
                    f"ML processes {', '.join(waiting)} still running after {limit:g}s "
                    f"(timeout_seconds); last log lines of {waiting[0]}:\n"
                    f"{tail(first.log_path) if first else ''}"
                )
            time.sleep(0.25)

    def run_to_end(self, emit: Any, progress: Any) -> tuple[Any, list[dict[str, Any]]]:
        """Start everything, wait for every ML process (``progress.update`` with the metric rows
        meanwhile) and raise RunError quoting the first that failed; returns the ledger snapshot and the
        nodes' metric rows. Call after :meth:`prepare`."""
        self.start_all()
        emit(
            f">>> SN at {','.join(self.sn_endpoints)}; {len(self.nodes)} SL and {len(self.nodes)} ML "
            f"processes started (logs in {self.run_dir / 'logs'})"
        )
        if self.local_console is not None:
            emit(
                f">>> console: {self.local_console.url} (its certificate is from the run's CA, "
                f"{self.local_console.ca}; it serves until the run ends)"
            )
        codes = self.wait_ml(on_tick=lambda: progress.update(self.metrics()), fail_fast=True)
        progress.update(self.metrics(), final=True)
        failed = sorted(n for n, c in codes.items() if c != 0)
        if failed:
            raise RunError(
                f"ML process of {failed[0]} exited with code {codes[failed[0]]}:\n"
                f"{tail(self.run_dir / 'logs' / f'{failed[0]}-ml.log', 15)}"
            )
        return self.ledger_snapshot(), self.metrics()

    def metrics(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for node in self.nodes.values():
            if node.metrics_path.exists():
                for line in node.metrics_path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        rows.append(json.loads(line))
        return rows

    async def _ledger_snapshot(self) -> Any:
        from swarmlearning.ledger import Ledger

        ledger = await Ledger.connect(self.sn_endpoints, pki.NodeCert.load(self.admin_cert_dir))
        try:
            return await ledger.snapshot()
        finally:
            await ledger.close()

    def ledger_snapshot(self) -> Any:
        """The whole ledger (records, certificates, head), read with the admin identity."""
        return asyncio.run(self._ledger_snapshot())

    def close(self) -> None:
        """Stop every process group (ML first, then SL, then the SN); safe to call twice."""
        for node in self.nodes.values():
            for proc in (node.ml, node.sl):
                if proc is not None and not proc.log_file.closed:
                    proc.stop()
        if self.local_console is not None and not self.local_console.proc.log_file.closed:
            self.local_console.proc.stop()
        if self.sn is not None:
            self.sn.stop()
            self.sn = None
