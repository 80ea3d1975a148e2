"""SN nodes: real etcd members with mTLS and auth forming, surviving a leader kill, refusing strangers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from swarmlearning import pki
from swarmlearning.etcd import EtcdClient, EtcdTLSError, EtcdUnavailable, etcd_version
from swarmlearning.sn import SNStartError

pytestmark = pytest.mark.integration


async def _roundtrip(endpoints: list[str], cert: pki.NodeCert, key: str, timeout: float = 10) -> bytes | None:
    async with await EtcdClient.connect(endpoints, cert, timeout=timeout) as c:
        await c.put(key, b"v-" + key.encode())
        kv = await c.get(key)
        return None if kv is None else kv.value


async def _members(endpoints: list[str], cert: pki.NodeCert) -> list[tuple[str, bool]]:
    async with await EtcdClient.connect(endpoints, cert) as c:
        return sorted((m.name, m.is_learner) for m in await c.member_list())


def test_etcd_binary_runs(etcd_binary: Path) -> None:
    version = etcd_version(etcd_binary)
    print(f"etcd {version} from {etcd_binary}")
    assert version.split(".")[0] == "3" and int(version.split(".")[1]) >= 4, "learners need etcd >= 3.4"


def test_single_member_cluster_forms(sn_cluster) -> None:
    cluster = sn_cluster(1)
    assert asyncio.run(_members(cluster.endpoints, cluster.admin)) == [("sn-0", False)]
    assert asyncio.run(_roundtrip(cluster.endpoints, cluster.admin, "/t/one")) == b"v-/t/one"


def test_three_member_cluster_forms_with_learner_joins(sn_cluster) -> None:
    t0 = time.monotonic()
    cluster = sn_cluster(3)
    print(f"3-member SN cluster formed in {time.monotonic() - t0:.2f}s")
    # All three are voters (learners were promoted), and every member serves reads and writes.
    assert asyncio.run(_members(cluster.endpoints, cluster.admin)) == [
        ("sn-0", False),
        ("sn-1", False),
        ("sn-2", False),
    ]
    for i, ep in enumerate(cluster.endpoints):
        assert asyncio.run(_roundtrip([ep], cluster.admin, f"/t/m{i}")) == f"v-/t/m{i}".encode()


def test_writes_continue_after_the_leader_member_is_killed(sn_cluster) -> None:
    cluster = sn_cluster(3)
    all_endpoints = cluster.endpoints
    leader = cluster.leader_index()
    # The client's first endpoint is the leader, so it must notice the death and fail over.
    ordered = [all_endpoints[leader]] + [e for i, e in enumerate(all_endpoints) if i != leader]

    async def scenario() -> tuple[float, bytes | None, list[tuple[str, bytes]]]:
        async with await EtcdClient.connect(ordered, cluster.admin, timeout=20, call_timeout=2) as c:
            await c.put("/t/before", b"1")
            async with c.watch("/t/", prefix=True) as w:  # opened on the member about to die
                cluster.kill(leader)
                t0 = time.monotonic()
                await c.put("/t/after", b"2")
                recovered = time.monotonic() - t0
                events = await w.get(timeout=20)  # the watch resumed on a surviving member
            kv = await c.get("/t/before")
            return recovered, None if kv is None else kv.value, [(e.kv.key, e.kv.value) for e in events]

    recovered, before, events = asyncio.run(scenario())
    assert events == [("/t/after", b"2")]
    print(f"write accepted {recovered:.2f}s after SIGKILL of the leader member")
    assert before == b"1"
    assert not cluster.nodes[leader].running()
    names = [n for n, _ in asyncio.run(_members(cluster.endpoints, cluster.admin))]
    assert len(names) == 3  # the dead member is still a member: quorum 2 of 3 remains


def _self_signed(tmp_path: Path, name: str) -> pki.NodeCert:
    """A certificate whose CA is itself: copy the CA files as the node's files."""
    d = tmp_path / f"self-{name}"
    pki.create_ca(d, name)
    (d / pki.NODE_CERT).write_bytes((d / pki.CA_CERT).read_bytes())
    (d / pki.NODE_KEY).write_bytes((d / pki.CA_KEY).read_bytes())
    return pki.NodeCert.load(d)


