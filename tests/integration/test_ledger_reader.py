"""The operator's ledger reader against a real SN (etcd with mTLS and auth).

The main test reads the ledger of a real local swarm (SN, SL and ML processes of the digits example,
torn down by :class:`~swarmlearning.local.runner.LocalSwarm`); the others feed the SN with real ledger
clients to check background reads, user provisioning and an unreachable SN.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from swarm_operator.certificates import KeyPair
from swarm_operator.ledger_reader import LedgerReader, LedgerUnavailable
from swarmlearning import pki
from swarmlearning.ledger import Ledger
from swarmlearning.local.config import RunConfig, load_config
from swarmlearning.local.runner import LocalSwarm, tail

from tests.integration.conftest import SNCluster, SwarmCA

pytestmark = pytest.mark.integration

WAIT = 30.0
DIGITS = Path(__file__).resolve().parents[2] / "examples" / "local" / "digits"


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


def _digits_swarm(nodes: int) -> RunConfig:
    """The digits example, shortened to a couple of epochs with short timeouts (2 nodes: ~20 s)."""
    base = load_config(DIGITS)
    swarm = {
        "sync_frequency": 4,
        "min_peers": nodes,
        "merge_method": "mean",
        "full_quorum_wait": 2,
        "leader_failure_timeout": 6,
        "quorum_timeout": 30,
    }
    train = {"epochs": 2, "batch_size": 32, "lr": 0.1}
    return dataclasses.replace(base, nodes=nodes, train=train, swarm=swarm, timeout_seconds=120)


def test_reader_reports_a_real_swarm_with_per_node_loss_and_metric(
    tmp_path: Path, reader: LedgerReader
) -> None:
    """Real SN, SL and ML processes train the digits example; while the SN still runs, the reader (the
    operator's read-only `swarm-reader` identity, provisioned with its admin identity) reads the ledger."""
    cfg = _digits_swarm(2)
    names = cfg.node_names()
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        codes = swarm.wait_ml(timeout=cfg.timeout_seconds, fail_fast=True)
        assert codes == dict.fromkeys(names, 0), {
            n: tail(swarm.nodes[n].ml.log_path, 15)
            for n, c in codes.items()
            if c  # type: ignore[union-attr]
        }
        truth = swarm.ledger_snapshot()  # read with the root admin identity, for comparison
        ca = KeyPair(
            cert=(swarm.ca_dir / pki.CA_CERT).read_bytes(), key=(swarm.ca_dir / pki.CA_KEY).read_bytes()
        )
        rounds = [r for r in truth.records if r.kind == "round"]
        contracts = {r.contract for r in rounds}
        assert len(contracts) == 1, contracts
        (contract,) = contracts
        view = reader.read(swarm.sn_endpoints, ca, contract)
        other = reader.read(swarm.sn_endpoints, ca, "no-such-contract")
        metrics = swarm.metrics()

    assert truth.head is not None
    assert view.height == truth.head[0] + 1 == len(truth.records)
    latest = max(int(r.body["round"]) for r in rounds)
    assert latest >= 3, "the run was too short to merge trained models"
    assert view.round == latest
    assert set(view.nodes) == set(names) == {p for r in rounds for p in r.body["participants"]}
    # Round 1 only hands out the starting model; from round 2 on every node has validated a merged model.
    for rec in view.records:
        if rec.kind == "round" and int(rec.body["round"]) > 1:
            extra = rec.body["extra"]
            for key in ("loss", "metric"):
                assert set(extra[key]) == set(rec.body["participants"]), (rec.body["round"], key, extra)
    for name in names:
        node = view.nodes[name]
        assert node.round == latest, (name, node)
        assert node.loss is not None and math.isfinite(node.loss) and node.loss > 0, (name, node)
        assert node.metric is not None and 0.0 <= node.metric <= 1.0, (name, node)
        # The final round carries what the node's ML process measured at its last epoch end.
        last_epoch = [r for r in metrics if r["node"] == name and r["event"] == "epoch"][-1]
        assert (node.loss, node.metric) == (last_epoch["loss"], last_epoch["metric"]), (name, last_epoch)
    assert other.round == 0 and other.nodes == {} and other.height == view.height


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
