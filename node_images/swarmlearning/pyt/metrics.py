"""Loss and metric functions named by string, as HPE's ``lossFunction``/``metricFunction`` take them.

Losses are ``torch.nn`` classes (``CrossEntropyLoss``, ``MSELoss``, …). Metrics built in: ``Accuracy``
(also ``MulticlassAccuracy``, ``BinaryAccuracy``), ``MeanSquaredError``, ``MeanAbsoluteError``; any other
name is looked up in torchmetrics when it is installed. All return a float over a whole data set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from swarmlearning.client.params import SwarmParameterError

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(name: str, args: dict[str, Any] | None) -> torch.nn.Module:
    cls = getattr(torch.nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and name.endswith("Loss")):
        raise SwarmParameterError(
            f"lossFunction must name a torch.nn loss class such as CrossEntropyLoss, got {name!r}"
        )
    return cls(**(args or {}))


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if outputs.dim() > 1 and outputs.shape[-1] > 1:
        predicted = outputs.argmax(dim=-1)
    else:  # one logit or probability per sample: binary
        flat = outputs.reshape(-1)
        threshold = 0.5 if bool(((flat >= 0) & (flat <= 1)).all()) else 0.0
        predicted = (flat > threshold).long()
    return (predicted.reshape(-1) == targets.reshape(-1).long()).float().mean()


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs.reshape(targets.shape).float() - targets.float()) ** 2).mean()


def _mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.reshape(targets.shape).float() - targets.float()).abs().mean()


_BUILTIN: dict[str, MetricFn] = {
    "accuracy": _accuracy,
    "multiclassaccuracy": _accuracy,
    "binaryaccuracy": _accuracy,
    "meansquarederror": _mse,
    "mse": _mse,
    "meanabsoluteerror": _mae,
    "mae": _mae,
}


def make_metric(name: str, args: dict[str, Any] | None) -> MetricFn:
    """Return ``fn(outputs, targets) -> scalar tensor`` for a metric name."""
    builtin = _BUILTIN.get(name.lower())
    if builtin is not None:
        return builtin
    try:
        import torchmetrics

        cls = getattr(torchmetrics, name, None)
    except ImportError:
        cls = None
    if cls is None:
        raise SwarmParameterError(
            f"metricFunction {name!r} is unknown; built in: Accuracy, MulticlassAccuracy, BinaryAccuracy, "
            "MeanSquaredError, MeanAbsoluteError (others need torchmetrics installed)"
        )
    metric = cls(**(args or {}))
    return lambda outputs, targets: metric(outputs, targets)


def evaluate(
    model: torch.nn.Module,
    data: Any,
    loss_fn: torch.nn.Module | None,
    metric_fn: MetricFn | None,
) -> tuple[float | None, float | None]:
    """Mean loss (per sample, whatever the loss's ``reduction``) and metric of ``model`` over ``data``
    (an iterable of ``(inputs, targets)`` batches)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outs: list[torch.Tensor] = []
    tgts: list[torch.Tensor] = []
    with torch.no_grad():
        for inputs, targets in data:
            outs.append(model(inputs.to(device)).cpu())
            tgts.append(targets.cpu())
    model.train(was_training)
    if not outs:
        return None, None
    outputs, targets = torch.cat(outs), torch.cat(tgts)
    loss = _mean_loss(loss_fn, outputs, targets) if loss_fn is not None else None
    metric = float(metric_fn(outputs, targets)) if metric_fn is not None else None
    return loss, metric


def _mean_loss(loss_fn: torch.nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The loss as a mean over samples: ``reduction='sum'`` is divided by their number and
    ``reduction='none'`` averaged, so the figure does not grow with the validation set."""
    value = loss_fn(outputs, targets)
    if getattr(loss_fn, "reduction", "mean") == "sum":
        return float(value) / max(1, len(targets))
    return float(value.float().mean())
