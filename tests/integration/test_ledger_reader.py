"""The operator's ledger reader against a real SN (etcd with mTLS and auth), fed by real ledger clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from swarm_operator.certificates import KeyPair
from swarm_operator.ledger_reader import LedgerReader, LedgerUnavailable
from swarmlearning import pki
from swarmlearning.ledger import Ledger

from tests.integration.conftest import SNCluster, SwarmCA

pytestmark = pytest.mark.integration

WAIT = 30.0


def _ca(swarm_ca: SwarmCA) -> KeyPair:
    return KeyPair(
        cert=(swarm_ca.ca_dir / pki.CA_CERT).read_bytes(), key=(swarm_ca.ca_dir / pki.CA_KEY).read_bytes()
    )


@pytest.fixture
def reader() -> Iterator[LedgerReader]:
    r = LedgerReader(timeout_s=5.0, min_interval_s=0.2)
    try:
        yield r
    finally:
        r.close()


def _until(fn: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT:.0f}s waiting for {what} (last: {out!r})")
        time.sleep(0.1)


def _two_rounds(cluster: SNCluster) -> None:
    """alice and bob train contract `job` for two rounds; the leader records per-node loss and metric."""
    alice, bob = cluster.provision("alice"), cluster.provision("bob")

    async def go() -> None:
        a = await Ledger.connect(cluster.endpoints, alice)
        b = await Ledger.connect(cluster.endpoints, bob)
        try:
            for i, n in enumerate((a, b)):
                await n.register_member(f"127.0.0.1:{41000 + i}", leader_eligible=True, ttl_s=5)
            await a.ensure_contract("job", {"min_peers": 2})
            for r in (1, 2):
                for n in (a, b):
                    await n.mark_ready("job", r, digest=n.name, weight=1, samples=10)
                close = await a.close_round("job", r, min_peers=2, full_quorum_wait_s=0, timeout_s=10)
                leader = a if close.leader == "alice" else b
                async with leader.hold_leadership("job", r, 0, ttl_s=5):
                    await leader.commit_round(
                        "job",
                        r,
                        0,
                        participants=list(close.names),
                        weights={},
                        input_digests={},
                        merged_digest=f"m{r}",
                        merge_method="mean",
                        rejected={},
                        extra={"loss": {"alice": 1.0 / r, "bob": 2.0 / r}, "metric": {"alice": 0.5 + r / 10}},
                    )
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_reader_sees_height_rounds_and_per_node_progress(
    sn_cluster: Callable[[int], SNCluster], swarm_ca: SwarmCA, reader: LedgerReader
) -> None:
    cluster = sn_cluster(1)
    _two_rounds(cluster)
    view = reader.read(cluster.endpoints, _ca(swarm_ca), "job")
    assert view.round == 2
    assert view.height >= 6  # 2 members, 1 contract, 2 x (close + round)
    assert (
        view.nodes["alice"].round == 2
        and view.nodes["alice"].loss == 0.5
        and view.nodes["alice"].metric == 0.7
    )
    assert view.nodes["bob"].loss == 1.0 and view.nodes["bob"].metric is None
    assert {r.kind for r in view.records} >= {"contract", "close", "round"}
    # another contract has no rounds
    assert reader.read(cluster.endpoints, _ca(swarm_ca), "other").round == 0


def test_background_view_and_user_provisioning(
    sn_cluster: Callable[[int], SNCluster], swarm_ca: SwarmCA, reader: LedgerReader
) -> None:
    cluster = sn_cluster(1)
    ca = _ca(swarm_ca)
    assert reader.view("net", cluster.endpoints, ca) == (None, None), "the first call never waits for the SN"
    view = _until(lambda: reader.view("net", cluster.endpoints, ca)[0], "a background ledger read")
    before = view.height

    # a user for a new site's certificate, created in the background with the operator's admin identity
    done = _until(lambda: reader.user(cluster.endpoints, ca, "carol", "sl")[0], "etcd user carol")
    assert done is True
    carol = swarm_ca.issue("carol", "sl")

    async def carol_registers() -> None:
        async with await Ledger.connect(cluster.endpoints, carol) as ledger:
            await ledger.register_member("127.0.0.1:41999", leader_eligible=False, ttl_s=5)

    asyncio.run(carol_registers())
    grown = _until(
        lambda: (v := reader.view("net", cluster.endpoints, ca)[0]) and v.height > before and v,
        "the new member record",
    )
    assert grown.height == before + 1


def test_unreachable_sn_is_reported_and_the_last_view_kept(
    sn_cluster: Callable[[int], SNCluster], swarm_ca: SwarmCA, free_port: Callable[[], int]
) -> None:
    reader = LedgerReader(timeout_s=1.5, min_interval_s=0.2)  # a dead endpoint costs one timeout per try
    try:
        _unreachable(sn_cluster(1), swarm_ca, reader, free_port)
    finally:
        reader.close()


def _unreachable(
    cluster: SNCluster, swarm_ca: SwarmCA, reader: LedgerReader, free_port: Callable[[], int]
) -> None:
    ca = _ca(swarm_ca)
    good = _until(lambda: reader.view("k", cluster.endpoints, ca)[0], "a first view")
    dead = [f"127.0.0.1:{free_port()}"]
    time.sleep(0.3)  # past min_interval_s: the next call refreshes
    _until(lambda: reader.view("k", dead, ca)[1], "an error from the dead endpoint")
    view, error = reader.view("k", dead, ca)
    assert view == good, "status keeps the last values while the SN is unreachable"
    assert error is not None and dead[0] in error
    with pytest.raises(LedgerUnavailable, match=dead[0]):
        reader.read(dead, ca)

    def failed_attempt() -> tuple[bool | None, str] | None:
        result = reader.user(dead, ca, "dave", "sl")
        return result if result[0] is False else None

    _, message = _until(failed_attempt, "a failed provisioning attempt")
    assert "dave" in message
