"""Fixtures for integration tests: a real etcd binary, a throwaway swarm CA, real TLS SN clusters.

``etcd_binary`` (session)
    Path of the etcd binary (:func:`swarmlearning.etcd.find_etcd`); the test fails, naming every
    place looked at, when there is none.

``swarm_ca`` (per test)
    A :class:`SwarmCA` in ``tmp_path``: ``swarm_ca.issue(name, role="sl", organisation="org-test")``
    returns a :class:`~swarmlearning.pki.NodeCert` (cached per name); ``swarm_ca.admin`` is the
    ``root`` admin certificate.

``free_port``
    ``free_port()`` returns a loopback TCP port that was free a moment ago.

``sn_cluster`` (per test, factory)
    ``cluster = sn_cluster(members=3)`` starts a sentinel and ``members - 1`` joiners (learner, then
    promoted) on free loopback ports, every link mTLS, etcd auth on. Returns an :class:`SNCluster`:
    ``endpoints`` (``host:port`` of live members), ``nodes`` (:class:`~swarmlearning.sn.SNNode`),
    ``admin`` (root cert), ``provision(name, role="sl") -> NodeCert`` (issue a certificate and create
    its etcd user), ``kill(i)`` (SIGKILL a member), ``leader_index()`` (index of the raft leader),
    ``config(name, join=..., tls=...)`` + ``start_node(cfg)`` (start one more member, e.g. with a bad
    certificate). Teardown kills every etcd process group it started, also when the test fails.
    A 1-member cluster starts in about 1 s, a 3-member one in about 11 s (etcd waits ~5 s of member
    health before each further membership change), so prefer 1 member unless the test is about SN.

Tests using these are synchronous and drive async code with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# gRPC's C core logs every refused TLS handshake and fork at INFO; keep test output readable.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from swarmlearning import pki
from swarmlearning.etcd import EtcdClient, find_etcd
from swarmlearning.ledger import access
from swarmlearning.sn import SNConfig, SNNode


@pytest.fixture(scope="session")
def etcd_binary() -> Path:
    try:
        return find_etcd()
    except FileNotFoundError as e:
        pytest.fail(f"integration tests need etcd: {e}")


@dataclass
class SwarmCA:
    """A throwaway swarm CA with node certificates under ``root``."""

    root: Path
    _issued: dict[str, pki.NodeCert] = field(default_factory=dict)

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    def issue(self, name: str, role: str = "sl", organisation: str = "org-test") -> pki.NodeCert:
        if name not in self._issued:
            self._issued[name] = pki.issue_node_cert(self.ca_dir, self.root / name, name, organisation, role)
        return self._issued[name]

    @property
    def admin(self) -> pki.NodeCert:
        return self.issue("root", "admin")


@pytest.fixture
def swarm_ca(tmp_path: Path) -> SwarmCA:
    root = tmp_path / "pki"
    pki.create_ca(root / "ca", "test-swarm-ca")
    return SwarmCA(root)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    """``free_port()`` -> a loopback TCP port that was free a moment ago."""
    return free_port


@dataclass
class SNCluster:
    ca: SwarmCA
    work: Path
    etcd_bin: Path
    nodes: list[SNNode] = field(default_factory=list)

    @property
    def admin(self) -> pki.NodeCert:
        return self.ca.admin

    @property
    def endpoints(self) -> list[str]:
        return [n.config.endpoint for n in self.nodes if n.running()]

    def config(
        self,
        name: str,
        *,
        join: tuple[str, ...] = (),
        tls: pki.NodeCert | None = None,
        provision: tuple[tuple[str, str], ...] = (),
        start_timeout_s: float = 30,
    ) -> SNConfig:
        return SNConfig(
            name=name,
            data_dir=self.work / name,
            tls=tls or self.ca.issue(name, "sn"),
            peer_port=free_port(),
            client_port=free_port(),
            join=join,
            provision=provision,
            etcd_bin=self.etcd_bin,
            start_timeout_s=start_timeout_s,
            log_file=self.work / f"{name}.log",
        )

    def start_node(self, cfg: SNConfig) -> SNNode:
        node = SNNode(cfg)
        self.nodes.append(node)  # registered before start so teardown kills it whatever happens
        asyncio.run(node.start())
        return node

    def start(self, members: int) -> SNCluster:
        names = [f"sn-{i}" for i in range(members)]
        provision = (*((n, "sn") for n in names[1:]), ("root", "admin"))
        self.admin  # noqa: B018 - issue the admin certificate before the sentinel provisions its user
        self.start_node(self.config(names[0], provision=provision))
        for n in names[1:]:
            self.start_node(self.config(n, join=tuple(self.endpoints)))
        return self

    def provision(self, name: str, role: str = "sl") -> pki.NodeCert:
        cert = self.ca.issue(name, role)

        async def go() -> None:
            async with await EtcdClient.connect(self.endpoints, self.admin) as c:
                await access.provision(c, name, role)

        asyncio.run(go())
        return cert

    def leader_index(self) -> int:
        async def go() -> int:
            async with await EtcdClient.connect(self.endpoints, self.admin) as c:
                leader = (await c.status()).leader_id
            for i, n in enumerate(self.nodes):
                if n.running() and n.member_id == leader:
                    return i
            raise AssertionError(f"leader {leader:x} is not one of the started members")

        return asyncio.run(go())

    def kill(self, i: int) -> None:
        self.nodes[i].kill()

    def teardown(self) -> None:
        for n in self.nodes:
            if n.process is not None and n.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(n.process.pid, signal.SIGKILL)
                n.process.wait(timeout=10)
            n.stop()


@pytest.fixture
def sn_cluster(swarm_ca: SwarmCA, etcd_binary: Path, tmp_path: Path) -> Iterator[Callable[[int], SNCluster]]:
    clusters: list[SNCluster] = []

    def make(members: int = 1) -> SNCluster:
        c = SNCluster(swarm_ca, tmp_path / f"sn{len(clusters)}", etcd_binary)
        clusters.append(c)
        return c.start(members)

    yield make
    for c in clusters:
        c.teardown()
