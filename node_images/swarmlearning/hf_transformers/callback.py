"""``SwarmCallback`` for the Hugging Face ``Trainer``, compatible with HPE's ``hf_transformers`` module.

``Trainer(..., callbacks=[SwarmCallback(syncFrequency, minPeers, model=model, hfMode="full")])``. The
Trainer calls the hooks: ``on_train_begin`` (initial sync or late join), ``on_step_end`` (one optimizer
step counts as one batch toward ``syncFrequency``; with ``gradient_accumulation_steps=k`` that is ``k``
micro-batches), ``on_epoch_end`` and ``on_train_end`` (the final merge). Once the swarm's training is
over the callback sets ``control.should_training_stop``.

``hfMode`` says what the swarm merges:

* ``"full"`` (default): the model's whole ``state_dict``, loaded back strictly (same names and shapes).
* ``"peft"``: only the adapter, as ``peft.get_peft_model_state_dict`` gives it (LoRA matrices and any
  ``modules_to_save`` such as a classifier head), loaded back with ``peft.set_peft_model_state_dict``,
  which maps the names back onto the model's parameters (a plain ``load_state_dict`` with those names
  would match nothing). The frozen base must be the same on every node. ``peft`` is imported only in
  this mode.

Validation (``adsValData``, a torch Dataset of dicts the model takes, with ``labels``, or a DataLoader or
iterable yielding such batches): the model's own loss as a mean over samples and the accuracy of the
logits' argmax (labels of -100 ignored); ``lossFunction``/``metricFunction`` replace them, as in
``swarmlearning.pyt``. Everything else (parameters, the SL node's channel, the sync protocol,
environment variables) is :class:`swarmlearning.client.swarm.SwarmCallbackBase`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
)

from swarmlearning.client.params import SwarmError, SwarmParameterError
from swarmlearning.client.swarm import SLPlatforms, SwarmCallbackBase
from swarmlearning.pyt.metrics import MetricFn, make_loss, make_metric
from swarmlearning.sl.weights import decode_state, encode_state

__all__ = ["HF_MODES", "SwarmCallback", "SwarmError", "SwarmParameterError"]

HF_MODES = ("full", "peft")
"""``hfMode`` values: merge the whole model / only the PEFT adapter."""
DEFAULT_VAL_BATCH_SIZE = 64
"""Batch size for an ``adsValData`` Dataset when ``adsValBatchSize`` is not given."""
IGNORE_INDEX = -100
"""Label value Hugging Face losses skip (padding in token classification)."""


class SwarmCallback(SwarmCallbackBase, TrainerCallback):
    """Swarm Learning for a Hugging Face ``Trainer`` run.

    ``SwarmCallback(syncFrequency, minPeers, trainingContract='defaultbb.cqdb.sml.hpe', model=model,
    hfMode='full', ...)``; ``model`` (a torch module: ``PreTrainedModel``, ``PeftModel``) is required.
    See ``swarmlearning.client.params.SwarmParams`` for every other parameter, its default and range.
    """

    mlPlatform = SLPlatforms.HF_TRANSFORMER
    logger_name = "swarmlearning.hf_transformers"
    extra_parameters = frozenset({"hfMode"})

    def __init__(
        self,
        syncFrequency: Any,  # noqa: N803 (HPE's parameter names)
        minPeers: Any,  # noqa: N803
        trainingContract: str = "defaultbb.cqdb.sml.hpe",  # noqa: N803
        **kwargs: Any,
    ) -> None:
        model = kwargs.get("model")
        if not isinstance(model, torch.nn.Module):
            raise SwarmParameterError(
                "model must be the torch module the Trainer trains (a transformers PreTrainedModel or a "
                f"peft PeftModel), got {model!r}"
            )
        mode = kwargs.get("hfMode", "full")
        if not isinstance(mode, str) or mode.strip().lower() not in HF_MODES:
            raise SwarmParameterError(f"hfMode must be one of {', '.join(HF_MODES)}; got {mode!r}")
        self.hfMode: str = mode.strip().lower()  # noqa: N815 (HPE's attribute name)
        self.adapter_name = "default"
        """The PEFT adapter merged in ``peft`` mode (the model's active adapter)."""
        if self.hfMode == "peft":
            self.adapter_name = _peft_adapter(model)
        super().__init__(syncFrequency, minPeers, trainingContract, **kwargs)
        self.model = model
        p = self.params
        self._loss_fn = make_loss(p.lossFunction, p.lossFunctionArgs) if p.lossFunction else None
        self._metric_fn: MetricFn | None = (
            make_metric(p.metricFunction, p.metricFunctionArgs) if p.metricFunction else None
        )
        self.valData = _wrap_val_data(p.adsValData, p.adsValBatchSize)
        self._expected = set(self._state())
        """Names this node merges; a merged model with other names does not fit it."""
        if not self._expected:
            raise SwarmParameterError(f"model has no weights to merge in hfMode={self.hfMode!r}")

    # ---------------- Trainer hooks (transformers.TrainerCallback) ----------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self._swarm_on_train_begin()
        return self._stop_if_over(control)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self._swarm_on_batch_end()
        return self._stop_if_over(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self._swarm_on_epoch_end()
        return self._stop_if_over(control)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self._swarm_on_train_end()
        return control

    def _stop_if_over(self, control: TrainerControl) -> TrainerControl:
        # The swarm's training ended (e.g. while this node was away): training on would only drift
        # from the final model, which on_train_end loads.
        if self.isSwarmTrainingOver:
            control.should_training_stop = True
        return control

    # ---------------- model access ----------------

    def _state(self) -> dict[str, Any]:
        """What this node merges, by name: the whole state_dict, or the adapter in peft mode."""
        if self.hfMode == "peft":
            from peft import get_peft_model_state_dict

            return dict(get_peft_model_state_dict(self.model, adapter_name=self.adapter_name))
        return {k: v for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)}

    def _model_weights(self) -> bytes:
        return encode_state(self._state())

    def _load_model_weights(self, data: bytes) -> None:
        state = decode_state(data)
        missing, unexpected = sorted(self._expected - set(state)), sorted(set(state) - self._expected)
        if missing or unexpected:
            raise SwarmError(
                f"merged weights do not fit this model (hfMode={self.hfMode!r}): "
                f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}; "
                "every node must train the same architecture (and adapter configuration in peft mode)"
            )
        if self.hfMode == "peft":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, state, adapter_name=self.adapter_name)
            left = list(getattr(result, "unexpected_keys", []) or [])
            if left:
                raise SwarmError(f"peft could not place {len(left)} merged adapter tensors, e.g. {left[:3]}")
        else:
            try:
                self.model.load_state_dict(state, strict=False)
            except RuntimeError as exc:  # shape mismatch
                raise SwarmError(f"merged weights do not fit this model: {exc}") from exc

    def _evaluate(self) -> tuple[float | None, float | None]:
        if self.valData is None:
            return None, None
        return evaluate(self.model, self.valData, self._loss_fn, self._metric_fn)


