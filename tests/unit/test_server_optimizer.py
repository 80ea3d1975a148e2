"""Merge-side momentum (FedAvgM): the step, its state in the blob, stripping, its parameters (pure logic)."""

from __future__ import annotations

import pytest
import torch
from swarm_operator.specs import SpecError, TaskSpec
from swarmlearning.client.params import SwarmParameterError, env_overrides, validate_params
from swarmlearning.sl import server_optimizer as so
from swarmlearning.sl.modes.sharded import may_shard
from swarmlearning.sl.weights import decode_state, encode_state

pytestmark = pytest.mark.unit


def _model(w: float, b: float) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((2, 3), w),
        "b": torch.full((3,), b, dtype=torch.float16),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def test_lr_1_momentum_0_is_plain_fedavg_and_integers_are_the_merges() -> None:
    out = so.FedAvgM(1.0, 0.0).step(_model(2.0, 1.0), _model(0.5, 0.0))
    assert torch.equal(out["w"], torch.full((2, 3), 2.0))
    assert out["b"].dtype == torch.float16 and torch.equal(out["b"], torch.ones(3, dtype=torch.float16))
    assert out["bn.num_batches_tracked"] == 7 and so.PREFIX + "bn.num_batches_tracked" not in out
    assert torch.equal(out[so.PREFIX + "w"], torch.full((2, 3), 1.5))  # the state: the first update


def test_momentum_carries_from_the_previous_blob() -> None:
    opt = so.FedAvgM(lr=2.0, momentum=0.5)
    x0 = _model(0.0, 0.0)
    x1 = opt.step(_model(1.0, 0.0), x0)  # v1 = 1, x1 = 0 + 2 * 1
    assert torch.equal(x1["w"], torch.full((2, 3), 2.0))
    # Round trip through the committed bytes, as the next leader sees them.
    previous = decode_state(encode_state(x1))
    x2 = opt.step(_model(2.5, 0.0), previous)  # delta 0.5, v2 = 0.5 * 1 + 0.5 = 1, x2 = 2 + 2 * 1
    assert torch.equal(x2[so.PREFIX + "w"], torch.full((2, 3), 1.0))
    assert torch.equal(x2["w"], torch.full((2, 3), 4.0))


def test_a_changed_shape_restarts_from_the_merge() -> None:
    merged = {"w": torch.ones(4)}
    out = so.FedAvgM(2.0, 0.9).step(merged, {"w": torch.zeros(3), so.PREFIX + "w": torch.ones(3)})
    assert torch.equal(out["w"], torch.ones(4)) and not so.has_state(out)
    assert torch.equal(so.FedAvgM(2.0, 0.9).step(merged, {})["w"], torch.ones(4))


def test_strip_gives_the_ml_process_its_own_state_dict_and_leaves_plain_blobs_alone() -> None:
    plain = encode_state(_model(1.0, 1.0))
    assert so.strip(plain) is plain
    blob = encode_state(so.FedAvgM(1.5, 0.3).step(_model(1.0, 1.0), _model(0.0, 0.0)))
    assert so.has_state(decode_state(blob))
    stripped = decode_state(so.strip(blob))
    assert set(stripped) == set(_model(0, 0)) and torch.equal(stripped["w"], torch.full((2, 3), 1.5))


def test_the_record_names_the_optimiser_and_digests_its_state() -> None:
    opt = so.FedAvgM(1.5, 0.3)
    a = opt.step(_model(1.0, 1.0), _model(0.0, 0.0))
    b = opt.step(_model(1.0, 2.0), _model(0.0, 0.0))
    ra, rb = opt.record(a, 4), opt.record(b, 4)
    assert ra["name"] == "fedavgm" and ra["lr"] == 1.5 and ra["momentum"] == 0.3 and ra["from_round"] == 4
    assert len(ra["state_digest"]) == 64 and ra["state_digest"] != rb["state_digest"]
    assert opt.record(a, 4) == ra
    assert so.FedAvgM.of({}) is None and so.FedAvgM.of({"serverOptimizer": "none"}) is None
    assert so.FedAvgM.of({"serverOptimizer": "fedavgm", "serverLearningRate": 2}) == so.FedAvgM(2.0, 0.0)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"serverOptimizer": "fedadam"}, "serverOptimizer must be one of none, fedavgm"),
        ({"serverLearningRate": 0}, "serverLearningRate must be between 0.01 and 10.0"),
        ({"serverLearningRate": 11}, "serverLearningRate must be between 0.01 and 10.0"),
        ({"serverMomentum": 1.0}, "serverMomentum must be between 0.0 and 0.99"),
        ({"serverOptimizer": "fedavgm", "mergeMode": "sharded"}, "runs single-leader rounds"),
    ],
)
def test_bad_server_optimizer_parameters_are_named(kw: dict[str, object], words: str) -> None:
    with pytest.raises(SwarmParameterError, match=words):
        validate_params(4, 2, **kw)


def test_the_contract_carries_the_optimiser_and_auto_merges_it_single() -> None:
    p = validate_params(4, 2, serverOptimizer="FedAvgM", serverLearningRate=1.5, serverMomentum=0.3)
    settings = p.contract_settings()
    assert (settings["serverOptimizer"], settings["serverLearningRate"], settings["serverMomentum"]) == (
        "fedavgm",
        1.5,
        0.3,
    )
    assert not may_shard(settings) and may_shard(validate_params(4, 2).contract_settings())
    env = {"SWARM_SERVER_OPTIMIZER": "fedavgm", "SWARM_SERVER_LEARNING_RATE": "1.5"}
    assert env_overrides(env) == {"serverOptimizer": "fedavgm", "serverLearningRate": 1.5}


def test_the_operator_refuses_what_the_crd_refuses() -> None:
    def task(sync: dict[str, object], **spec: object) -> dict[str, object]:
        return {"network": "n", "peers": 2, "sync": {"frequency": 1, "minPeers": 2, **sync}, **spec}

    with pytest.raises(SpecError, match=r"spec\.sync\.mergeMode must be auto or single"):
        TaskSpec.parse(task({"serverOptimizer": "fedavgm", "mergeMode": "sharded"}))
    masked = TaskSpec.parse(
        task({"serverOptimizer": "fedavgm"}, privacy={"secureAggregation": {"enabled": True}})
    )
    assert masked.sync.server_optimizer == "fedavgm" and masked.privacy.secure_aggregation
    with pytest.raises(SpecError, match=r"spec\.sync\.serverMomentum must be a number"):
        TaskSpec.parse(task({"serverMomentum": 0.995}))
    t = TaskSpec.parse(task({"serverOptimizer": "fedavgm", "serverLearningRate": 1.5, "serverMomentum": 0.3}))
    assert (t.sync.server_optimizer, t.sync.server_learning_rate, t.sync.server_momentum) == (
        "fedavgm",
        1.5,
        0.3,
    )
