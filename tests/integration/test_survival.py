"""Faults a site survives, injected from outside the processes (signals, restarts, a misbehaving
training program), with real etcd, SL and ML processes on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from swarmlearning import pki
from swarmlearning.etcd import EtcdClient
from swarmlearning.ledger import keys
from swarmlearning.local.runner import LocalSwarm, tail
from swarmlearning.sl.weights import digest, encode_state

from tests.chaos.netns import SwarmNet
from tests.chaos.swarm import ChaosSwarm, attach_root
from tests.integration.test_swarm import (
    DIGITS,
    POISON,
    assert_all_succeeded,
    assert_identical,
    close_records,
    final_models,
    round_records,
    sl_log,
    small_config,
    wait_for,
)

pytestmark = pytest.mark.integration


def _poisoned(kind: str) -> list[str]:
    return [sys.executable, str(POISON), "--kind", kind, str(DIGITS / "train.py")]


def _rows(swarm: LocalSwarm, name: str) -> list[dict]:
    path = swarm.nodes[name].metrics_path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_dead_ml_process_does_not_hold_later_rounds(tmp_path: Path) -> None:
    """An SL node whose ML process died stays a member but is no longer waited for: with a full-quorum
    wait of 10 minutes, the two others still finish (each later round would otherwise wait it out)."""
    cfg = small_config(3, train={"epochs": 3}, full_quorum_wait=600, quorum_timeout=60)
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 3 to be committed", lambda: len(round_records(swarm)) >= 3, 120, swarm)
        swarm.nodes["node-3"].ml.kill()  # type: ignore[union-attr]
        assert_all_succeeded(swarm, ["node-1", "node-2"])
        assert swarm.nodes["node-3"].sl.running()  # type: ignore[union-attr]
        assert "ML process of contract" in sl_log(swarm, "node-3")
        assert "disconnected before finishing" in sl_log(swarm, "node-3")
        assert_identical(final_models(swarm, ["node-1", "node-2"]))


def test_rejected_participant_still_training_keeps_the_swarm_until_it_finishes(tmp_path: Path) -> None:
    """node-3 trains three times longer and every input it sends is poisoned (NaN). The others finish
    first; since node-3 is still training, no round is final until it finishes too: they keep
    contributing, node-3 never gets a "final" model mid-training, and all three end with one model."""
    cfg = small_config(3, train={"epochs": 1})
    with LocalSwarm(
        cfg, tmp_path / "run", node_args={"node-3": {"epochs": 3}}, ml_command={"node-3": _poisoned("nan")}
    ) as swarm:
        swarm.prepare()
        swarm.start_all()
        assert_all_succeeded(swarm, cfg.node_names())
        rounds = round_records(swarm)
        final = max(rounds)
        body = rounds[final].body
        assert body["extra"]["training"] == [], body
        assert "node-3" in body["extra"]["final"] or "node-3" in body["rejected"]
        # Every earlier round that node-3 was part of lists it as still training (its input rejected).
        ends = [r for r in _rows(swarm, "node-3") if r["event"] == "end"]
        assert len(ends) == 1
        for n, rec in rounds.items():
            if n != final and "node-3" in rec.body.get("rejected", {}):
                assert "node-3" in rec.body["extra"]["training"], (n, rec.body["extra"])
        assert_identical(final_models(swarm, cfg.node_names()))


def test_restart_after_every_node_exited_gets_the_final_model(tmp_path: Path) -> None:
    """The final model outlives the swarm: after every SL node exited, a site started again (its old
    run killed before the end) gets the final model from the run folder's model archive and keeps it
    as its output, without waiting for peers that will never come."""
    cfg = small_config(3, train={"epochs": 2})
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 3 to be committed", lambda: len(round_records(swarm)) >= 3, 120, swarm)
        swarm.kill_node("node-3")
        assert_all_succeeded(swarm, ["node-1", "node-2"])
        wait_for(
            "every SL node to exit",
            lambda: not any(swarm.nodes[n].sl.running() for n in ("node-1", "node-2")),  # type: ignore[union-attr]
            90,
            swarm,
        )
        final = round_records(swarm)[max(round_records(swarm))]
        archived = list((swarm.model_dir / final.contract).glob("*.safetensors"))
        assert [f.name[:8] for f in archived] == [f"{final.body['round']:08d}"], archived
        swarm.restart_node("node-3")
        assert_all_succeeded(swarm, ["node-3"])
        ml_log = swarm.nodes["node-3"].ml.log_path.read_text(errors="replace")  # type: ignore[union-attr]
        assert "already ended" in ml_log, tail(swarm.nodes["node-3"].ml.log_path)  # type: ignore[union-attr]
        out = final_models(swarm, ["node-1", "node-2", "node-3"])
        assert_identical(out)
        assert digest(encode_state(out["node-3"])) == final.body["merged_digest"]
        assert "model archive: serving the merged model" in sl_log(swarm, "node-3")


def test_sl_node_restarted_under_a_running_ml_process(tmp_path: Path) -> None:
    """A pod's SL sidecar crashes and the kubelet restarts it while the ML container keeps running:
    the callback reconnects to the new SL node and training goes on to the common final model."""
    cfg = small_config(3, train={"epochs": 3})
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 3 to be committed", lambda: len(round_records(swarm)) >= 3, 120, swarm)
        swarm.nodes["node-2"].sl.kill()  # type: ignore[union-attr]
        swarm.start_sl("node-2")
        assert_all_succeeded(swarm, cfg.node_names())
        assert any(r["event"] == "reconnect" for r in _rows(swarm, "node-2"))
        later = [n for n, c in close_records(swarm).items() if n > 3 and "node-2" in str(c.body)]
        assert later, "node-2 took part in no round after its SL node restarted"
        assert_identical(final_models(swarm, cfg.node_names()))


def test_a_participant_slow_to_fetch_the_final_model_still_gets_it(tmp_path: Path) -> None:
    """The final round's leader keeps serving until the slow participant recorded having the model (the
    linger time is only an upper bound, set far above the fetch time here; a first SIGTERM, which
    Kubernetes sends once the ML container exits, does not cut it short), then exits on its own. The
    two sites are on their own network hosts, with their own model archives and 0.6 s of delay each way
    between them, so whichever does not lead takes seconds to download the final model."""
    # The leader waits for the other's input across the delay: more than the usual 6 s of patience.
    cfg = small_config(2, train={"epochs": 1}, leader_failure_timeout=30)
    with SwarmNet(prefix="swslow") as net:
        attach_root(net)
        with ChaosSwarm(
            config=cfg,
            run_dir=tmp_path / "run",
            net=net,
            sn_members=1,
            sl_linger_seconds=300,
            shared_model_archive=False,  # the slow site must download the final model
        ) as swarm:
            swarm.prepare()
            # From the start: training rounds take 100 ms here, faster than a test can react to one.
            net.delay("node-1", "node-2", 600)
            swarm.start_all()
            names = cfg.node_names()

            def serving_leader() -> str | None:
                return next((n for n in names if "serving final model" in sl_log(swarm, n)), None)

            # As Kubernetes does when the ML container exits: SIGTERM to the SL node serving the model.
            leader = wait_for(
                "the final round's leader to serve the slow participant", serving_leader, 180, swarm
            )
            swarm.nodes[leader].sl.signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert_all_succeeded(swarm, names)
            final = max(round_records(swarm))
            record = round_records(swarm)[final]
            assert record.author == leader
            (slow,) = [n for n in names if n != leader]
            # Both SL nodes stop by themselves once both hold the model, not at the 300 s maximum.
            wait_for(
                "both SL nodes to exit once everyone has the final model",
                lambda: all(not swarm.nodes[n].sl.running() for n in names),  # type: ignore[union-attr]
                120,
                swarm,
            )
            assert {n: swarm.nodes[n].sl.returncode for n in names} == dict.fromkeys(names, 0)  # type: ignore[union-attr]
            lead_log = sl_log(swarm, leader)
            assert "stop signal while serving the final model" in lead_log
            assert f"serving final model of round {final} " in lead_log
            assert f"for {slow} (1 of 2 still fetching)" in lead_log
            digest_12 = record.body["merged_digest"][:12]
            for name in names:
                text = sl_log(swarm, name)
                assert f"every node that needs the final model {digest_12} has it (node-1, node-2)" in text, (
                    name
                )
                assert "linger maximum" not in text, name
            assert_identical(final_models(swarm, names))


def test_frozen_leader_mid_merge_is_replaced(tmp_path: Path) -> None:
    """SIGSTOP the round leader the moment it takes its leadership key (mid-merge), from outside: the
    others move on to the next attempt's leader; the frozen node is then killed. A freeze that lands
    after the leader committed (the merge is quick) is undone and tried again on a later round."""
    cfg = small_config(3, train={"epochs": 4}, leader_failure_timeout=6)
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        frozen, round_no = asyncio.run(_freeze_a_leader(swarm, tries=8))
        swarm.kill_node(frozen)
        survivors = [n for n in swarm.nodes if n != frozen]
        assert_all_succeeded(swarm, survivors)
        record = round_records(swarm)[round_no]
        assert record.author != frozen and record.body["attempt"] >= 1
        assert_identical(final_models(swarm, survivors))


async def _freeze_a_leader(swarm: LocalSwarm, *, tries: int) -> tuple[str, int]:
    """Freeze leaders of successive rounds (>= 2) until one is frozen before its commit."""
    admin = pki.NodeCert.load(swarm.admin_cert_dir)
    async with (
        await EtcdClient.connect(swarm.sn_endpoints, admin) as etcd,
        etcd.watch(keys.NODES, prefix=True) as changes,
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 240
        for _ in range(tries):
            while loop.time() < deadline:
                events = await changes.get(timeout=1.0)
                hit = next((e for e in events if "/leader/" in e.kv.key and e.type == "put"), None)
                if hit is None:
                    continue
                name, _, c, r, _ = hit.kv.key[len(keys.NODES) :].split("/")
                if int(r) >= 2:
                    contract = c
                    break
            else:
                pytest.fail("no leadership key appeared within 240 s")
            swarm.nodes[name].sl.signal(signal.SIGSTOP)  # type: ignore[union-attr]
            if await etcd.get(keys.result_key(contract, int(r))) is None:
                return name, int(r)
            swarm.nodes[name].sl.signal(signal.SIGCONT)  # committed before the freeze: next round
    pytest.fail(f"every one of {tries} leaders committed before it could be frozen")
