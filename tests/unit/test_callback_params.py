"""SwarmCallback parameter validation, SWARM_LOOPBACK and the adaptive-sync rule (pure logic)."""

from __future__ import annotations

import logging

import pytest
import torch
from swarmlearning.client.adaptive import MAX_FACTOR, next_sync_interval
from swarmlearning.pyt import SwarmCallback, SwarmError
from swarmlearning.pyt.metrics import make_metric
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.unit


def _model() -> torch.nn.Module:
    return torch.nn.Linear(3, 2)


def _val() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,))), batch_size=4)


# (parameter, bad value, words the message must contain)
BAD = [
    ("syncFrequency", 0, ">= 1"),
    ("syncFrequency", 2.5, "integer"),
    ("minPeers", 0, ">= 1"),
    ("minPeers", True, "integer"),
    ("trainingContract", "", "1-63 lowercase letters"),
    ("trainingContract", "a/b", "1-63 lowercase letters"),
    ("trainingContract", "Upper", "1-63 lowercase letters"),
    ("useAdaptiveSync", "yes", "True or False"),
    ("adsValData", 5, "DataLoader"),
    ("adsValBatchSize", 0, ">= 1"),
    ("checkinModelOnTrainEnd", "always", "snapshot, active, inactive"),
    ("nodeWeightage", 0, "between 1 and 100"),
    ("nodeWeightage", 101, "between 1 and 100"),
    ("mergeMethod", "median", "mean, coordmedian, geomedian, trimmedmean, krum, multikrum"),
    ("totalEpochs", -1, ">= 0"),
    ("lossFunction", "NoSuchLoss", "torch.nn loss"),
    ("lossFunction", 3, "torch.nn loss"),
    ("lossFunctionArgs", [1], "dict"),
    ("metricFunction", "NoSuchMetric", "Accuracy"),
    ("metricFunctionArgs", "x", "dict"),
    ("maxPeers", 1, "0 (no limit) or >= minPeers"),
    ("maxPeers", -1, ">= 0"),
    ("numSamples", -5, ">= 0"),
    ("trimFraction", 0.5, "between 0.0 and 0.49"),
    ("byzantine", -1, ">= 0"),
    ("fullQuorumWaitSeconds", 4000, "between 0 and 3600"),
    ("leaderFailureTimeoutSeconds", 1, "between 5 and 86400"),
    ("quorumTimeoutSeconds", 5, "between 10 and 86400"),
    ("siteDpClipNorm", -1.0, "between 0.0 and 1000000.0"),
    ("siteDpNoiseMultiplier", 0.05, "between 0.1 and 100.0"),
    ("siteDpDelta", 0.5, "in (0, 0.1]"),
    ("siteDpDelta", 0, "in (0, 0.1]"),
    ("siteDpEpsilonBudget", -1, "between 0.0 and 10000.0"),
    ("siteDpOnBudgetSpent", "ignore", "stop, warn"),
    ("secureAggregation", "yes", "True or False"),
    ("secaggThreshold", 0.3, "0 (default 2/3) or between 0.5 and 1"),
    ("secaggThreshold", 1.5, "between 0.0 and 1.0"),
    ("logger", "log", "logging.Logger"),
    ("model", "net", "torch.nn.Module"),
]


@pytest.mark.parametrize(("name", "value", "words"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_parameter_names_itself_and_range(name: str, value: object, words: str) -> None:
    kw: dict[str, object] = {"syncFrequency": 2, "minPeers": 2, "model": _model()}
    kw[name] = value
    with pytest.raises(SwarmError) as err:  # HPE's error type, and a ValueError
        SwarmCallback(**kw)  # type: ignore[arg-type]
    assert isinstance(err.value, ValueError)
    assert name in str(err.value)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"mergeMethod": "krum"}, "secureAggregation works with mergeMethod mean only"),
        ({"mergeMethod": "coordmedian"}, "secureAggregation works with mergeMethod mean only"),
        ({"mergeMode": "sharded"}, "secureAggregation runs single-leader rounds"),
    ],
)
def test_secure_aggregation_refuses_what_needs_to_see_the_inputs(kw: dict[str, object], words: str) -> None:
    with pytest.raises(SwarmError, match=words):
        SwarmCallback(2, 2, model=_model(), secureAggregation=True, **kw)  # type: ignore[arg-type]
    cb = SwarmCallback(2, 2, model=_model(), secureAggregation=True, siteDpClipNorm=1.0, secaggThreshold=0.5)
    assert (
        cb.params.secureAggregation and cb.params.siteDpClipNorm == 1.0 and cb.params.secaggThreshold == 0.5
    )