def test_clients_without_a_swarm_certificate_cannot_connect(sn_cluster, tmp_path: Path) -> None:
    cluster = sn_cluster(1)
    other_ca = tmp_path / "other-ca"
    pki.create_ca(other_ca, "other-ca")
    foreign = pki.issue_node_cert(other_ca, tmp_path / "foreign", "root", "evil", "admin")
    # The last one trusts the swarm CA, so it is the server that refuses its client certificate.
    foreign_trusting_swarm = dataclasses.replace(foreign, ca_path=cluster.admin.ca_path)
    for cert in (foreign, _self_signed(tmp_path, "root"), foreign_trusting_swarm):
        with pytest.raises(EtcdUnavailable) as err:
            asyncio.run(_roundtrip(cluster.endpoints, cert, "/t/x", timeout=2))
        assert isinstance(err.value, EtcdTLSError), f"expected a TLS refusal, got: {err.value}"
    assert asyncio.run(_roundtrip(cluster.endpoints, cluster.admin, "/t/ok")) == b"v-/t/ok"


def test_a_joiner_whose_join_was_cut_short_joins_again_on_restart(sn_cluster) -> None:
    """A pod killed while its etcd joined leaves a `member/` directory without a write-ahead log on its
    volume (seen with a deleted SN pod on the real node): the restarted member must join, not crash-loop."""
    cluster = sn_cluster(1)
    cluster.provision("sn-1", "sn")
    cfg = cluster.config("sn-1", join=tuple(cluster.endpoints))
    (cfg.data_dir / "member" / "snap").mkdir(parents=True)  # what etcd creates before its WAL
    cluster.start_node(cfg)
    assert asyncio.run(_members(cluster.endpoints, cluster.admin)) == [("sn-0", False), ("sn-1", False)]
    assert any((cfg.data_dir / "member" / "wal").glob("*.wal"))


def test_sn_with_a_foreign_certificate_cannot_join(sn_cluster, tmp_path: Path) -> None:
    cluster = sn_cluster(1)
    other_ca = tmp_path / "other-ca"
    pki.create_ca(other_ca, "other-ca")
    foreign = pki.issue_node_cert(other_ca, tmp_path / "sn-x", "sn-1", "evil", "sn")
    cfg = cluster.config("sn-1", join=tuple(cluster.endpoints), tls=foreign, start_timeout_s=5)
    with pytest.raises(SNStartError, match="cannot reach the swarm"):
        cluster.start_node(cfg)
    assert asyncio.run(_members(cluster.endpoints, cluster.admin)) == [("sn-0", False)]


def test_a_non_sn_certificate_of_the_swarm_ca_cannot_be_a_peer(sn_cluster) -> None:
    """The same CA signs SL certificates: etcd must refuse them on the peer port (SN marker missing)."""
    cluster = sn_cluster(1)
    sl_cert = cluster.provision("sn-rogue", "admin")  # may add members, but its cert has no SN peer name
    cfg = cluster.config("sn-rogue", join=tuple(cluster.endpoints), tls=sl_cert, start_timeout_s=6)
    with pytest.raises(SNStartError):
        cluster.start_node(cfg)
    # The failed joiner removed its learner entry; the cluster serves as before.
    assert asyncio.run(_roundtrip(cluster.endpoints, cluster.admin, "/t/still")) == b"v-/t/still"
    assert asyncio.run(_members(cluster.endpoints, cluster.admin)) == [("sn-0", False)]


def test_swarmctl_sn_start_runs_in_the_foreground_and_stops_etcd_on_sigterm(
    swarm_ca, etcd_binary: Path, tmp_path: Path, free_port
) -> None:
    cert = swarm_ca.issue("sn-0", "sn")
    port = free_port()
    env = {**os.environ, "SWARM_ETCD_BIN": str(etcd_binary)}
    cmd = [
        sys.executable,
        "-m",
        "swarmlearning.cli.swarmctl",
        "sn",
        "start",
        "--name",
        "sn-0",
        "--data-dir",
        str(tmp_path / "data"),
        "--peer-port",
        str(free_port()),
        "--client-port",
        str(port),
        "--cert-dir",
        str(cert.cert_path.parent),
        "--provision",
        "root:admin",
        "--start-timeout",
        "20",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    children: list[int] = []
    try:
        deadline = time.monotonic() + 30
        seen = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "bootstrapped" in line:
                break
        assert any("bootstrapped" in s for s in seen), (
            "swarmctl sn start never said bootstrapped:\n" + "".join(seen)
        )
        assert asyncio.run(_roundtrip([f"127.0.0.1:{port}"], swarm_ca.admin, "/t/cli")) == b"v-/t/cli"
        children = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert children, "swarmctl sn start has no etcd child"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
            time.sleep(0.1)
        alive = [p for p in children if Path(f"/proc/{p}").exists()]
        assert not alive, f"etcd processes left after SIGTERM: {alive}"
    finally:
        for p in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
