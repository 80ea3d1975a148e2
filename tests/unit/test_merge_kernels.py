"""The compiled merge kernels (SWARM_MERGE_KERNELS=numba) against the torch code (=torch), which the
NumPy references of test_merge_methods.py check: many N, weightings, dtypes and shapes; plus the mode
switch and the cache directory rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import swarmlearning.merge.kernels as kernels
import torch
from swarmlearning.merge import merge

pytestmark = pytest.mark.unit

NS = [1, 2, 3, 4, 5, 8, 16, 17, 33]
WEIGHTINGS = ["equal", "unequal", "zeros", "near-equal"]
METHODS = ["coordmedian", "trimmedmean", "geomedian"]  # the mean has no kernel (layers.py says why)
# Layers of every dtype the kernels read, incl. a scalar, a non-contiguous one and one with many ties.
FLOAT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}
DISCRETE = ("count", "mask", "small")


def models_for(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(300, generator=gen)
    models = []
    for i in range(n):
        model = {
            name: (base + 0.3 * torch.randn(300, generator=gen)).to(dtype)
            for name, dtype in FLOAT_DTYPES.items()
        }
        model["ties"] = torch.randint(-2, 3, (7, 11), generator=gen).float()
        model["scalar"] = torch.randn((), generator=gen)
        model["transposed"] = torch.randn(6, 5, generator=gen).t()  # non-contiguous
        model["count"] = torch.tensor(10 * (i + 1), dtype=torch.int64)
        model["mask"] = torch.rand(13, generator=gen) > 0.5
        model["small"] = torch.randint(-100, 100, (9,), generator=gen).to(torch.int8)
        models.append(model)
    return models


def weights_for(n: int, weighting: str) -> list[float]:
    if weighting == "equal":
        return [3.0] * n
    if weighting == "near-equal":  # not equal (> 1e-12 apart), but cumulative weights hit 1/2 within 1e-9
        return [1.0 + (1e-11 if i == 0 else 0.0) for i in range(n)]
    weights = [float(1 + (7 * i) % 5) for i in range(n)]
    if weighting == "zeros" and n > 1:
        weights[1::3] = [0.0] * len(weights[1::3])
    return weights


def run(path: str, method: str, models: list[dict[str, torch.Tensor]], weights: list[float]) -> object:
    old = os.environ.get(kernels.ENV)
    os.environ[kernels.ENV] = path
    try:
        return merge(method, models, weights, trim_fraction=0.2)
    finally:
        if old is None:
            del os.environ[kernels.ENV]
        else:
            os.environ[kernels.ENV] = old


def assert_matches(method: str, fast: dict[str, torch.Tensor], slow: dict[str, torch.Tensor]) -> None:
    for name, want in slow.items():
        got = fast[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if method == "coordmedian" or name in DISCRETE:
            # A value or the midpoint of two, rounded once: the same bits on both paths.
            assert torch.equal(got, want), name
        elif want.dtype == torch.float32 or want.dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        else:  # half precision: both round the same float32 value, up to one unit in the last place
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("method", METHODS)
def test_kernels_match_the_torch_code(method: str, n: int, weighting: str) -> None:
    models = models_for(n, seed=n)
    weights = weights_for(n, weighting)
    fast = run("numba", method, models, weights)
    slow = run("torch", method, models, weights)
    assert fast.selected == slow.selected  # type: ignore[attr-defined]
    if method == "geomedian":  # summation order differs (per block vs per slice): stopping may move by one
        assert abs(fast.iterations - slow.iterations) <= 1  # type: ignore[attr-defined]
    assert_matches(method, fast.state, slow.state)  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["coordmedian", "trimmedmean"])
@pytest.mark.parametrize("n", [4, 16])
def test_trimmed_fractions_and_cut_everything(method: str, n: int) -> None:
    models = models_for(n, seed=40 + n)
    for fraction in (0.0, 0.1, 0.25, 0.3, 0.5 - 1e-12):
        for weights in ([1.0] * n, weights_for(n, "unequal")):
            os.environ[kernels.ENV] = "numba"
            try:
                fast = merge(method, models, weights, trim_fraction=fraction).state
                os.environ[kernels.ENV] = "torch"
                slow = merge(method, models, weights, trim_fraction=fraction).state
            finally:
                del os.environ[kernels.ENV]
            assert_matches(method, fast, slow)


def test_many_blocks_with_a_ragged_tail_match(monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrunk block sizes: 300 values fall into many blocks and a partial last one.
    monkeypatch.setattr(kernels, "_SORT_BYTES", 1)
    monkeypatch.setattr(kernels, "_GEO_BYTES", 1)
    models = models_for(5, seed=7)
    weights = weights_for(5, "unequal")
    for method in METHODS:
        assert_matches(
            method, run("numba", method, models, weights).state, run("torch", method, models, weights).state
        )  # type: ignore[attr-defined]


def test_krum_and_multikrum_agree_on_both_paths() -> None:
    models = models_for(9, seed=3)
    models[4] = {k: v * 50 if v.is_floating_point() else v for k, v in models[4].items()}
    weights = weights_for(9, "unequal")
    for method in ("krum", "multikrum"):
        os.environ[kernels.ENV] = "numba"
        try:
            fast = merge(method, models, weights, byzantine=2)
            os.environ[kernels.ENV] = "torch"
            slow = merge(method, models, weights, byzantine=2)
        finally:
            del os.environ[kernels.ENV]
        assert fast.selected == slow.selected and 4 not in fast.selected
        assert_matches(method, fast.state, slow.state)


def test_mode_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [torch.zeros(4), torch.ones(4)]
    monkeypatch.setenv(kernels.ENV, "torch")
    assert not kernels.supported(rows)
    monkeypatch.setenv(kernels.ENV, "numba")
    assert kernels.supported(rows)
    assert not kernels.supported([r.to(torch.complex64) for r in rows])  # dtype without a kernel
    assert not kernels.supported([torch.zeros(0), torch.zeros(0)])
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(ValueError, match="SWARM_MERGE_KERNELS must be one of auto, torch, numba; got 'fast'"):
        kernels.supported(rows)


def test_auto_mode_leaves_small_merges_to_torch_until_numba_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(kernels.ENV, "auto")
    monkeypatch.setattr(kernels, "_module", None)  # as in a fresh process
    rows = [torch.zeros(8), torch.ones(8)]
    models = [{"a": rows[0], "b": torch.zeros(3)}, {"a": rows[1], "b": torch.zeros(3)}]
    kernels.prepare(models)  # 22 values: too few to load numba for
    assert not kernels.supported(rows)
    monkeypatch.setattr(kernels, "AUTO_MIN_VALUES", 22)
    kernels.prepare(models)  # big enough: loads numba
    assert kernels.supported(rows)
    monkeypatch.setattr(kernels, "AUTO_MIN_VALUES", 1 << 40)
    kernels.prepare(models)
    assert kernels.supported(rows)  # loaded: every size


def test_cache_dir_falls_back_when_the_package_is_read_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = os.path.dirname(os.path.abspath(kernels.__file__))
    real_access = os.access

    def access(path: object, mode: int) -> bool:  # root may write anywhere: pretend the package is read-only
        return False if str(path).startswith(package) else real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.cache_dir() == str(tmp_path / "swarmlearning" / "numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/else")
    assert kernels.cache_dir() == "/somewhere/else"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setattr(os, "access", real_access)
    assert kernels.cache_dir() is None  # writable package: numba's own __pycache__


def test_warm_up_loads_the_kernels_unless_they_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.ENV, "torch")
    assert kernels.warm_up() is False
    monkeypatch.setenv(kernels.ENV, "numba")
    assert kernels.warm_up((torch.float32, torch.bfloat16)) is True


def test_equal_trim_that_leaves_nothing_is_refused() -> None:
    rows = [torch.zeros(4), torch.ones(4)]
    out = torch.empty(4)
    with pytest.raises(ValueError, match="trim must leave at least one of the 2 values: got low=1, high=1"):
        kernels.order_statistic(
            rows, torch.tensor([0.5, 0.5], dtype=torch.float64), out, statistic="trimmed", trim=(1, 1)
        )