def test_unknown_and_hpe_only_parameters_are_accepted_with_a_warning_naming_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="swarmlearning.pyt"):
        cb = SwarmCallback(2, 2, model=_model(), syncFreq=3, mlPlatform="PYTORCH", tf=None)
    text = caplog.text
    assert "syncFreq ignored: unknown parameter (did you mean syncFrequency?)" in text
    assert "mlPlatform ignored: HPE's platform switch" in text
    assert "tf ignored: HPE's TensorFlow-1 graph mode" in text
    assert cb.syncFrequency == 2


def test_parsing_is_as_lenient_as_hpe() -> None:
    """Integers given as strings or integral floats, names in any case, totalEpochs=None."""
    cb = SwarmCallback(
        "8",
        2.0,
        model=_model(),
        mergeMethod="GeoMedian",
        checkinModelOnTrainEnd="Active",
        nodeWeightage="30",
        totalEpochs=None,
        adsValBatchSize="16",
    )
    assert (cb.syncFrequency, cb.minPeers, cb.nodeWeightage, cb.totalEpochs) == (8, 2, 30, 0)
    assert (cb.mergeMethod, cb.checkinModelOnTrainEnd, cb.valBatchSize) == ("geomedian", "active", 16)
    with pytest.raises(SwarmError, match="syncFrequency must be an integer >= 1, got 'eight'"):
        SwarmCallback("eight", 2, model=_model())


def test_hpe_attributes_scripts_read() -> None:
    cb = SwarmCallback(4, 3, model=_model(), maxPeers=5, totalEpochs=7)
    assert cb.mlPlatform.name == "PYTORCH"
    assert (cb.syncFrequency, cb.currentSyncFrequency, cb.stepsBeforeNextSync) == (4, 4, 4)
    assert (cb.minPeers, cb.maxPeers, cb.totalEpochs) == (3, 5, 7)
    assert cb.trainingContract == "defaultbb.cqdb.sml.hpe"
    assert (cb.isSwarmTrainingOver, cb.userMergeDone, cb.epochsCompleted) == (False, False, 0)
    assert cb.lastSuccessfulMergeDictInActTrng is None
    assert isinstance(cb.logger, logging.Logger) and cb.valData is None
    assert (cb.get_loss(), cb.get_metric()) == (None, None)


def test_epochs_are_counted_per_call_and_loss_is_a_mean_whatever_the_reduction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    model = torch.nn.Linear(3, 2)
    val = _val()
    losses = {}
    for reduction in ("mean", "sum", "none"):
        cb = SwarmCallback(
            1,
            1,
            model=model,
            adsValData=val,
            lossFunction="CrossEntropyLoss",
            lossFunctionArgs={"reduction": reduction},
            metricFunction="Accuracy",
        )
        cb.on_train_begin()
        cb.on_epoch_end(1)  # a script counting from 1: still one epoch
        cb.on_epoch_end(2)
        assert cb.epochsCompleted == 2
        losses[reduction] = cb.get_loss()
    assert losses["sum"] == pytest.approx(losses["mean"]) and losses["none"] == pytest.approx(losses["mean"])


