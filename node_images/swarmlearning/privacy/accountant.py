"""Privacy accounting (ε at a given δ) for site-level DP-FedAvg rounds and sample-level DP-SGD steps.

Rényi-DP accounting: the RDP of each (subsampled) Gaussian mechanism is computed here, composed, and
converted to (ε, δ) by Google's ``dp-accounting`` (this module is its one user). Pure and torch-free, so
any reader of budgets (a CLI, a dashboard) needs no ML framework.

Units: ε and δ are the usual (ε, δ)-DP parameters (ε in nats, δ a probability); a noise multiplier is the
Gaussian noise's standard deviation divided by the L2 sensitivity (the clip norm); a sampling rate is the
probability that one unit (a site per round, a sample per step) takes part, under Poisson sampling. The
neighbouring relation is add-or-remove-one (one site for :func:`site_epsilon`, one sample for
:func:`dpsgd_epsilon`), as in DP-FedAvg and in Opacus.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from dp_accounting import rdp
from scipy import special

__all__ = ["OPACUS_RDP_ORDERS", "RDP_ORDERS", "dpsgd_epsilon", "noise_for_epsilon", "site_epsilon"]

OPACUS_RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
"""The Rényi orders Opacus's ``RDPAccountant`` uses by default (1.1 … 10.9, 12 … 63), so that
:func:`dpsgd_epsilon` gives Opacus's own number for the same steps."""

RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)
"""The Rényi orders of :func:`site_epsilon`: dp-accounting's default set, whose large orders keep ε tight
for few rounds with much noise."""

_NOISE_SEARCH_MAX = 1e6
"""Upper end of :func:`noise_for_epsilon`'s search: a noise multiplier beyond this is no usable model."""

_SERIES_BLOCK = 256
"""Terms of the fractional-order series evaluated per numpy call."""

_SERIES_MAX_TERMS = 1_000_000
"""Terms after which the fractional-order series counts as not converging (that order is then dropped)."""

