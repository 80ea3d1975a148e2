"""The sharded merge with real processes: SN (etcd), SL nodes over mTLS, ML processes on the digits data.

Every slice of the model is merged by its own leader; every node ends with the same model; nobody
downloads another node's whole input after the initial round; a slice leader killed while it merges is
replaced for its slice only; the ledger verifies.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from swarmlearning import pki
from swarmlearning.ledger import slice_leader_for
from swarmlearning.ledger.rounds import RoundClose
from swarmlearning.local.runner import LocalSwarm

from tests.chaos.harness import LeaderWatch
from tests.integration.test_sl_metrics import scrape
from tests.integration.test_swarm import (
    assert_all_succeeded,
    assert_identical,
    final_models,
    small_config,
    wait_for,
)

pytestmark = pytest.mark.integration

_INPUT_BYTES = re.compile(r'^swarm_sl_peer_bytes_received_total\{kind="([a-z-]+)"\} (\S+)$', re.M)


def records(swarm: LocalSwarm, kind: str) -> list[Any]:
    return [r for r in swarm.ledger_snapshot().records if r.kind == kind]


def received(swarm: LocalSwarm) -> dict[str, dict[str, float]]:
    """Per node, model bytes downloaded by kind (from its live /metrics)."""
    urls = json.loads(swarm.metrics_urls_path.read_text())
    out = {}
    for node, url in urls.items():
        text = scrape(url)
        assert text is not None, f"{node}'s metrics at {url} are not served"
        out[node] = {kind: float(v) for kind, v in _INPUT_BYTES.findall(text)}
    return out


def verify_ledger(swarm: LocalSwarm) -> None:
    snap = swarm.ledger_snapshot()
    report = snap.verify((swarm.ca_dir / pki.CA_CERT).read_bytes())
    assert report.ok, report.message


def test_sharded_rounds_give_every_node_the_same_model_without_whole_inputs(tmp_path: Path) -> None:
    cfg = small_config(4, merge_mode="sharded", train={"epochs": 4})
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 3 to be committed", lambda: len(records(swarm, "round")) >= 3, 150, swarm)
        before = received(swarm)
        wait_for("round 6 to be committed", lambda: len(records(swarm, "round")) >= 6, 150, swarm)
        after = received(swarm)
        assert_all_succeeded(swarm, list(swarm.nodes))
        rounds = {int(r.body["round"]): r for r in records(swarm, "round")}
        closes = {int(r.body["round"]): RoundClose.from_record(r) for r in records(swarm, "close")}
        slices = records(swarm, "slice")
        verify_ledger(swarm)
        assert_identical(final_models(swarm, list(swarm.nodes)))
    assert "slices" not in rounds[1].body  # the initial round hands out one start model
    for n, rec in rounds.items():
        if n == 1 or len(closes[n].participants) < 2:
            continue
        body = rec.body
        assert body["extra"]["mode"] == "sharded", (n, body)
        assert len(body["slices"]) == len(closes[n].participants)
        own = [s for s in slices if s.body["round"] == n]
        assert sorted(s.body["slice"] for s in own) == list(range(len(body["slices"])))
        # At attempt 0 every participant leads one slice.
        leaders = {s.author for s in own if s.body["attempt"] == 0}
        if len(leaders) == len(own):
            assert leaders == set(closes[n].names)
        for s in own:
            assert s.author == slice_leader_for(closes[n], s.body["slice"], s.body["attempt"])
    # Between rounds 3 and 6 nobody downloaded a whole input, only chunks of them.
    for node in after:
        assert after[node].get("input", 0) == before[node].get("input", 0), (node, before, after)
        assert after[node].get("input-chunk", 0) > before[node].get("input-chunk", 0), (node, after)
        assert after[node].get("merged-chunk", 0) > before[node].get("merged-chunk", 0), (node, after)


def test_slice_leader_killed_while_merging_is_replaced_for_its_slice(tmp_path: Path) -> None:
    """A slice leader is SIGKILLed the moment it takes its slice's leadership key; another participant
    redoes that slice (attempt >= 1), the round and the swarm complete with identical models."""
    cfg = small_config(4, merge_mode="sharded", min_peers=3, train={"epochs": 12}, full_quorum_wait=2)
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 3 to be committed", lambda: len(records(swarm, "round")) >= 3, 150, swarm)
        watch = LeaderWatch(swarm.sn_endpoints, pki.NodeCert.load(swarm.admin_cert_dir))
        watch.start()
        try:
            while True:  # the first slice leadership taken after round 3
                name, round_no, what = watch.events.get(timeout=60)
                if round_no > 3 and what.startswith("s") and name in swarm.nodes:
                    break
            swarm.nodes[name].sl.kill()  # type: ignore[union-attr]
        finally:
            watch.stop()
        slice_no = int(what[1:].split(".")[0])
        survivors = [n for n in swarm.nodes if n != name]

        def redone() -> Any:
            for s in records(swarm, "slice"):
                if (s.body["round"], s.body["slice"]) == (round_no, slice_no):
                    return s
            return None

        rec = wait_for(f"slice {slice_no} of round {round_no} after {name} was killed", redone, 120, swarm)
        assert_all_succeeded(swarm, survivors)
        rounds = {int(r.body["round"]): r for r in records(swarm, "round")}
        verify_ledger(swarm)
        assert_identical(final_models(swarm, survivors))
    # The slice was merged by another participant, at a later attempt; the round names it.
    assert rec.author != name and rec.body["attempt"] >= 1, (name, rec.author, rec.body["attempt"])
    assert name not in rec.body["participants"], rec.body  # the dead node's chunks were unreachable
    entry = [s for s in rounds[round_no].body["slices"] if s["slice"] == slice_no]
    assert entry == [
        {"slice": slice_no, "seq": rec.seq, "leader": rec.author, "digest": entry[0]["digest"]}
    ], rounds[round_no].body["slices"]
