"""Sample-level differential privacy (DP-SGD) for a PyTorch training script, through Opacus.

A script wraps its model, optimizer and DataLoader once, trains with what it gets back, and gives the
swarm its ORIGINAL module::

    model, optimizer, loader, tracker = make_private(
        net, optimizer, loader, noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    swarm = SwarmCallback(syncFrequency=..., minPeers=..., model=net)  # net, not model
    ...
    if tracker.budget_spent(): stop

The wrapper (Opacus's ``GradSampleModule``) shares the original module's parameter objects: training
through it updates ``net``, ``net.state_dict()`` keeps its keys (the wrapper's own keys carry a
``_module.`` prefix), and merged weights loaded into ``net`` are what the wrapper computes with.

Accounting uses Opacus's RDP accountant (not Opacus's default PRV one), so the ε reported here equals
:func:`swarmlearning.privacy.accountant.dpsgd_epsilon` for the same steps. The guarantee covers one
site's samples against everything the site shares (weights after any number of merges are
post-processing of DP-SGD steps); it needs Poisson sampling (the default) to hold as stated.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

try:
    from opacus import GradSampleModule, PrivacyEngine
    from opacus.optimizers import DPOptimizer
except ImportError as error:  # opacus is in the `ml` extra, not in every node image
    raise ImportError(
        "swarmlearning.pyt.privacy (DP-SGD) needs the opacus package (>= 1.5): pip install 'opacus>=1.5'"
    ) from error

__all__ = ["PrivacyTracker", "make_private"]


class PrivacyTracker:
    """ε spent so far by the training of one :func:`make_private` call, at a fixed δ.

    Attributes:
        module: the user's original module (hand this one to ``SwarmCallback(model=...)``).
        delta: δ the ε is stated at.
        target_epsilon: the ε budget (the ``target_epsilon`` given to :func:`make_private`), or None
            when the noise multiplier was given instead.
        noise_multiplier: noise std / max_grad_norm per step (calibrated from the target when one was
            given).
        max_grad_norm: per-sample gradient L2 clip norm.
        sample_rate: probability a sample is in a batch (1 / batches per epoch).
    """

    def __init__(
        self,
        engine: PrivacyEngine,
        *,
        module: torch.nn.Module,
        delta: float,
        target_epsilon: float | None,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
    ) -> None:
        self._engine = engine
        self.module = module
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.sample_rate = sample_rate

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far (each one a subsampled Gaussian mechanism)."""
        return sum(int(n) for _, _, n in self._engine.accountant.history)

    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta` (0.0 before the first step), Opacus's RDP accountant."""
        if not self._engine.accountant.history:
            return 0.0
        return float(self._engine.accountant.get_epsilon(delta=self.delta))

    def budget_spent(self) -> bool:
        """Whether ε so far exceeds :attr:`target_epsilon` (always False without a target)."""
        return self.target_epsilon is not None and self.epsilon() > self.target_epsilon


def _check_positive(name: str, value: object) -> float:
    if not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    max_grad_norm: float,
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    epochs: int | None = None,
    poisson_sampling: bool = True,
    noise_generator: torch.Generator | None = None,
    secure_mode: bool = False,
) -> tuple[GradSampleModule, DPOptimizer, DataLoader, PrivacyTracker]:
    """Make a PyTorch model, optimizer and DataLoader train with DP-SGD (Opacus), and track ε.

    Give exactly one of ``noise_multiplier`` (fixed noise; ε grows with every step) or
    ``target_epsilon`` with ``epochs`` (noise calibrated so that ``epochs`` passes over the data spend
    at most ``target_epsilon`` at ``delta``).

    Args:
        model: the user's module; must be Opacus-compatible (no BatchNorm: Opacus raises naming the
            layer; ``opacus.validators.ModuleValidator.fix`` swaps it for GroupNorm, which changes the
            state_dict, so every site of a swarm must apply the same fix).
        optimizer: an optimizer over ``model``'s parameters.
        data_loader: the training DataLoader (its batch size sets the sample rate 1 / len(loader)).
        max_grad_norm: per-sample gradient L2 clip norm, > 0.
        delta: δ of the guarantee, in (0, 1); usually below 1 / dataset size.
        noise_multiplier: noise std / max_grad_norm, > 0.
        target_epsilon: ε budget over ``epochs`` epochs, > 0.
        epochs: passes over the data the budget must last, >= 1; only with ``target_epsilon``.
        poisson_sampling: Poisson-sample batches (default True; False breaks the stated guarantee).
        noise_generator: torch generator for the noise (tests; not with ``secure_mode``).
        secure_mode: cryptographically secure noise and sampling (needs the ``torchcsprng`` package).

    Returns:
        (the wrapped model, the DP optimizer, the DP DataLoader, a :class:`PrivacyTracker`); train with
        the first three.
    """
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError(
            "give exactly one of noise_multiplier (> 0) and target_epsilon (> 0, with epochs), "
            f"got noise_multiplier={noise_multiplier!r}, target_epsilon={target_epsilon!r}"
        )
    clip = _check_positive("max_grad_norm", max_grad_norm)
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, GradSampleModule):
        raise ValueError("model is already wrapped by Opacus (GradSampleModule): pass the original module")
    if not isinstance(data_loader, DataLoader) or len(data_loader) == 0:
        raise ValueError("data_loader must be a torch DataLoader with at least one batch")
    target = None if target_epsilon is None else _check_positive("target_epsilon", target_epsilon)
    sigma = None if noise_multiplier is None else _check_positive("noise_multiplier", noise_multiplier)
    if target is not None:
        if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1):
            raise ValueError(f"epochs must be an integer >= 1 with target_epsilon, got {epochs!r}")
    elif epochs is not None:
        raise ValueError("epochs is used only with target_epsilon (noise_multiplier fixes the noise instead)")

    # RDP, not Opacus's default PRV accountant: the same ε as swarmlearning.privacy.accountant.dpsgd_epsilon.
    # Without secure_mode Opacus warns that its noise comes from a pseudo-RNG: left visible on purpose.
    engine = PrivacyEngine(accountant="rdp", secure_mode=secure_mode)
    sample_rate = 1.0 / len(data_loader)
    if target is not None:
        private_model, private_optimizer, private_loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            target_epsilon=target,
            target_delta=float(delta),
            epochs=epochs,
            max_grad_norm=clip,
            poisson_sampling=poisson_sampling,
            noise_generator=noise_generator,
        )
        sigma = float(private_optimizer.noise_multiplier)
    else:
        assert sigma is not None  # exactly one of the two was checked above
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=sigma,
            max_grad_norm=clip,
            poisson_sampling=poisson_sampling,
            noise_generator=noise_generator,
        )
    tracker = PrivacyTracker(
        engine,
        module=model,
        delta=float(delta),
        target_epsilon=target,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        sample_rate=sample_rate,
    )
    return private_model, private_optimizer, private_loader, tracker
