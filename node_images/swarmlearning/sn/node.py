"""An SN node: one etcd member, started as the sentinel (new cluster) or joining an existing swarm.

Every link is mTLS with certificates from the swarm CA. Peers must present the SN peer name
(:data:`swarmlearning.pki.SN_PEER_NAME`), so an SL or admin certificate from the same CA cannot join
the raft cluster. Clients are authenticated by certificate CN (etcd auth, see
:mod:`swarmlearning.ledger.access`).

Joining: the joiner (whose etcd user has the root role) adds itself as a *learner* through the given
SN API endpoints, starts etcd with ``--initial-cluster-state existing``, and promotes itself once
the learner has caught up with the leader. A restart with an existing data directory skips both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from swarmlearning import etcd
from swarmlearning.etcd import EtcdClient, EtcdError, EtcdMember
from swarmlearning.ledger import access
from swarmlearning.pki import SN_PEER_NAME, NodeCert

log = logging.getLogger(__name__)


class SNStartError(Exception):
    """The SN node could not start or join; the message says what was waited for and etcd's last words."""


@dataclass(frozen=True)
class SNConfig:
    """How to run one SN node. Ports: 30303 (peer, SN P2P) and 30304 (client, SN API) in clusters."""

    name: str
    """etcd member name; also the CN of ``tls`` and its etcd user."""
    data_dir: Path
    tls: NodeCert
    """SN certificate (role ``sn``) with SANs for ``advertise_host``."""
    peer_port: int = 30303
    client_port: int = 30304
    listen_host: str = "127.0.0.1"
    """Address etcd binds to (``0.0.0.0`` in a pod)."""
    advertise_host: str = "127.0.0.1"
    """Address other members and clients use (a DNS name in a cluster)."""
    join: tuple[str, ...] = ()
    """SN API endpoints (``host:port``) of the swarm to join; empty = this node is the sentinel."""
    provision: tuple[tuple[str, str], ...] = ()
    """Sentinel only: (name, role) etcd users to create at bootstrap (e.g. the joining SN nodes)."""
    etcd_bin: Path | None = None
    """etcd binary; default :func:`swarmlearning.etcd.find_etcd`."""
    start_timeout_s: float = 60.0
    """How long to wait for etcd to serve, and for a learner to be promoted (seconds)."""
    log_file: Path | None = None
    """etcd's stdout/stderr; None = inherit (foreground / container logs)."""
    log_level: str = "warn"

    def __post_init__(self) -> None:
        for field, port in (("peer_port", self.peer_port), ("client_port", self.client_port)):
            if not 1 <= port <= 65535:
                raise ValueError(f"{field}={port}: must be 1-65535")
        if self.peer_port == self.client_port:
            raise ValueError(f"peer_port and client_port are both {self.peer_port}: they must differ")
        if self.start_timeout_s <= 0:
            raise ValueError(f"start_timeout_s={self.start_timeout_s}: must be > 0 seconds")

    @property
    def peer_url(self) -> str:
        return f"https://{self.advertise_host}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        return f"https://{self.advertise_host}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of this node's SN API."""
        return f"{self.advertise_host}:{self.client_port}"


