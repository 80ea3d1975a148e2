"""``SwarmCallback`` for PyTorch, compatible with HPE Swarm Learning's ``swarmlearning.pyt``.

A training script calls the four hooks; the model's full ``state_dict`` is what the swarm merges
(loaded back with ``strict=False``). Everything else (parameters, the SL node's channel, the sync
protocol, environment variables) is :class:`swarmlearning.client.swarm.SwarmCallbackBase`.
"""

from __future__ import annotations

from typing import Any

import torch

from swarmlearning.client.params import BUDGET_ACTIONS, PrivacyBudgetSpent, SwarmError, SwarmParameterError
from swarmlearning.client.swarm import SLPlatforms, SwarmCallbackBase
from swarmlearning.pyt.metrics import MetricFn, evaluate, make_loss, make_metric
from swarmlearning.sl.weights import decode_state, encode_state

__all__ = ["PrivacyBudgetSpent", "SwarmCallback", "SwarmError"]


class SwarmCallback(SwarmCallbackBase):
    """Swarm Learning hooks for a PyTorch training loop.

    ``SwarmCallback(syncFrequency, minPeers, trainingContract='defaultbb.cqdb.sml.hpe', model=net, ...)``;
    see ``swarmlearning.client.params.SwarmParams`` for every parameter, its default and range.
    """

    mlPlatform = SLPlatforms.PYTORCH
    logger_name = "swarmlearning.pyt"

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
                f"model must be a torch.nn.Module (required for PyTorch), got {model!r}"
            )
        super().__init__(syncFrequency, minPeers, trainingContract, **kwargs)
        self.model = model
        p = self.params
        self._loss_fn = make_loss(p.lossFunction, p.lossFunctionArgs) if p.lossFunction else None
        self._metric_fn: MetricFn | None = (
            make_metric(p.metricFunction, p.metricFunctionArgs) if p.metricFunction else None
        )
        if self._loss_fn is None and p.useAdaptiveSync:
            raise SwarmParameterError("useAdaptiveSync=True needs lossFunction (the loss it adapts to)")
        self.valData = self._wrap_val_data(p.adsValData, p.adsValBatchSize)
        self.local_state: dict[str, torch.Tensor] | None = None
        """This node's own weights just before the final merge (its last local model)."""
        self.privacy: Any = None
        """The DP-SGD tracker of :meth:`make_private` (``.epsilon()``, ``.budget_spent()``), or None."""
        self._on_budget_spent = "stop"
        self._budget_warned = False

    # ---------------- sample-level differential privacy (ours) ----------------

    def make_private(
        self,
        optimizer: torch.optim.Optimizer,
        data_loader: torch.utils.data.DataLoader,
        *,
        max_grad_norm: float = 1.0,
        delta: float = 1e-5,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        epochs: int | None = None,
        on_budget_spent: str = "stop",
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
        """Train this callback's model with DP-SGD (Opacus): per-sample gradients clipped to
        ``max_grad_norm`` and noised; give ``noise_multiplier``, or ``target_epsilon`` (at ``delta``)
        with the ``epochs`` it must last. Returns the model, optimizer and DataLoader to train with
        (the model keeps its weights: the swarm merges the original module). Every sync reports the ε
        spent so far, which the round record keeps per node; once it passes ``target_epsilon``,
        ``on_batch_end`` raises :class:`PrivacyBudgetSpent` (``on_budget_spent="stop"``) or warns
        (``"warn"``). See ``swarmlearning.pyt.privacy``."""
        if on_budget_spent not in BUDGET_ACTIONS:
            raise SwarmParameterError(
                f"on_budget_spent must be one of {', '.join(BUDGET_ACTIONS)}, got {on_budget_spent!r}"
            )
        from swarmlearning.pyt.privacy import make_private

        try:
            model, optimizer, loader, tracker = make_private(
                self.model,
                optimizer,
                data_loader,
                max_grad_norm=max_grad_norm,
                delta=delta,
                noise_multiplier=noise_multiplier,
                target_epsilon=target_epsilon,
                epochs=epochs,
            )
        except ValueError as exc:
            raise SwarmParameterError(f"make_private: {exc}") from exc
        self.privacy = tracker
        self._on_budget_spent = on_budget_spent
        self.logger.info(
            "DP-SGD on: noise multiplier %.3g, max grad norm %g, delta %g%s",
            tracker.noise_multiplier,
            tracker.max_grad_norm,
            tracker.delta,
            "" if target_epsilon is None else f", epsilon budget {target_epsilon:g} over {epochs} epochs",
        )
        return model, optimizer, loader

    def _privacy_epsilon(self) -> float | None:
        return None if self.privacy is None else float(self.privacy.epsilon())

    def _check_privacy_budget(self) -> None:
        if self.privacy is None or not self.privacy.budget_spent():
            return
        message = (
            f"sample-level privacy budget spent: epsilon {self.privacy.epsilon():.3g} > "
            f"{self.privacy.target_epsilon:g} (delta {self.privacy.delta:g}) after {self.privacy.steps} steps"
        )
        if self._on_budget_spent == "stop":
            raise PrivacyBudgetSpent(message + "; stop training and call on_train_end()")
        if not self._budget_warned:
            self._budget_warned = True
            self.logger.warning("%s; training goes on (on_budget_spent='warn')", message)

    # ---------------- hooks (HPE's signatures) ----------------

    def on_train_begin(self) -> None:
        self._swarm_on_train_begin()

    def on_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._swarm_on_batch_end()

    def on_epoch_end(self, epoch: int | None = None) -> None:
        self._swarm_on_epoch_end()

    def on_train_end(self) -> None:
        self.local_state = {
            k: v.detach().clone() for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)
        }
        self._swarm_on_train_end()

    # ---------------- model access ----------------

    def _model_weights(self) -> bytes:
        return encode_state(self.model.state_dict())

    def _load_model_weights(self, data: bytes) -> None:
        self.model.load_state_dict(decode_state(data), strict=False)

    def _evaluate(self) -> tuple[float | None, float | None]:
        if self._loss_fn is None and self._metric_fn is None:
            return None, None
        return evaluate(self.model, self.valData, self._loss_fn, self._metric_fn)

    @staticmethod
    def _wrap_val_data(data: Any, batch_size: int | None) -> Any:
        if data is None or isinstance(data, torch.utils.data.DataLoader):
            return data
        if isinstance(data, torch.utils.data.Dataset):
            return torch.utils.data.DataLoader(data, batch_size=batch_size or 64)
        return data
