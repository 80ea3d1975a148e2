"""Merge-side momentum (serverOptimizer fedavgm) in a real local swarm: SN (etcd), SL nodes over mTLS,
ML processes on the digits data.

Each round after the initial one steps from the previous committed model with the momentum that travelled
in its blob, whoever leads; the record names the optimiser and digests its state; the ML processes get
their own state_dict (no optimiser tensors) and all end with the same model; the ledger verifies. With
secure aggregation the leader steps from the unmasked mean in the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from swarmlearning.local.runner import LocalSwarm
from swarmlearning.sl import server_optimizer as so

from tests.integration.test_private_swarm import _accuracy
from tests.integration.test_sharded_merge import records, verify_ledger
from tests.integration.test_swarm import assert_all_succeeded, assert_identical, final_models, small_config

pytestmark = pytest.mark.integration

LR, MOMENTUM = 1.5, 0.3


@pytest.mark.parametrize("mode", ["single", "secagg"])
def test_fedavgm_state_travels_with_the_committed_model(tmp_path: Path, mode: str) -> None:
    cfg = small_config(
        3,
        server_optimizer="fedavgm",
        server_learning_rate=LR,
        server_momentum=MOMENTUM,
        train={"epochs": 4},
        **({"merge_mode": "single", "secure_aggregation": True} if mode == "secagg" else {}),
    )
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        names = list(swarm.nodes)
        assert_all_succeeded(swarm, names)
        verify_ledger(swarm)
        rounds = {int(r.body["round"]): r for r in records(swarm, "round")}
        models = final_models(swarm, names)
        archived = {p.name: load_file(str(p)) for p in swarm.model_dir.rglob("*.safetensors")}
        accuracy = _accuracy(swarm, next(iter(models.values())))
    assert len(rounds) >= 5, sorted(rounds)
    assert "server_optimizer" not in rounds[1].body["extra"], "the initial sync is not a step"
    digests = []
    leaders = set()
    for n in sorted(rounds)[1:]:
        body = rounds[n].body
        assert body["extra"].get("mode", "single") == mode, (n, body["extra"].get("mode"))
        opt = body["extra"]["server_optimizer"]
        assert (opt["name"], opt["lr"], opt["momentum"]) == ("fedavgm", LR, MOMENTUM), (n, opt)
        assert opt["from_round"] == n - 1, (n, opt)  # each step continues the last committed model
        digests.append(opt["state_digest"])
        leaders.add(rounds[n].author)
    assert len(set(digests)) == len(digests), "the momentum changes every round"
    # The ML processes load exactly their own state_dict, the same on every node.
    assert_identical(models)
    model = next(iter(models.values()))
    assert not so.has_state(model), sorted(model)
    # The final committed blob holds the model the nodes got plus the momentum the record digests.
    last = max(rounds)
    blob = next(s for name, s in archived.items() if name.startswith(f"{last:08d}-"))
    assert so.has_state(blob), sorted(blob)
    assert so.model_only(blob).keys() == model.keys()
    assert all((blob[k] == model[k]).all() for k in model)
    record = so.FedAvgM(LR, MOMENTUM).record(blob, last - 1)
    assert record["state_digest"] == rounds[last].body["extra"]["server_optimizer"]["state_digest"]
    assert accuracy > 0.8, f"accuracy {accuracy:.3f} of the swarm's model with fedavgm"