def test_environment_overrides_the_script(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_MIN_PEERS", "5")
    monkeypatch.setenv("SWARM_MERGE_METHOD", "geomedian")
    monkeypatch.setenv("SWARM_USE_ADAPTIVE_SYNC", "false")
    monkeypatch.setenv("SWARM_FULL_QUORUM_WAIT_SECONDS", "2.5")
    cb = SwarmCallback(4, 2, model=_model(), mergeMethod="mean")
    assert (cb.params.minPeers, cb.params.mergeMethod, cb.params.fullQuorumWaitSeconds) == (
        5,
        "geomedian",
        2.5,
    )
    monkeypatch.setenv("SWARM_MIN_PEERS", "many")
    with pytest.raises(ValueError, match="SWARM_MIN_PEERS .sets minPeers. must be a int"):
        SwarmCallback(4, 2, model=_model())
    monkeypatch.setenv("SWARM_MIN_PEERS", "0")
    with pytest.raises(ValueError, match="minPeers must be >= 1"):
        SwarmCallback(4, 2, model=_model())


def test_adaptive_sync_needs_validation_data_and_loss() -> None:
    with pytest.raises(ValueError, match="adsValData"):
        SwarmCallback(2, 2, model=_model(), useAdaptiveSync=True)
    with pytest.raises(ValueError, match="lossFunction"):
        SwarmCallback(2, 2, model=_model(), useAdaptiveSync=True, adsValData=_val())


def test_valid_parameters_and_defaults() -> None:
    cb = SwarmCallback(4, 3, model=_model(), maxPeers=5, logger=logging.getLogger("t"), mergeMethod="krum")
    assert cb.params.trainingContract == "defaultbb.cqdb.sml.hpe"
    assert cb.params.checkinModelOnTrainEnd == "snapshot"
    assert cb.params.nodeWeightage == 1
    assert cb.params.fullQuorumWaitSeconds == 30.0
    assert cb.params.contract_settings()["mergeMethod"] == "krum"
    assert cb.sync_interval == 4


def test_loopback_trains_without_a_swarm(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    monkeypatch.delenv("SWARM_SL_SOCKET", raising=False)
    monkeypatch.setenv("SWARM_METRICS_FILE", str(tmp_path / "m.jsonl"))
    model = _model()
    cb = SwarmCallback(
        1, 5, model=model, adsValData=_val(), lossFunction="CrossEntropyLoss", metricFunction="Accuracy"
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb.on_train_begin()
    for _ in range(3):
        cb.on_batch_end()
    cb.on_epoch_end(0)
    cb.on_train_end()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert cb.round is None and cb.local_state is not None
    events = [line for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(events) == 2  # epoch and end records, no sync


def test_without_loopback_a_missing_socket_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARM_LOOPBACK", raising=False)
    monkeypatch.delenv("SWARM_SL_SOCKET", raising=False)
    cb = SwarmCallback(1, 2, model=_model())
    with pytest.raises(SwarmError, match="SWARM_SL_SOCKET"):
        cb.on_train_begin()


def test_hooks_before_train_begin_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARM_LOOPBACK", raising=False)
    cb = SwarmCallback(1, 2, model=_model())
    with pytest.raises(SwarmError, match="on_train_begin"):
        cb.on_batch_end()


def test_adaptive_sync_rule() -> None:
    base = 8
    assert next_sync_interval(8, base, None, 1.0) == 8  # first measurement: baseline only
    assert next_sync_interval(8, base, 1.0, 0.9) == 16  # clear improvement: sync less often
    assert next_sync_interval(8, base, 1.0, 0.99) == 4  # plateau: sync more often
    assert next_sync_interval(8, base, 1.0, 1.2) == 4  # worse: sync more often
    assert next_sync_interval(base * MAX_FACTOR, base, 1.0, 0.5) == base * MAX_FACTOR  # capped
    assert next_sync_interval(2, base, 1.0, 1.0) == 2  # floor base // MAX_FACTOR
    assert next_sync_interval(1, 1, 1.0, 1.0) == 1
    assert next_sync_interval(8, base, 1.0, float("nan")) == 8


def test_builtin_metrics() -> None:
    acc = make_metric("Accuracy", None)
    assert float(acc(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))) == pytest.approx(0.5)
    assert float(acc(torch.tensor([0.7, 0.2]), torch.tensor([1, 0]))) == pytest.approx(1.0)
    mse = make_metric("MeanSquaredError", None)
    assert float(mse(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))) == pytest.approx(2.0)


def test_the_callbacks_console_output_is_visible_without_logging_setup(tmp_path) -> None:
    """HPE's callback prints its parameters to stdout by default; so does this one, once per line, and
    when the script configures logging itself its handlers get the records instead."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from swarmlearning.pyt import SwarmCallback\n"
        "cb = SwarmCallback(4, 2, model=torch.nn.Linear(2, 2), totalEpochs=None)\n"
        "cb.on_train_begin(); cb.on_epoch_end(); cb.on_train_end()\n"
    )
    env = {"SWARM_LOOPBACK": "True", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "SwarmCallback (PYTORCH)" in line]
    assert len(lines) == 1 and "swarmlearning.pyt : INFO" in lines[0], done.stdout
    assert "totalEpochs=unknown" in lines[0]
    configured = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(filename='l.txt', level=20)\n" + script],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert configured.returncode == 0, configured.stderr
    assert "SwarmCallback (PYTORCH)" not in configured.stdout
    assert "SwarmCallback (PYTORCH)" in (tmp_path / "l.txt").read_text()


def test_script_runs_get_one_data_folder_per_node(tmp_path) -> None:
    from swarmlearning.local.config import ConfigError
    from swarmlearning.local.script import node_data_folders

    for name in ("b", "a", "c"):
        (tmp_path / name).mkdir()
    (tmp_path / "test.npz").write_bytes(b"")
    assert node_data_folders([tmp_path], 2) == [tmp_path / "a", tmp_path / "b"]
    assert node_data_folders([tmp_path / "c", tmp_path / "a"], None) == [tmp_path / "c", tmp_path / "a"]
    with pytest.raises(ConfigError, match="--nodes 4 with one --data folder needs 4 subfolders"):
        node_data_folders([tmp_path], 4)
    with pytest.raises(ConfigError, match="--nodes 3 but 2 --data folders"):
        node_data_folders([tmp_path / "a", tmp_path / "b"], 3)
    with pytest.raises(ConfigError, match="not a folder"):
        node_data_folders([tmp_path / "test.npz"], None)
    with pytest.raises(ConfigError, match="give each node's data folder"):
        node_data_folders([], None)
