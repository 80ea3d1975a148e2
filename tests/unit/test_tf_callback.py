"""``swarmlearning.tf.SwarmCallback`` (Keras 3) without a swarm: weight naming, the safetensors round
trip on a real tiny Keras model, bad merged models, HPE's platform switch, and parameter leniency on a
real ``model.fit`` under ``SWARM_LOOPBACK=True``. Runs on whatever backend ``KERAS_BACKEND`` selects
(tensorflow by default); tests/integration/test_keras_swarm.py trains on both in a real swarm."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import keras
import numpy as np
import pytest
from swarmlearning.client.swarm import SLPlatforms
from swarmlearning.tf import (
    SwarmCallback,
    SwarmError,
    SwarmParameterError,
    load_weights,
    model_arrays,
    model_bytes,
    weight_names,
)
from swarmlearning.tf.callback import loss_and_metric, validation_input
from swarmlearning.tf.weights import to_numpy
from swarmlearning.weights_format import decode_arrays, encode_arrays

pytestmark = pytest.mark.unit


def tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(4,)),
            keras.layers.Dense(5, activation="relu", name="hidden"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Dense(3, name="logits"),
        ],
        name="tiny",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    for var in ("SWARM_SL_SOCKET", "SWARM_METRICS_FILE", "SWARM_MODEL_OUTPUT", "SWARM_SYNC_FREQUENCY"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- weight names and the round trip


def test_weight_names_are_the_variable_paths_including_non_trainable_ones() -> None:
    names = weight_names(tiny_model())
    assert names == [
        "tiny/hidden/kernel",
        "tiny/hidden/bias",
        "tiny/norm/gamma",
        "tiny/norm/beta",
        "tiny/norm/moving_mean",
        "tiny/norm/moving_variance",
        "tiny/logits/kernel",
        "tiny/logits/bias",
    ]
    assert weight_names(tiny_model(seed=1)) == names  # a second build in the same process: same names


def test_duplicate_names_get_a_stable_suffix_and_nameless_variables_fall_back_to_name() -> None:
    variables = [
        SimpleNamespace(path="m/w", name="w"),
        SimpleNamespace(path="m/w", name="w"),
        SimpleNamespace(path=None, name="legacy:0"),
        SimpleNamespace(path="m/w", name="w"),
    ]
    assert weight_names(SimpleNamespace(weights=variables)) == ["m/w", "m/w__1", "legacy:0", "m/w__2"]


def test_round_trip_through_safetensors_bytes_restores_every_weight() -> None:
    source, target = tiny_model(seed=1), tiny_model(seed=2)
    x, y = data()
    source.fit(x, y, epochs=1, batch_size=16, verbose=0)  # BatchNorm statistics move away from 0/1
    before = model_arrays(source)
    assert not np.allclose(model_arrays(target)["tiny/hidden/kernel"], before["tiny/hidden/kernel"])
    payload = model_bytes(source)
    assert set(decode_arrays(payload)) == set(before)
    assert load_weights(target, payload) == []
    after = model_arrays(target)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    np.testing.assert_allclose(
        np.asarray(source.predict(x, verbose=0)), np.asarray(target.predict(x, verbose=0)), rtol=1e-6
    )


def test_merged_values_are_cast_to_the_variable_dtype_and_extra_tensors_reported() -> None:
    model = tiny_model()
    arrays = {k: v.astype("float64") + 1.0 for k, v in model_arrays(model).items()}
    extra = load_weights(model, encode_arrays({**arrays, "other/bias": np.zeros(2)}))
    assert extra == ["other/bias"]
    loaded = model_arrays(model)
    assert loaded["tiny/logits/bias"].dtype == np.float32
    np.testing.assert_allclose(loaded["tiny/logits/bias"], arrays["tiny/logits/bias"])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda a: a.pop("tiny/norm/moving_mean"), ["tiny/norm/moving_mean", "no tensor"]),
        (
            lambda a: a.__setitem__("tiny/logits/kernel", np.zeros((5, 4), "float32")),
            ["tiny/logits/kernel", "(5, 4)", "(5, 3)"],
        ),
    ],
    ids=["missing", "mis-shaped"],
)
def test_bad_merged_tensor_is_a_swarm_error_naming_it_and_leaves_the_model_untouched(
    change: object, words: list[str], loopback: None
) -> None:
    model = tiny_model()
    before = model_arrays(model)
    arrays = {k: v + 1.0 for k, v in before.items()}
    change(arrays)  # type: ignore[operator]
    callback = SwarmCallback(syncFrequency=2, minPeers=1)
    callback.set_model(model)
    with pytest.raises(SwarmError) as info:
        callback._load_model_weights(encode_arrays(arrays))
    for word in words:
        assert word in str(info.value)
    for name, value in model_arrays(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_bytes_that_are_not_safetensors_are_a_swarm_error() -> None:
    with pytest.raises(SwarmError, match="not a valid safetensors body"):
        load_weights(tiny_model(), b"\x08\x00\x00\x00\x00\x00\x00\x00not json")


# ---------------------------------------------------------------- HPE's platform switch


@pytest.mark.parametrize("key", ["mlPlatform", "ml_platform"])
@pytest.mark.parametrize("value", ["TF", "tf", SLPlatforms.TF])
def test_tensorflow_1_graph_mode_is_refused(key: str, value: object, loopback: None) -> None:
    kwargs: dict[str, Any] = {key: value}
    with pytest.raises(SwarmParameterError) as info:
        SwarmCallback(syncFrequency=2, minPeers=1, **kwargs)
    message = str(info.value)
    assert key in message and "unsupported" in message and "Keras" in message


@pytest.mark.parametrize("value", ["KERAS", "keras", SLPlatforms.KERAS])
def test_keras_platform_is_accepted_silently(
    value: object, loopback: None, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.tf.platform")
    with caplog.at_level(logging.WARNING, logger="test.tf.platform"):
        callback = SwarmCallback(syncFrequency=2, minPeers=1, mlPlatform=value, logger=logger)
    assert callback.mlPlatform is SLPlatforms.KERAS
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_another_platform_is_refused_naming_the_right_module(loopback: None) -> None:
    with pytest.raises(SwarmParameterError, match="swarmlearning.pyt"):
        SwarmCallback(syncFrequency=2, minPeers=1, mlPlatform="PYTORCH")


# ---------------------------------------------------------------- validation data


def test_validation_input_forms() -> None:
    x, y = data()
    assert validation_input(None, 8) is None
    pair = validation_input((x, y), 8)
    assert pair is not None and pair.y is y and pair.sample_weight is None and pair.batch_size == 8
    triple = validation_input([x, y, np.ones(len(y))], None)
    assert triple is not None and triple.sample_weight is not None
    sequence = _Sequence(x, y, 8)  # a data set that batches itself: passed as x, no batch size
    assert validation_input(sequence, 8) == type(pair)(sequence)
    with pytest.raises(SwarmParameterError, match="one-shot iterator"):
        validation_input((b for b in [(x, y)]), None)


def test_loss_and_metric_take_the_mean_loss_and_the_first_compiled_metric() -> None:
    assert loss_and_metric({"accuracy": 0.5, "loss": 1.25, "auc": 0.7}) == (1.25, 0.5)
    assert loss_and_metric({"out_loss": 0.3, "loss": 0.4, "out_mae": 0.2}) == (0.4, 0.2)
    assert loss_and_metric({"loss": 0.4}) == (0.4, None)


def test_evaluation_leaves_the_running_training_metrics_alone(loopback: None) -> None:
    model = tiny_model()
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    callback = SwarmCallback(syncFrequency=2, minPeers=1, adsValData=data(32, seed=5), adsValBatchSize=8)
    callback.set_model(model)
    before = [to_numpy(v) for v in model.metrics_variables]
    loss, metric = callback._evaluate()
    assert loss is not None and loss > 0 and metric is not None and 0 <= metric <= 1
    after = [to_numpy(v) for v in model.metrics_variables]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- a real model.fit under SWARM_LOOPBACK


class _Sequence(keras.utils.PyDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        super().__init__()
        self.x, self.y, self.batch = x, y, batch

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s = slice(i * self.batch, (i + 1) * self.batch)
        return self.x[s], self.y[s]


def tf_dataset(x: np.ndarray, y: np.ndarray) -> Any:
    import tensorflow as tf  # Keras reads a tf.data.Dataset on the torch backend too

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


@pytest.mark.parametrize("val_form", ["tuple", "sample_weight", "py_dataset", "tf_data"])
def test_lenient_hpe_parameters_on_a_real_fit(
    val_form: str, loopback: None, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_model()
    x, y = data(64)
    vx, vy = data(24, seed=3)
    val = {
        "tuple": (vx, vy),
        "sample_weight": (vx, vy, np.ones(len(vy), "float32")),
        "py_dataset": _Sequence(vx, vy, 8),
        "tf_data": tf_dataset(vx, vy),
    }[val_form]
    logger = logging.getLogger("test.tf.lenient")
    callback = SwarmCallback(
        syncFrequency="4",  # HPE's client takes integers as strings and floats
        minPeers=2.0,
        mergeMethod="MEAN",
        totalEpochs=None,
        adsValData=val,
        adsValBatchSize=8,
        hfMode="full",
        nodeWieghtage=3,  # misspelt: warned about, not fatal
        logger=logger,
    )
    with caplog.at_level(logging.INFO, logger="test.tf.lenient"):
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callback])
    assert (callback.syncFrequency, callback.minPeers, callback.mergeMethod) == (4, 2, "mean")
    assert callback.totalEpochs == 3  # unknown to the script, taken from fit
    assert callback.fit_params is not None and callback.fit_params["epochs"] == 3
    assert callback.epochsCompleted == 3 and callback.isSwarmTrainingOver
    assert callback._batches == 12
    loss, metric = callback.get_loss(), callback.get_metric()
    assert loss is not None and np.isfinite(loss) and metric is not None and 0 <= metric <= 1
    assert len(history.history["loss"]) == 3
    assert "nodeWieghtage" in caplog.text and "nodeWeightage" in caplog.text
    assert "SWARM_LOOPBACK" in caplog.text


def test_every_step_counts_when_keras_runs_several_per_call(loopback: None) -> None:
    """``steps_per_execution=3`` on the tensorflow backend (torch allows only 1): Keras reports steps
    2, 5 and 8 of an 8-step epoch (the last execution ran 2 steps but is reported as 3)."""
    callback = SwarmCallback(syncFrequency=4, minPeers=1)
    callback.set_model(tiny_model())
    callback.set_params({"epochs": 2, "steps": 8, "verbose": 0})
    for epoch in range(2):
        callback.on_epoch_begin(epoch)
        for step in (2, 5, 8):
            callback.on_train_batch_end(step)
        callback.on_epoch_end(epoch)
    assert callback._batches == 16 and callback.epochsCompleted == 2


def test_out_of_range_parameter_fails_before_training(loopback: None) -> None:
    with pytest.raises(SwarmParameterError, match="nodeWeightage must be between 1 and 100"):
        SwarmCallback(syncFrequency=4, minPeers=2, nodeWeightage=0)


def test_dp_sgd_is_refused_naming_the_platform(loopback: None) -> None:
    with pytest.raises(SwarmParameterError, match="not supported on platform KERAS.*siteDpClipNorm"):
        SwarmCallback(syncFrequency=4, minPeers=2).make_private(object(), object(), noise_multiplier=1.0)


def test_training_stops_once_the_swarm_training_is_over(loopback: None) -> None:
    """As HPE's callback: ``isSwarmTrainingOver`` sets ``model.stop_training``, fit ends early."""

    class EndsAfterThreeBatches(SwarmCallback):
        def _swarm_on_batch_end(self) -> None:
            super()._swarm_on_batch_end()
            if self._batches == 3:
                self.isSwarmTrainingOver = True

    model = tiny_model()
    x, y = data(64)
    callback = EndsAfterThreeBatches(syncFrequency=2, minPeers=1)
    model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[callback])
    assert callback._batches == 3 and callback.epochsCompleted == 1


def test_hooks_outside_fit_say_how_to_use_the_callback(loopback: None) -> None:
    callback = SwarmCallback(syncFrequency=2, minPeers=1)
    with pytest.raises(SwarmError, match=r"model\.fit\(\.\.\., callbacks=\[swarm_callback\]\)"):
        callback.on_train_begin()
