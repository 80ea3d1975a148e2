"""A Byzantine site in a real swarm: 5 digits sites, node-1 sending sign-flipped, amplified updates
(``tests/chaos/poison.py --kind signflip``: ``w0 - 4 (w - w0)``) in every round, merged with Krum
(byzantine 1). Real SN (etcd), SL and ML processes on loopback."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from swarmlearning.local.datasets import Shard
from swarmlearning.local.report import accuracy, load_example, model_from_file
from swarmlearning.local.runner import LocalSwarm

from tests.integration.test_swarm import (
    DIGITS,
    POISON,
    assert_all_succeeded,
    assert_identical,
    close_records,
    final_models,
    round_records,
    small_config,
)

pytestmark = pytest.mark.integration

MIN_ACCURACY = 0.80
"""Krum's swarm reached 0.93 here (5 epochs, IID); the same swarm merged with mean reached 0.17 under
this attack (and 0.17 after 15 epochs in bench part byzantine): the bound has margin both ways."""


def test_krum_keeps_a_sign_flipping_site_out(tmp_path: Path) -> None:
    n = 5  # krum with byzantine=1 needs n >= 2f + 3 = 5 inputs: minPeers 5 gives every round all of them
    cfg = small_config(n, train={"epochs": 5}, min_peers=n, merge_method="krum", quorum_timeout=120)
    cfg = dataclasses.replace(cfg, split="iid")
    names = cfg.node_names()
    env = {name: {"SWARM_BYZANTINE": "1"} for name in names}
    ml = {"node-1": [sys.executable, str(POISON), "--kind", "signflip", str(DIGITS / "train.py")]}
    with LocalSwarm(cfg, tmp_path / "run", node_env=env, ml_command=ml) as swarm:
        swarm.prepare()
        swarm.start_all()
        assert_all_succeeded(swarm, names)
        snapshot = swarm.ledger_snapshot()
        rounds = round_records(swarm)
        closes = close_records(swarm)
        models = final_models(swarm, names)
        run_dir = swarm.run_dir
    verdict = snapshot.verify((run_dir / "pki" / "ca" / "ca.crt").read_bytes())
    assert verdict.ok, verdict.message()
    assert_identical(models)

    poisoned = 0
    for r, rec in sorted(rounds.items()):
        body = rec.body
        if r == 1:
            assert body["merge_method"] == "initial"
            continue
        assert body["merge_method"] == "krum", (r, body["merge_method"])
        assert {p["name"] for p in closes[r].body["participants"]} == set(names), r
        assert body["rejected"] == {}, (r, body["rejected"])  # finite, right shapes: only Krum can stop it
        digests = body["input_digests"]
        if any(d == digests["node-1"] for k, d in digests.items() if k != "node-1"):
            # Its input equals an honest one (a check-in with no training since the last merge: nothing
            # to flip), so picking it, as Krum's tie rule may, is harmless.
            continue
        poisoned += 1
        assert body["extra"]["selected"] != ["node-1"], f"round {r}: Krum picked the poisoned site"
        assert len(body["extra"]["selected"]) == 1, (r, body["extra"]["selected"])
    assert poisoned >= 8, f"only {poisoned} rounds had a poisoned input: {sorted(rounds)}"

    example = load_example(cfg)
    test = Shard.load(run_dir / "data" / "test.npz")
    acc = accuracy(
        model_from_file(example, run_dir / "nodes" / "node-2" / "out" / "model.safetensors"), test, example
    )
    assert acc >= MIN_ACCURACY, f"accuracy {acc:.3f} with Krum against a sign-flipping site"
