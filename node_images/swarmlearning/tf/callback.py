"""``SwarmCallback`` for Keras 3, compatible with HPE Swarm Learning's ``swarmlearning.tf``.

A script passes it to ``model.fit(..., callbacks=[swarm_callback])``; Keras sets the model before
``on_train_begin``. Works on the tensorflow and the torch backend of Keras 3 (``KERAS_BACKEND``): this
module imports ``keras`` only, never TensorFlow or torch itself. What the swarm merges is described in
:mod:`swarmlearning.tf.weights`; everything else (parameters, the SL node's channel, the sync protocol,
environment variables) is :class:`swarmlearning.client.swarm.SwarmCallbackBase`.

HPE's ``mlPlatform='TF'`` (TensorFlow-1 graph mode with ``tf=`` and ``sess=``) is refused: there are no
TF-1 sessions in TensorFlow 2 with Keras 3.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from swarmlearning.client.params import DEFAULT_CONTRACT, SwarmError, SwarmParameterError
from swarmlearning.client.swarm import SLPlatforms, SwarmCallbackBase
from swarmlearning.tf.weights import load_weights, model_bytes, to_numpy

__all__ = ["SwarmCallback", "SwarmError", "SwarmParameterError"]

_PLATFORM_KEYS = ("mlPlatform", "ml_platform")


@dataclass(frozen=True)
class ValidationInput:
    """``adsValData`` as arguments of ``model.evaluate``: arrays with a batch size, or a data set
    (tf.data.Dataset, keras.utils.PyDataset, torch DataLoader) that batches itself (``y`` None)."""

    x: Any
    y: Any = None
    sample_weight: Any = None
    batch_size: int | None = None


def validation_input(data: Any, batch_size: int | None) -> ValidationInput | None:
    """Normalise ``adsValData`` as HPE does: a tuple or list of 2 or 3 is ``(x, y[, sample_weight])``,
    anything else is passed to ``evaluate`` as ``x``. A one-shot iterator (a Python generator) is
    refused: the callback evaluates after every sync and would exhaust it, or never end on an
    infinite one."""
    if data is None:
        return None
    if isinstance(data, tuple | list) and len(data) in (2, 3):
        x, y, *weights = data
        return ValidationInput(x, y, weights[0] if weights else None, batch_size)
    if isinstance(data, Iterator):  # not iter(data) is data: that would start a tf.data pipeline
        raise SwarmParameterError(
            f"adsValData is a one-shot iterator ({type(data).__name__}): the callback evaluates after "
            "every sync and would exhaust it; pass (x, y), (x, y, sample_weight), a tf.data.Dataset or "
            "a keras.utils.PyDataset"
        )
    return ValidationInput(data)


def loss_and_metric(logs: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(mean loss, first compiled metric) from ``model.evaluate(..., return_dict=True)``; per-output
    losses (``<output>_loss``) are not metrics. None where the model reports none."""
    loss = logs.get("loss")
    metric = next((v for k, v in logs.items() if k != "loss" and not k.endswith("_loss")), None)
    return (None if loss is None else float(loss)), (None if metric is None else float(metric))