def evaluate(
    model: torch.nn.Module,
    batches: Any,
    loss_fn: torch.nn.Module | None = None,
    metric_fn: MetricFn | None = None,
) -> tuple[float | None, float | None]:
    """(mean loss per sample, metric) of ``model`` over ``batches`` (dicts of model inputs with
    ``labels``). Default loss: the model's own (its per-batch mean weighted by the batch's samples);
    default metric: accuracy of the logits' argmax, or None when there is one logit per sample."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    loss_sum, samples, correct, counted = 0.0, 0, 0, 0
    logits_all: list[torch.Tensor] = []
    labels_all: list[torch.Tensor] = []
    keep = loss_fn is not None or metric_fn is not None
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = _batch_inputs(batch, device)
                labels = inputs["labels"]
                out = model(**inputs)
                logits = out["logits"].detach()
                n = int(labels.shape[0])
                samples += n
                if loss_fn is None:
                    if out.get("loss") is None:
                        raise SwarmError("the model returned no loss for an adsValData batch with labels")
                    loss_sum += float(out["loss"]) * n
                if logits.shape[-1] > 1:
                    mask = labels != IGNORE_INDEX
                    correct += int((logits.argmax(dim=-1)[mask] == labels[mask]).sum())
                    counted += int(mask.sum())
                if keep:
                    logits_all.append(logits.cpu())
                    labels_all.append(labels.cpu())
    finally:
        model.train(was_training)
    if not samples:
        return None, None
    loss: float | None = loss_sum / samples
    metric: float | None = correct / counted if counted else None
    if keep:
        logits_t, labels_t = torch.cat(logits_all), torch.cat(labels_all)
        if loss_fn is not None:
            value = loss_fn(logits_t, labels_t)
            summed = getattr(loss_fn, "reduction", "mean") == "sum"
            loss = float(value) / samples if summed else float(value.float().mean())
        if metric_fn is not None:
            metric = float(metric_fn(logits_t, labels_t))
    return loss, metric


def _batch_inputs(batch: Any, device: torch.device) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise SwarmError(
            "adsValData must yield dicts of model inputs with 'labels' (a torch Dataset of such dicts, or a "
            f"DataLoader over one), got a batch of type {type(batch).__name__}"
        )
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "labels" not in inputs and "label" in inputs:
        inputs["labels"] = inputs.pop("label")
    if not isinstance(inputs.get("labels"), torch.Tensor):
        raise SwarmError(f"adsValData batches need a 'labels' tensor; keys are {sorted(inputs)}")
    return inputs


def _wrap_val_data(data: Any, batch_size: int | None) -> Any:
    """A map-style Dataset of dicts becomes a DataLoader (``default_data_collator``: lists become tensors,
    ``label`` becomes ``labels``); DataLoaders and other iterables of batches are used as they are."""
    if data is None or isinstance(data, torch.utils.data.DataLoader):
        return data
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if len(data) == 0:
            raise SwarmParameterError("adsValData is empty")
        first = data[0]
        if not isinstance(first, Mapping) or not ({"labels", "label"} & set(first)):
            raise SwarmParameterError(
                "adsValData must be a Dataset of dicts the model takes, with 'labels' (or a DataLoader over "
                f"one); its first item is {type(first).__name__}"
                + (f" with keys {sorted(first)}" if isinstance(first, Mapping) else "")
            )
        return torch.utils.data.DataLoader(
            data, batch_size=batch_size or DEFAULT_VAL_BATCH_SIZE, collate_fn=default_data_collator
        )
    return data


def _peft_adapter(model: torch.nn.Module) -> str:
    """The adapter a peft-mode callback merges; raises unless ``model`` carries PEFT adapters."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, Mapping) or not configs:
        raise SwarmParameterError(
            "hfMode='peft' needs a model with PEFT adapters (peft.get_peft_model(base, LoraConfig(...))), "
            f"got {type(model).__name__}; use hfMode='full' to merge the whole model"
        )
    active = getattr(model, "active_adapter", None)
    name = active if isinstance(active, str) else next(iter(configs))
    if name not in configs:
        raise SwarmParameterError(f"hfMode='peft': active adapter {name!r} not in {sorted(configs)}")
    return name