_LOG_NEGLIGIBLE = -30.0
"""A series term below exp(-30) is negligible: A_alpha >= 1, so it changes the sum by < 1e-13."""


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: int) -> None:
    # bool is an int subclass: True rounds is a caller bug, not 1 round.
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def _check_rate(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


# ---- RDP of the Poisson-subsampled Gaussian mechanism ----
# dp-accounting 0.6 bounds the fractional orders by a series of absolute values: a safe but up to ~10%
# loose RDP (ε up to a few % high against an exact quadrature), and some orders fail to converge and are
# dropped. Opacus sums the same series (Mironov, Talwar, Zhang 2019, sec. 3.3) with its signs, which is
# exact; so the RDP of one subsampled step is computed here from that series, and dp-accounting converts
# the composed RDP to (ε, δ).


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for an integer order: the binomial expansion, term by term in log space."""
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
    log_terms = log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    return float(special.logsumexp(log_terms))


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for a fractional order: the two-sided series with signed binomial coefficients."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    positive, negative = -math.inf, -math.inf
    for first in range(0, _SERIES_MAX_TERMS, _SERIES_BLOCK):
        i = np.arange(first, first + _SERIES_BLOCK, dtype=np.float64)
        j = alpha - i
        # gammaln is log|Γ|; binom(alpha, i) is negative when an odd number of (alpha - k), k < i, are.
        log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        is_negative = (np.maximum(0, i - math.floor(alpha) - 1) % 2) == 1
        # The paper's erfc((i - z0) / (√2·σ)) / 2 is Φ((z0 - i) / σ), taken in log space.
        log_s0 = (
            log_binom
            + i * log_q
            + j * log_1mq
            + (i * i - i) / (2 * sigma**2)
            + special.log_ndtr((z0 - i) / sigma)
        )
        log_s1 = (
            log_binom
            + j * log_q
            + i * log_1mq
            + (j * j - j) / (2 * sigma**2)
            + special.log_ndtr((j - z0) / sigma)
        )
        log_terms = np.logaddexp(log_s0, log_s1)
        small = np.flatnonzero(np.maximum(log_s0, log_s1) < _LOG_NEGLIGIBLE)
        stop = int(small[0]) + 1 if small.size else _SERIES_BLOCK
        log_terms, is_negative = log_terms[:stop], is_negative[:stop]
        if (~is_negative).any():
            positive = float(np.logaddexp(positive, special.logsumexp(log_terms[~is_negative])))
        if is_negative.any():
            negative = float(np.logaddexp(negative, special.logsumexp(log_terms[is_negative])))
        if small.size:
            if negative >= positive:  # A_alpha >= 1 in exact arithmetic: only rounding gets here
                return 0.0
            return positive + math.log1p(-math.exp(negative - positive))
    return math.inf


@functools.lru_cache(maxsize=256)
def _step_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    """RDP of one Poisson-subsampled (rate q) Gaussian mechanism (noise multiplier sigma) per order."""
    if q == 1.0:
        return tuple(alpha / (2 * sigma**2) for alpha in orders)
    result = []
    for alpha in orders:
        log_a = (
            _log_a_integer(q, sigma, int(alpha))
            if float(alpha).is_integer()
            else _log_a_fractional(q, sigma, alpha)
        )
        result.append(max(0.0, log_a / (alpha - 1)))
    return tuple(result)


def _gaussian_epsilon(
    noise_multiplier: float, sampling_rate: float, count: int, delta: float, orders: tuple[float, ...]
) -> float:
    """ε after ``count`` (Poisson-subsampled when sampling_rate < 1) Gaussian mechanisms, RDP accountant."""
    if count == 0:
        return 0.0
    total = np.asarray(_step_rdp(float(sampling_rate), float(noise_multiplier), orders)) * count
    epsilon, _order = rdp.compute_epsilon(list(orders), list(total), delta)
    return float(epsilon)


def site_epsilon(noise_multiplier: float, rounds: int, delta: float, sampling_rate: float = 1.0) -> float:
    """ε (at ``delta``) a site has spent after ``rounds`` DP-FedAvg rounds it took part in.

    Each round is one Gaussian mechanism on the sum of the sites' clipped updates: sensitivity = the clip
    norm C, noise std = ``noise_multiplier`` · C on the sum (see :func:`swarmlearning.privacy.site_dp.
    clip_and_noise`). With ``sampling_rate`` < 1 each site joins a round with that probability (Poisson
    subsampling, privacy amplification); 1.0 (the default) means every site joins every round.

    Args:
        noise_multiplier: noise std / clip norm on the aggregate, > 0.
        rounds: rounds composed, >= 0; 0 rounds cost ε = 0.
        delta: target δ, in (0, 1).
        sampling_rate: per-round participation probability, in (0, 1]; default 1.0.

    Returns:
        ε, a float >= 0 (``inf`` when no Rényi order gives a finite bound).
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_count("rounds", rounds)
    _check_delta(delta)
    _check_rate("sampling_rate", sampling_rate)
    return _gaussian_epsilon(noise_multiplier, sampling_rate, rounds, delta, RDP_ORDERS)


def dpsgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε (at ``delta``) of DP-SGD after ``steps`` optimizer steps, as Opacus's ``RDPAccountant`` counts it.

    Each step is a Poisson-subsampled Gaussian mechanism (sample rate = batch size / dataset size, noise
    std = ``noise_multiplier`` · max_grad_norm on the summed per-sample gradients), composed with the
    Rényi orders :data:`OPACUS_RDP_ORDERS` and converted to (ε, δ) as Opacus does.

    Args:
        noise_multiplier: noise std / per-sample clip norm, > 0.
        sample_rate: probability a sample is in a batch, in (0, 1].
        steps: optimizer steps, >= 0; 0 steps cost ε = 0.
        delta: target δ, in (0, 1).

    Returns:
        ε, a float >= 0.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    _check_rate("sample_rate", sample_rate)
    _check_count("steps", steps)
    _check_delta(delta)
    return _gaussian_epsilon(noise_multiplier, sample_rate, steps, delta, OPACUS_RDP_ORDERS)


def noise_for_epsilon(target_epsilon: float, delta: float, rounds: int, sampling_rate: float = 1.0) -> float:
    """The smallest noise multiplier whose :func:`site_epsilon` over ``rounds`` rounds is <= the target.

    Bisection on the noise multiplier (ε falls monotonically as noise grows); the answer errs on the
    safe side (its ε never exceeds the target) and is within 0.1% of the exact one.

    Args:
        target_epsilon: ε budget, > 0.
        delta: target δ, in (0, 1).
        rounds: rounds the budget must last, >= 1.
        sampling_rate: per-round participation probability, in (0, 1]; default 1.0.

    Returns:
        The noise multiplier (noise std / clip norm on the aggregate), > 0.

    Raises:
        ValueError: on a parameter out of range, or when even a noise multiplier of 1e6 cannot meet the
            target (an ε that small is no usable training).
    """
    _check_positive("target_epsilon", target_epsilon)
    _check_delta(delta)
    if not (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 1):
        raise ValueError(f"rounds must be an integer >= 1 (0 rounds need no noise), got {rounds!r}")
    _check_rate("sampling_rate", sampling_rate)

    def eps(sigma: float) -> float:
        return _gaussian_epsilon(sigma, sampling_rate, rounds, delta, RDP_ORDERS)

    # Bracket eps(low) > target >= eps(high): grow high from 1, then shrink low below it.
    high = 1.0
    while eps(high) > target_epsilon:
        high *= 2.0
        if high > _NOISE_SEARCH_MAX:
            raise ValueError(
                f"target_epsilon={target_epsilon!r} is out of reach for {rounds} rounds at delta={delta!r}"
                f" and sampling_rate={sampling_rate!r}:"
                f" even noise_multiplier={_NOISE_SEARCH_MAX:g} spends more"
            )
    low = high / 2.0
    while low > 1e-6 and eps(low) <= target_epsilon:
        high, low = low, low / 2.0
    while high / low > 1.0 + 1e-3:
        mid = math.sqrt(low * high)
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