class SwarmCallback(keras.callbacks.Callback, SwarmCallbackBase):
    """Swarm Learning for ``model.fit``: syncs every ``syncFrequency`` batches.

    ``SwarmCallback(syncFrequency, minPeers, trainingContract='defaultbb.cqdb.sml.hpe', adsValData=...,
    adsValBatchSize=..., mergeMethod=..., nodeWeightage=..., totalEpochs=..., logger=...)``; see
    ``swarmlearning.client.params.SwarmParams`` for every parameter, its default and range.
    ``adsValData``: ``(x, y)``, ``(x, y, sample_weight)`` or a data set; loss and metric are the mean
    loss and the first compiled metric of ``model.evaluate`` on it. When the swarm's training is over
    (``isSwarmTrainingOver``) the callback sets ``model.stop_training``, as HPE's does.

    ``self.params`` is the swarm's settings; Keras's fit parameters (epochs, steps, verbose) are in
    ``fit_params``.
    """

    mlPlatform = SLPlatforms.KERAS
    logger_name = "swarmlearning.tf"

    def __init__(
        self,
        syncFrequency: Any,  # noqa: N803 (HPE's parameter names)
        minPeers: Any,  # noqa: N803
        trainingContract: str = DEFAULT_CONTRACT,  # noqa: N803
        **kwargs: Any,
    ) -> None:
        for key in _PLATFORM_KEYS:
            if key in kwargs:
                _check_platform(key, kwargs.pop(key))
        keras.callbacks.Callback.__init__(self)
        SwarmCallbackBase.__init__(self, syncFrequency, minPeers, trainingContract, **kwargs)
        self.hfMode = None
        """HPE's attribute: Hugging Face only, always None for Keras."""
        self.fit_params: dict[str, Any] | None = None
        self._val = validation_input(self.params.adsValData, self.params.adsValBatchSize)
        if self._val is not None and self._val.y is None and self.params.adsValBatchSize is not None:
            self.logger.info("adsValBatchSize ignored: adsValData is a data set, which batches itself")
        self._warned_extra = False
        self._last_step = -1
        """Index (in the epoch) of the last training step counted."""

    # ---------------- Keras hooks ----------------

    def set_params(self, params: dict[str, Any]) -> None:
        # Keras's Callback keeps fit's parameters in ``self.params``; that name holds the swarm's here.
        self.fit_params = params
        if not self.totalEpochs and params and params.get("epochs"):
            self.totalEpochs = int(params["epochs"])

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._require_model()
        self._swarm_on_train_begin()
        self._stop_if_over()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._last_step = -1

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        # With ``steps_per_execution`` > 1 Keras calls this once per execution, with the index of its
        # last step: count every step, so syncFrequency stays a number of batches. A short last
        # execution is reported as a full one; fit's step count (when known) bounds it.
        per_epoch = (self.fit_params or {}).get("steps")
        if isinstance(batch, int) and isinstance(per_epoch, int) and per_epoch > 0:
            batch = min(batch, per_epoch - 1)
        steps = batch - self._last_step if isinstance(batch, int) and batch > self._last_step else 1
        self._last_step += steps
        for _ in range(steps):
            self._swarm_on_batch_end()
            if self.isSwarmTrainingOver:
                break
        self._stop_if_over()

    def on_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """HPE's hook name; Keras calls :meth:`on_train_batch_end`, which does the same."""
        self.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int | None = None, logs: Mapping[str, Any] | None = None) -> None:
        self._swarm_on_epoch_end()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._swarm_on_train_end()

    # ---------------- model access ----------------

    def _require_model(self) -> keras.Model:
        model = self.model
        if not isinstance(model, keras.Model):
            raise SwarmError(
                "SwarmCallback has no Keras model: pass it to model.fit(..., callbacks=[swarm_callback]) "
                f"(got model {model!r})"
            )
        return model

    def _model_weights(self) -> bytes:
        return model_bytes(self._require_model())

    def _load_model_weights(self, data: bytes) -> None:
        extra = load_weights(self._require_model(), data)
        if extra and not self._warned_extra:
            self._warned_extra = True
            self.logger.warning(
                "merged model has %d tensor(s) this model lacks, ignored: %s",
                len(extra),
                ", ".join(extra[:5]),
            )

    def _evaluate(self) -> tuple[float | None, float | None]:
        """Evaluate on ``adsValData`` without disturbing training: the compiled metrics' running totals
        (fit's progress bar and logs) and, on the torch backend, the module's training mode are put
        back afterwards. ``evaluate`` gets no callbacks, so this callback's hooks do not run in it."""
        if self._val is None:
            return None, None
        model = self._require_model()
        saved = [(v, to_numpy(v)) for v in model.metrics_variables]
        training = getattr(model, "training", None) if keras.backend.backend() == "torch" else None
        try:
            logs = model.evaluate(
                x=self._val.x,
                y=self._val.y,
                sample_weight=self._val.sample_weight,
                batch_size=self._val.batch_size,
                verbose=0,
                return_dict=True,
            )
        finally:
            for variable, value in saved:
                variable.assign(value)
            if training is not None:
                model.train(training)
        self._metric_key = next((k for k in logs if k != "loss" and not k.endswith("_loss")), None)
        return loss_and_metric(logs)

    def _metric_name(self) -> str:
        """The first compiled metric (``accuracy`` …), as ``model.evaluate`` names it."""
        return getattr(self, "_metric_key", None) or super()._metric_name()

    def _stop_if_over(self) -> None:
        model = self._require_model()
        if self.isSwarmTrainingOver and not model.stop_training:
            self.logger.info("Swarm training is over. Stopping local training")
            model.stop_training = True


def _check_platform(key: str, value: Any) -> None:
    """HPE's ``mlPlatform``/``ml_platform``: ``'KERAS'`` (any case, or ``SLPlatforms.KERAS``) is this
    callback; ``'TF'`` is TensorFlow-1 graph mode, unsupported; anything else is another module's."""
    name: str | None = None
    if isinstance(value, SLPlatforms):
        name = value.name
    elif isinstance(value, str):
        name = value.strip().upper()
    if name == "KERAS":
        return
    if name == "TF":
        raise SwarmParameterError(
            f"{key}='TF' (HPE's TensorFlow-1 graph mode with tf= and sess=) is unsupported: use Keras "
            "(build the model with keras or tf.keras and pass the callback to model.fit); "
            f"{key} may then be omitted or 'KERAS'"
        )
    raise SwarmParameterError(
        f"{key} must be 'KERAS' for swarmlearning.tf (or omitted), got {value!r}; PyTorch scripts use "
        "swarmlearning.pyt, Hugging Face Trainer scripts swarmlearning.hf_transformers"
    )
