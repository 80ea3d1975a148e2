"""Differential privacy building blocks: the ε accountant (against dp-accounting and Opacus), site-level
clip + noise of a model update, and DP-SGD for PyTorch scripts through Opacus."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import dp_accounting
import mpmath as mp
import pytest
import torch
from dp_accounting import rdp
from opacus.accountants import RDPAccountant
from swarmlearning.privacy.accountant import (
    RDP_ORDERS,
    _step_rdp,
    dpsgd_epsilon,
    noise_for_epsilon,
    site_epsilon,
)
from swarmlearning.privacy.site_dp import apply_site_dp, clip_and_noise
from swarmlearning.pyt.privacy import PrivacyTracker, make_private
from torch.utils.data import DataLoader, TensorDataset

# Opacus warns that noise without secure_mode comes from a pseudo-RNG: expected in tests.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")]

DELTA = 1e-5


# ---------------- accountant ----------------


def test_site_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    by_rounds = [site_epsilon(1.0, r, DELTA) for r in (1, 5, 20, 100)]
    assert all(a < b for a, b in zip(by_rounds, by_rounds[1:], strict=False)), by_rounds
    by_noise = [site_epsilon(s, 20, DELTA) for s in (0.5, 1.0, 2.0, 8.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:], strict=False)), by_noise
    # subsampling amplifies privacy
    assert site_epsilon(1.0, 20, DELTA, sampling_rate=0.1) < site_epsilon(1.0, 20, DELTA)


def test_site_epsilon_of_zero_rounds_is_zero() -> None:
    assert site_epsilon(1.0, 0, DELTA) == 0.0
    assert dpsgd_epsilon(1.0, 0.01, 0, DELTA) == 0.0


def test_site_epsilon_matches_dp_accounting() -> None:
    accountant = rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(1.3), 50)
    expected = accountant.get_epsilon(DELTA)
    assert site_epsilon(1.3, 50, DELTA) == pytest.approx(expected, rel=1e-12)
    assert 1.0 < expected < 100.0


@pytest.mark.parametrize(("rate", "sigma", "rounds"), [(0.2, 1.3, 50), (0.01, 0.7, 1000), (0.5, 2.0, 20)])
def test_subsampled_site_epsilon_is_within_dp_accountings_bound(
    rate: float, sigma: float, rounds: int
) -> None:
    # dp-accounting bounds the fractional orders from above (the module says why): same or a bit more ε.
    accountant = rdp.RdpAccountant(list(RDP_ORDERS))
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), rounds
    )
    bound = accountant.get_epsilon(DELTA)
    eps = site_epsilon(sigma, rounds, DELTA, rate)
    assert bound * 0.95 <= eps <= bound * (1 + 1e-9)


def _exact_rdp(q: float, sigma: float, alpha: float) -> float:
    """RDP of the Poisson-subsampled Gaussian by quadrature:
    log E_{z~N(0,σ²)}[(1-q+q·e^{(2z-1)/2σ²})^α] / (α-1)."""
    mp.mp.dps = 30
    q_, s_, a_ = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)

    def integrand(z: mp.mpf) -> mp.mpf:
        return mp.npdf(z, 0, s_) * (1 - q_ + q_ * mp.exp((2 * z - 1) / (2 * s_ * s_))) ** a_

    area = mp.quad(integrand, [-mp.inf, -10, 0, 0.5, 1, 5, 10, 20, 40, mp.inf])
    return float(mp.log(area) / (a_ - 1))


@pytest.mark.parametrize(
    ("q", "sigma", "alpha"),
    [(0.01, 0.5, 1.5), (0.125, 1.0, 1.3), (0.125, 1.0, 4.4), (0.004, 0.8, 5.8), (0.3, 2.0, 7.0)],
)
def test_step_rdp_equals_quadrature(q: float, sigma: float, alpha: float) -> None:
    (ours,) = _step_rdp(q, sigma, (alpha,))
    assert ours == pytest.approx(_exact_rdp(q, sigma, alpha), rel=1e-8)


@pytest.mark.parametrize(("target", "rounds", "rate"), [(1.0, 10, 1.0), (4.0, 100, 1.0), (2.0, 200, 0.05)])
def test_noise_for_epsilon_inverts_site_epsilon(target: float, rounds: int, rate: float) -> None:
    sigma = noise_for_epsilon(target, DELTA, rounds, rate)
    eps = site_epsilon(sigma, rounds, DELTA, rate)
    assert eps <= target
    assert eps == pytest.approx(target, rel=0.01)


def test_noise_for_epsilon_out_of_reach() -> None:
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_for_epsilon(1e-9, DELTA, 10_000)


@pytest.mark.parametrize(
    ("sigma", "rate", "steps"), [(1.1, 0.01, 1000), (0.8, 256 / 60000, 4690), (3.0, 1.0, 7)]
)
def test_dpsgd_epsilon_equals_opacus_rdp_accountant(sigma: float, rate: float, steps: int) -> None:
    opacus_accountant = RDPAccountant()
    opacus_accountant.history.append((sigma, rate, steps))
    expected = opacus_accountant.get_epsilon(DELTA)
    assert dpsgd_epsilon(sigma, rate, steps, DELTA) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: site_epsilon(0.0, 1, DELTA), "noise_multiplier"),
        (lambda: site_epsilon(-1.0, 1, DELTA), "noise_multiplier"),
        (lambda: site_epsilon(1.0, -1, DELTA), "rounds"),
        (lambda: site_epsilon(1.0, 1.5, DELTA), "rounds"),  # type: ignore[arg-type]
        (lambda: site_epsilon(1.0, 1, 0.0), "delta"),
        (lambda: site_epsilon(1.0, 1, 1.0), "delta"),
        (lambda: site_epsilon(1.0, 1, DELTA, sampling_rate=0.0), "sampling_rate"),
        (lambda: site_epsilon(1.0, 1, DELTA, sampling_rate=1.5), "sampling_rate"),
        (lambda: dpsgd_epsilon(1.0, 0.0, 10, DELTA), "sample_rate"),
        (lambda: dpsgd_epsilon(1.0, 0.1, -3, DELTA), "steps"),
        (lambda: dpsgd_epsilon(float("nan"), 0.1, 3, DELTA), "noise_multiplier"),
        (lambda: noise_for_epsilon(0.0, DELTA, 10), "target_epsilon"),
        (lambda: noise_for_epsilon(1.0, DELTA, 0), "rounds"),
        (lambda: noise_for_epsilon(1.0, 2.0, 10), "delta"),
    ],
)
def test_accountant_parameter_errors_name_the_parameter(call: Callable[[], float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_accountant_does_not_import_torch() -> None:
    code = "import sys, swarmlearning.privacy.accountant; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


# ---------------- site-level clip + noise ----------------


def _update(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "w": scale * torch.randn(40, 30, generator=gen),
        "b": scale * torch.randn(30, generator=gen),
        "h": (scale * torch.randn(50, generator=gen)).half(),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def _norm(update: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values() if t.is_floating_point()))


def _flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.double().flatten() for t in update.values() if t.is_floating_point()])


@pytest.mark.parametrize("clip", [0.5, 5.0, 1e6])
def test_clip_without_noise_keeps_direction_and_bounds_norm(clip: float) -> None:
    update = _update(torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in update.items()}
    out, norm = clip_and_noise(update, clip, 0.0, 3)
    assert norm == pytest.approx(_norm(update), rel=1e-6)
    assert _norm(out) == pytest.approx(min(norm, clip), rel=1e-3)  # half-precision tensor: 1e-3
    cosine = torch.nn.functional.cosine_similarity(_flat(out), _flat(update), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-4)
    for key in update:  # the input is not modified, dtypes kept
        assert torch.equal(update[key], before[key])
        assert out[key].dtype == update[key].dtype
    assert torch.equal(out["steps"], update["steps"]) and torch.equal(out["mask"], update["mask"])


@pytest.mark.parametrize(("sigma", "clip", "m"), [(1.0, 1.0, 1), (0.7, 3.0, 4), (2.0, 0.1, 25)])
def test_noise_std_is_sigma_clip_over_sqrt_m(sigma: float, clip: float, m: int) -> None:
    gen = torch.Generator().manual_seed(7)
    update = {"w": torch.zeros(200_000), "v": torch.zeros(300, 100), "steps": torch.tensor([3, 4])}
    out, norm = clip_and_noise(update, clip, sigma, m, generator=gen)
    assert norm == 0.0
    noise = _flat(out)
    expected = sigma * clip / math.sqrt(m)
    assert float(noise.std()) == pytest.approx(expected, rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * expected
    assert torch.equal(out["steps"], torch.tensor([3, 4]))


def test_noise_is_reproducible_with_a_generator() -> None:
    update = _update(torch.Generator().manual_seed(2))
    a, _ = clip_and_noise(update, 1.0, 1.0, 2, generator=torch.Generator().manual_seed(5))
    b, _ = clip_and_noise(update, 1.0, 1.0, 2, generator=torch.Generator().manual_seed(5))
    c, _ = clip_and_noise(update, 1.0, 1.0, 2, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["w"], c["w"])


def test_apply_site_dp_is_start_plus_clipped_update() -> None:
    gen = torch.Generator().manual_seed(3)
    start = _update(gen)
    model = {
        k: (v + 0.5 * torch.randn(v.shape, generator=gen).to(v.dtype)) if v.is_floating_point() else v + 1
        for k, v in start.items()
        if k != "mask"
    }
    model["mask"] = torch.tensor([False, False, True])
    start_copy = {k: v.clone() for k, v in start.items()}
    out, norm = apply_site_dp(model, start, 1.0, 0.0, 2)
    delta = {k: model[k].double() - start[k].double() for k in model if model[k].is_floating_point()}
    assert norm == pytest.approx(_norm(delta), rel=1e-3)
    assert norm > 1.0  # so the clip is active
    shared = {k: out[k].double() - start[k].double() for k in delta}
    assert _norm(shared) == pytest.approx(1.0, rel=1e-2)
    cosine = torch.nn.functional.cosine_similarity(_flat(shared), _flat(delta), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(out["steps"], model["steps"]) and torch.equal(out["mask"], model["mask"])
    assert all(torch.equal(start[k], start_copy[k]) for k in start)
    # with noise: start + clipped update + noise of the stated std
    big_start = {"w": torch.full((100_000,), 2.0)}
    big_model = {"w": torch.full((100_000,), 2.0)}
    noised, _ = apply_site_dp(big_model, big_start, 2.0, 1.5, 9, generator=torch.Generator().manual_seed(0))
    assert float((noised["w"] - 2.0).std()) == pytest.approx(1.5 * 2.0 / 3.0, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": float("inf")}, "clip_norm"),
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"min_participants": 0}, "min_participants"),
        ({"min_participants": 2.5}, "min_participants"),
    ],
)
def test_site_dp_parameter_errors_name_the_parameter(kwargs: dict[str, float], name: str) -> None:
    params: dict[str, float] = {"clip_norm": 1.0, "noise_multiplier": 1.0, "min_participants": 2} | kwargs
    update = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match=name):
        clip_and_noise(update, **params)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=name):
        apply_site_dp(update, update, **params)  # type: ignore[arg-type]


def test_site_dp_input_errors() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_and_noise({"w": torch.tensor([1.0, float("nan")])}, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="complex"):
        clip_and_noise({"w": torch.ones(2, dtype=torch.complex64)}, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="same tensor names"):
        apply_site_dp({"w": torch.ones(2)}, {"v": torch.ones(2)}, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match=r"start\['w'\] must match"):
        apply_site_dp({"w": torch.ones(2)}, {"w": torch.ones(3)}, 1.0, 1.0, 1)


# ---------------- DP-SGD through Opacus ----------------


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _loader(n: int = 256, batch_size: int = 32) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> None:
    loss_fn = torch.nn.CrossEntropyLoss()
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


# PyTorch warns that Opacus's backward hooks fire on a first layer whose input needs no gradient: harmless.
OPACUS_HOOK_WARNING = "ignore:Full backward hook is firing:UserWarning"


@pytest.mark.filterwarnings(OPACUS_HOOK_WARNING)
def test_make_private_trains_and_tracks_epsilon() -> None:
    net = _mlp()
    keys = list(net.state_dict().keys())
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = _loader()
    model, dp_optimizer, dp_loader, tracker = make_private(
        net,
        optimizer,
        loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=DELTA,
        noise_generator=torch.Generator().manual_seed(1),
    )
    assert isinstance(tracker, PrivacyTracker) and tracker.module is net
    assert tracker.epsilon() == 0.0 and tracker.steps == 0
    _train_epoch(model, dp_optimizer, dp_loader)

    assert tracker.steps == len(loader)
    eps = tracker.epsilon()
    assert eps > 0
    assert eps == pytest.approx(dpsgd_epsilon(1.0, 1 / len(loader), len(loader), DELTA), rel=1e-6)
    assert not tracker.budget_spent()  # no target given

    # the original module: same keys, trained parameters (shared with the wrapper)
    assert list(net.state_dict().keys()) == keys
    assert any(not torch.equal(net.state_dict()[k], initial[k]) for k in keys)
    assert {k.removeprefix("_module.") for k in model.state_dict()} == set(keys)
    for p_net, p_model in zip(net.parameters(), model.parameters(), strict=True):
        assert p_net is p_model

    # merged weights loaded into the original module are what the wrapper computes with
    merged = {k: torch.full_like(v, 0.01) for k, v in net.state_dict().items()}
    net.load_state_dict(merged)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x))
        expected = torch.full((4, 3), 0.01) + 0.01 * 16 * torch.relu(x.sum(1, keepdim=True) * 0.01 + 0.01)
        assert torch.allclose(model(x), expected, atol=1e-5)
    _train_epoch(model, dp_optimizer, dp_loader)  # training goes on from the merged weights
    assert tracker.steps == 2 * len(loader)
    assert not torch.equal(net.state_dict()["0.weight"], merged["0.weight"])


@pytest.mark.filterwarnings(OPACUS_HOOK_WARNING)
# Opacus's noise calibration tries large noise multipliers, whose best order is its largest: harmless.
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
def test_budget_spent_flips_after_the_target_epochs() -> None:
    net = _mlp()
    model, optimizer, loader, tracker = make_private(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        _loader(),
        target_epsilon=1.0,
        epochs=1,
        max_grad_norm=1.0,
        delta=DELTA,
    )
    assert tracker.target_epsilon == 1.0 and tracker.noise_multiplier > 1.0
    _train_epoch(model, optimizer, loader)
    assert 0.9 < tracker.epsilon() <= 1.0  # Opacus calibrates to within 0.01 below the target
    assert not tracker.budget_spent()
    _train_epoch(model, optimizer, loader)
    assert tracker.epsilon() > 1.0
    assert tracker.budget_spent()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, "noise_multiplier.*target_epsilon"),
        ({"noise_multiplier": 1.0, "target_epsilon": 1.0, "epochs": 1}, "noise_multiplier.*target_epsilon"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"target_epsilon": -1.0, "epochs": 1}, "target_epsilon"),
        ({"target_epsilon": 1.0}, "epochs"),
        ({"noise_multiplier": 1.0, "epochs": 2}, "epochs"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0}, "max_grad_norm"),
        ({"noise_multiplier": 1.0, "delta": 1.0}, "delta"),
    ],
)
def test_make_private_parameter_errors(kwargs: dict[str, float], pattern: str) -> None:
    net = _mlp()
    params: dict[str, float] = {"max_grad_norm": 1.0, "delta": DELTA} | kwargs
    with pytest.raises(ValueError, match=pattern):
        make_private(net, torch.optim.SGD(net.parameters(), lr=0.1), _loader(), **params)  # type: ignore[arg-type]
