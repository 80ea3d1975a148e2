"""Privacy options in a real local swarm: SN (etcd), SL nodes over mTLS, ML processes on the digits data.

- secure aggregation with site-level DP and DP-SGD together: every round after the initial one is
  merged from masked inputs (the leader never downloads an input), every node ends with the same model,
  each round record carries the ε spent (site level, and per node for DP-SGD), the ledger verifies;
- a participant that dies after sharing its keys but before sending its masked input: the leader
  rebuilds its masks from the survivors' shares, the round commits without it, the others go on.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from swarmlearning.local.runner import LocalSwarm, Proc, spawn
from swarmlearning.privacy.accountant import site_epsilon

from tests.integration.test_sharded_merge import received, records, verify_ledger
from tests.integration.test_swarm import (
    assert_all_succeeded,
    assert_identical,
    final_models,
    small_config,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIP, SIGMA, DELTA = 1.0, 0.1, 1e-5


def test_secure_aggregation_with_site_dp_and_dp_sgd(tmp_path: Path) -> None:
    cfg = small_config(
        3,
        merge_mode="single",
        secure_aggregation=True,
        site_dp_clip_norm=CLIP,
        site_dp_noise_multiplier=SIGMA,
        site_dp_delta=DELTA,
        dp_sgd_noise_multiplier=0.6,
        dp_sgd_max_grad_norm=1.0,
        train={"epochs": 4},
    )
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 2 to be committed", lambda: len(records(swarm, "round")) >= 2, 150, swarm)
        before = received(swarm)
        wait_for("round 4 to be committed", lambda: len(records(swarm, "round")) >= 4, 150, swarm)
        after = received(swarm)
        assert_all_succeeded(swarm, list(swarm.nodes))
        rounds = {int(r.body["round"]): r for r in records(swarm, "round")}
        closes = {int(r.body["round"]): r for r in records(swarm, "close")}
        verify_ledger(swarm)
        models = final_models(swarm, list(swarm.nodes))
        assert_identical(models)
        accuracy = _accuracy(swarm, next(iter(models.values())))
    assert len(rounds) >= 4, sorted(rounds)
    epsilons = []
    for n, rec in sorted(rounds.items()):
        body = rec.body
        if n == 1:
            assert "privacy" not in body["extra"], body["extra"]  # random initial weights: nothing spent
            continue
        extra = body["extra"]
        assert extra["mode"] == "secagg", (n, extra)
        secure = extra["privacy"]["secureAggregation"]
        closed = {p["name"] for p in closes[n].body["participants"]}
        assert set(body["participants"]) <= set(secure["sharers"]) <= closed, (secure, closed)
        assert secure["threshold"] >= 2 and len(secure["revealers"]) >= secure["threshold"], secure
        site = extra["privacy"]["siteDp"]
        assert site["clipNorm"] == CLIP and site["noiseMultiplier"] == SIGMA and site["delta"] == DELTA
        assert site["epsilon"] == pytest.approx(site_epsilon(SIGMA, n - 1, DELTA)), (n, site)
        epsilons.append(site["epsilon"])
        # Site DP under secure aggregation: every input counts once, whatever its samples.
        assert set(body["weights"].values()) == {1.0}, body["weights"]
        sgd = extra.get("epsilon", {})
        assert set(sgd) == set(body["participants"]) and all(e > 0 for e in sgd.values()), (n, extra)
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1], epsilons
    # Between rounds 2 and 4 nobody downloaded a whole input: the leaders only ever saw masked ones.
    for node in after:
        assert after[node].get("input", 0) == before[node].get("input", 0), (node, before, after)
    assert sum(a.get("sa-masked", 0) for a in after.values()) > 0, after
    assert accuracy > 0.5, f"accuracy {accuracy:.3f} of the private swarm's model"


class DropoutSwarm(LocalSwarm):
    """node-4's SL node runs through tests/chaos/secagg_dropout.py and dies at its first masking."""

    def launch(self, name: str, cmd: list[str], log_path: Path, env: Any, cwd: Path | None = None) -> Proc:
        if name == "node-4-sl":
            cmd = [sys.executable, "-m", "tests.chaos.secagg_dropout", "--at", "mask", *cmd[3:]]
            env = dict(env, PYTHONPATH=str(ROOT))
        return spawn(name, cmd, log_path, env, cwd)


def test_a_participant_that_dies_before_sending_its_masked_input_is_recovered(tmp_path: Path) -> None:
    cfg = small_config(4, merge_mode="single", secure_aggregation=True, train={"epochs": 3})
    follower = {"node-4": {"SWARM_LEADER_ELIGIBLE": "false"}}  # it must die as a participant, not leader
    with DropoutSwarm(cfg, tmp_path / "run", node_env=follower) as swarm:
        swarm.prepare()
        swarm.start_all()
        sl = swarm.nodes["node-4"].sl
        assert sl is not None
        wait_for("node-4's SL node to drop out", lambda: sl.returncode is not None, 150, swarm)
        assert sl.returncode == 3, (swarm.run_dir / "logs" / "node-4-sl.log").read_text()[-2000:]
        survivors = ["node-1", "node-2", "node-3"]
        assert_all_succeeded(swarm, survivors)
        rounds = {int(r.body["round"]): r for r in records(swarm, "round")}
        verify_ledger(swarm)
        assert_identical(final_models(swarm, survivors))
    recovered = [
        r
        for r in rounds.values()
        if "node-4" in r.body["extra"].get("privacy", {}).get("secureAggregation", {}).get("dropped", [])
    ]
    assert len(recovered) == 1, {n: r.body["extra"].get("privacy") for n, r in rounds.items()}
    body = recovered[0].body
    assert sorted(body["participants"]) == survivors, body
    assert re.search("dropped out", body["rejected"]["node-4"]), body["rejected"]
    later = [n for n in rounds if n > int(body["round"])]
    assert later, "the swarm went on after the dropout"


def _accuracy(swarm: LocalSwarm, state: dict[str, torch.Tensor]) -> float:
    """Test-set accuracy of the digits MLP with ``state``."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 10))
    model.load_state_dict(state)
    with np.load(swarm.run_dir / "data" / "test.npz") as data:
        x, y = torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