class SNNode:
    """A running etcd member (a child process in its own process group)."""

    def __init__(self, config: SNConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.member_id = 0
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------------------ process

    def _command(self, initial_cluster: str, state: str) -> list[str]:
        c, t = self.config, self.config.tls
        binary = c.etcd_bin or etcd.find_etcd()
        return [
            str(binary),
            "--name",
            c.name,
            "--data-dir",
            str(c.data_dir),
            "--listen-peer-urls",
            f"https://{c.listen_host}:{c.peer_port}",
            "--initial-advertise-peer-urls",
            c.peer_url,
            "--listen-client-urls",
            f"https://{c.listen_host}:{c.client_port}",
            "--advertise-client-urls",
            c.client_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "swarm",
            "--client-cert-auth",
            "--trusted-ca-file",
            str(t.ca_path),
            "--cert-file",
            str(t.cert_path),
            "--key-file",
            str(t.key_path),
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            str(t.ca_path),
            "--peer-cert-file",
            str(t.cert_path),
            "--peer-key-file",
            str(t.key_path),
            # One CA signs every identity: only certificates naming the SN peer marker may be peers.
            "--peer-cert-allowed-hostname",
            SN_PEER_NAME,
            # Keep 10000 revisions of history (watch resumption); current keys are never dropped.
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10000",
            "--logger",
            "zap",
            "--log-level",
            self.config.log_level,
        ]

    def _spawn(self, initial_cluster: str, state: str) -> None:
        c = self.config
        c.data_dir.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] | None = None
        if c.log_file is not None:
            self._log = out = open(c.log_file, "ab")  # noqa: SIM115 - closed in stop()
        cmd = self._command(initial_cluster, state)
        log.info("starting etcd member %s: %s", c.name, " ".join(cmd))
        self.process = subprocess.Popen(
            # No preexec_fn: with gRPC threads in this process, code between fork and exec aborts.
            cmd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise SNStartError(f"SN node {self.config.name} is not started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the etcd process group (crash simulation); waits for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_log()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM etcd, then SIGKILL after ``timeout_s`` seconds."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _last_words(self) -> str:
        if self.config.log_file is None or not self.config.log_file.exists():
            return ""
        lines = self.config.log_file.read_text(errors="replace").splitlines()[-8:]
        return "\n  etcd log: " + "\n  etcd log: ".join(lines) if lines else ""

    # ------------------------------------------------------------------------------ start

    async def start(self) -> None:
        """Start etcd as the sentinel or a joiner; return once this member serves (and is a voter).

        Raises :class:`SNStartError` on failure, after stopping the etcd process it started.
        """
        try:
            if self.config.join:
                await self._join()
            else:
                await self._bootstrap()
        except BaseException:
            self.stop()
            raise

    def _has_data(self) -> bool:
        """A member that has started before: its write-ahead log exists. A ``member`` directory without
        one is what a join cut short leaves (killed before etcd wrote its WAL); etcd cannot restart from
        it, so `_join` removes it and joins again."""
        wal = self.config.data_dir / "member" / "wal"
        return wal.is_dir() and any(wal.glob("*.wal"))

    async def _bootstrap(self) -> None:
        c = self.config
        self._spawn(f"{c.name}={c.peer_url}", "new")
        client = await self._wait_serving([c.endpoint], "the new cluster to serve")
        try:
            await access.bootstrap_auth(client, c.name, c.provision)
            self.member_id = (await client.status()).member_id
        finally:
            await client.close()

    async def _join(self) -> None:
        c = self.config
        if self._has_data():
            log.info("%s: data directory exists, restarting as an existing member", c.name)
            self._spawn(f"{c.name}={c.peer_url}", "existing")
            await (await self._wait_serving([c.endpoint], "the restarted member to serve")).close()
            return
        partial = c.data_dir / "member"
        if partial.is_dir():
            log.info("%s: removing %s left by a join that was cut short; joining again", c.name, partial)
            shutil.rmtree(partial)
        try:
            client = await EtcdClient.connect(list(c.join), c.tls, timeout=c.start_timeout_s / 4)
        except EtcdError as e:
            raise SNStartError(
                f"SN node {c.name} cannot reach the swarm to join at {', '.join(c.join)}: {e}"
            ) from e
        try:
            me, members = await self._add_self(client)
            self.member_id = me.id
            initial = ",".join(
                f"{c.name if m.id == me.id else m.name}={u}" for m in members for u in m.peer_urls
            )
            try:
                self._spawn(initial, "existing")
                await (await self._wait_serving([c.endpoint], "the new member to start")).close()
                if me.is_learner:
                    await self._promote(client, me.id)
            except BaseException:
                # Leave no half-joined learner behind; it would block later joins and confuse status.
                self.stop()
                with contextlib.suppress(EtcdError):
                    await client.member_remove(me.id)
                raise
        finally:
            await client.close()

    async def _add_self(self, client: EtcdClient) -> tuple[EtcdMember, list[EtcdMember]]:
        c = self.config
        try:
            members = await client.member_list()
            for m in members:
                if c.peer_url in m.peer_urls:
                    if m.name and m.name != c.name:
                        raise SNStartError(f"peer URL {c.peer_url} already belongs to member {m.name!r}")
                    log.info("%s: already a member (%x), not adding again", c.name, m.id)
                    return m, members
            return await client.member_add([c.peer_url], learner=True)
        except EtcdError as e:
            raise SNStartError(
                f"SN node {c.name} could not add itself to the swarm ({e}); "
                f"the etcd user {c.name!r} needs the "
                "root role (sentinel --provision NAME:sn, or `swarmctl sn provision`)"
            ) from e

    async def _wait_serving(self, endpoints: Sequence[str], what: str) -> EtcdClient:
        c = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.start_timeout_s
        last: Exception | None = None
        while loop.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise SNStartError(
                    f"SN node {c.name}: etcd exited with code {self.process.returncode} while "
                    f"waiting for {what}{self._last_words()}"
                )
            try:
                return await EtcdClient.connect(endpoints, c.tls, timeout=1.0, call_timeout=1.0)
            except EtcdError as e:
                last = e
            await asyncio.sleep(0.2)
        raise SNStartError(
            f"SN node {c.name}: timed out after {c.start_timeout_s:g}s waiting for {what} at "
            f"{', '.join(endpoints)} (last error: {last}){self._last_words()}"
        )

    async def _promote(self, client: EtcdClient, member_id: int) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.start_timeout_s
        while True:
            try:
                await client.member_promote(member_id)
                log.info("%s: promoted from learner to voting member", c.name)
                return
            except EtcdError as e:
                # "can only promote a learner member which is in sync with leader": wait and retry.
                if "not in sync" not in str(e) and "in sync with leader" not in str(e):
                    raise SNStartError(f"SN node {c.name}: promoting the learner failed: {e}") from e
                if loop.time() > deadline:
                    raise SNStartError(
                        f"SN node {c.name}: the learner did not catch up with the leader within "
                        f"{c.start_timeout_s:g}s: {e}"
                    ) from e
            if self.process is not None and self.process.poll() is not None:
                raise SNStartError(
                    f"SN node {c.name}: etcd exited while waiting for promotion{self._last_words()}"
                )
            await asyncio.sleep(0.3)

    def wait(self) -> int:
        """Block until etcd exits; returns its exit code."""
        if self.process is None:
            raise SNStartError(f"SN node {self.config.name} is not started")
        return self.process.wait()
