"""Every merge method against an independent NumPy reference (plain loops), plus robustness properties.

Every test runs twice: on the compiled kernels (SWARM_MERGE_KERNELS=numba) and on the torch code (=torch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import swarmlearning.merge.layers as layers
import torch
from swarmlearning.merge import METHODS, merge

pytestmark = pytest.mark.unit

WEIGHT_TOL = 1e-9  # the documented tolerance for "cumulative weight equals a cut point"
SHAPES = {"conv.weight": (4, 3, 2, 2), "conv.bias": (4,), "fc.weight": (5, 7), "fc.bias": (5,), "scale": ()}

NpModel = dict[str, np.ndarray]


@pytest.fixture(autouse=True, params=["numba", "torch"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SWARM_MERGE_KERNELS", request.param)
    return str(request.param)


# ---------------------------------------------------------------- inputs


def random_models(n: int, seed: int, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    models = []
    for i in range(n):
        model = {
            name: (torch.randn(shape, generator=gen) + 0.1 * i).to(dtype) for name, shape in SHAPES.items()
        }
        model["bn.num_batches_tracked"] = torch.tensor(10 * (i + 1), dtype=torch.int64)
        models.append(model)
    return models


def to_numpy(models: list[dict[str, torch.Tensor]]) -> list[NpModel]:
    return [{k: v.double().numpy() for k, v in m.items() if v.is_floating_point()} for m in models]


def flat(model: NpModel) -> np.ndarray:
    return np.concatenate([model[k].ravel() for k in SHAPES])


def assert_close(state: dict[str, torch.Tensor], expected: NpModel, atol: float = 1e-5) -> None:
    for name, value in expected.items():
        got = state[name]
        assert got.dtype == torch.float32 and tuple(got.shape) == value.shape, name
        np.testing.assert_allclose(got.double().numpy(), value, rtol=1e-5, atol=atol, err_msg=name)


# ---------------------------------------------------------------- NumPy references (loops on purpose)


def ref_mean(models: list[NpModel], weights: list[float]) -> NpModel:
    total = sum(weights)
    out = {}
    for name in models[0]:
        acc = np.zeros_like(models[0][name])
        for model, w in zip(models, weights, strict=True):
            acc = acc + w * model[name]
        out[name] = acc / total
    return out


def ref_weighted_median_1d(values: list[float], weights: list[float]) -> float:
    pairs = sorted(zip(values, weights, strict=True), key=lambda p: p[0])
    total = sum(weights)
    cum, lower, upper = 0.0, None, None
    for value, w in pairs:
        cum += w
        if lower is None and cum >= total / 2 - WEIGHT_TOL * total:
            lower = value
        if upper is None and cum > total / 2 + WEIGHT_TOL * total:
            upper = value
    assert lower is not None and upper is not None
    return (lower + upper) / 2


def ref_trimmed_1d(values: list[float], weights: list[float], fraction: float) -> float:
    total = sum(weights)
    pairs = sorted(zip(values, [w / total for w in weights], strict=True), key=lambda p: p[0])
    cut = fraction + WEIGHT_TOL
    lo, cum = 0, 0.0
    while lo < len(pairs) and cum + pairs[lo][1] <= cut:
        cum += pairs[lo][1]
        lo += 1
    hi, cum = len(pairs), 0.0
    while hi > 0 and cum + pairs[hi - 1][1] <= cut:
        cum += pairs[hi - 1][1]
        hi -= 1
    kept = pairs[lo:hi]
    return sum(v * w for v, w in kept) / sum(w for _, w in kept)


def ref_coordinatewise(
    models: list[NpModel], weights: list[float], fn: Callable[[list[float], list[float]], float]
) -> NpModel:
    out = {}
    for name in models[0]:
        shape = models[0][name].shape
        columns = [m[name].ravel() for m in models]
        result = np.empty(int(np.prod(shape)))
        for j in range(result.size):
            result[j] = fn([float(c[j]) for c in columns], weights)
        out[name] = result.reshape(shape)
    return out


def unflatten(vector: np.ndarray, like: NpModel) -> NpModel:
    out, pos = {}, 0
    for name in SHAPES:
        size = like[name].size
        out[name] = vector[pos : pos + size].reshape(like[name].shape)
        pos += size
    return out


def ref_geomedian(models: list[NpModel], weights: list[float]) -> NpModel:
    xs = [flat(m) for m in models]
    w = [wi / sum(weights) for wi in weights]
    z = np.zeros_like(xs[0])
    for wi, x in zip(w, xs, strict=True):
        z = z + wi * x
    for _ in range(100_000):
        dists = [max(float(np.linalg.norm(x - z)), 1e-300) for x in xs]
        betas = [wi / d for wi, d in zip(w, dists, strict=True)]
        new = np.zeros_like(z)
        for b, x in zip(betas, xs, strict=True):
            new = new + b * x
        new = new / sum(betas)
        if np.linalg.norm(new - z) <= 1e-14 * np.linalg.norm(new):
            z = new
            break
        z = new
    return unflatten(z, models[0])


def ref_krum_pick(models: list[NpModel], f: int) -> list[int]:
    xs = [flat(m) for m in models]
    n = len(xs)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((xs[i] - xs[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[: n - f - 2]))
    return sorted(range(n), key=lambda i: (scores[i], i))


# ---------------------------------------------------------------- against the references

WEIGHTS = [1.0, 3.0, 0.5, 2.0, 7.0, 1.5, 2.5]


def test_mean_matches_numpy() -> None:
    models = random_models(7, seed=1)
    result = merge("mean", models, WEIGHTS[:7])
    assert_close(result.state, ref_mean(to_numpy(models), WEIGHTS[:7]))
    assert result.selected == tuple(range(7)) and result.iterations == 0


@pytest.mark.parametrize("n", [6, 7])
def test_coordmedian_matches_numpy(n: int) -> None:
    models = random_models(n, seed=2)
    result = merge("coordmedian", models, WEIGHTS[:n])
    assert_close(result.state, ref_coordinatewise(to_numpy(models), WEIGHTS[:n], ref_weighted_median_1d))


def test_coordmedian_equal_weights_even_n_is_numpy_median() -> None:
    models = random_models(6, seed=3)
    result = merge("coordmedian", models, [2] * 6)
    np_models = to_numpy(models)
    expected = {k: np.median(np.stack([m[k] for m in np_models]), axis=0) for k in np_models[0]}
    assert_close(result.state, expected)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.3, 0.45])
def test_trimmedmean_matches_numpy(fraction: float) -> None:
    models = random_models(7, seed=4)
    result = merge("trimmedmean", models, WEIGHTS[:7], trim_fraction=fraction)
    expected = ref_coordinatewise(to_numpy(models), WEIGHTS[:7], lambda v, w: ref_trimmed_1d(v, w, fraction))
    assert_close(result.state, expected)


def test_trimmedmean_equal_weights_is_count_based() -> None:
    # 10 equal models, trim_fraction 0.3: exactly 3 values cut from each end (0.3 * 10 is inexact in floats).
    models = random_models(10, seed=5)
    result = merge("trimmedmean", models, [1] * 10, trim_fraction=0.3)
    np_models = to_numpy(models)
    expected = {}
    for name in np_models[0]:
        stacked = np.sort(np.stack([m[name] for m in np_models]), axis=0)
        expected[name] = stacked[3:7].mean(axis=0)
    assert_close(result.state, expected)


def test_geomedian_matches_numpy() -> None:
    models = random_models(7, seed=6)
    result = merge("geomedian", models, WEIGHTS[:7], geomedian_tol=1e-12, geomedian_max_iter=1000)
    assert 0 < result.iterations < 1000
    assert_close(result.state, ref_geomedian(to_numpy(models), WEIGHTS[:7]))


def test_geomedian_default_tolerance_is_near_optimum() -> None:
    models = random_models(5, seed=7)
    weights = WEIGHTS[:5]
    result = merge("geomedian", models, weights)
    assert 0 < result.iterations < 100
    np_models = to_numpy(models)
    z = flat({k: v.double().numpy() for k, v in result.state.items() if v.is_floating_point()})
    best = flat(ref_geomedian(np_models, weights))

    def objective(p: np.ndarray) -> float:
        return sum(w * float(np.linalg.norm(flat(m) - p)) for m, w in zip(np_models, weights, strict=True))

    assert objective(z) <= objective(best) * (1 + 1e-6)
    mean = flat(ref_mean(np_models, weights))
    assert objective(best) < objective(mean)  # the test can fail: the mean is not the optimum here


@pytest.mark.parametrize("f", [0, 1, 2])
def test_krum_matches_numpy(f: int) -> None:
    models = random_models(7, seed=8 + f)
    order = ref_krum_pick(to_numpy(models), f)
    result = merge("krum", models, WEIGHTS[:7], byzantine=f)
    assert result.selected == (order[0],)
    for name, tensor in models[order[0]].items():
        assert torch.equal(result.state[name], tensor), name


@pytest.mark.parametrize(("f", "keep"), [(0, None), (1, None), (2, 3), (1, 1)])
def test_multikrum_matches_numpy(f: int, keep: int | None) -> None:
    models = random_models(7, seed=11)
    np_models = to_numpy(models)
    m = 7 - f if keep is None else keep
    picked = sorted(ref_krum_pick(np_models, f)[:m])
    result = merge("multikrum", models, WEIGHTS[:7], byzantine=f, multikrum_keep=keep)
    assert result.selected == tuple(picked)
    assert_close(result.state, ref_mean([np_models[i] for i in picked], [WEIGHTS[i] for i in picked]))


@pytest.mark.parametrize("method", METHODS)
def test_small_blocks_give_the_same_result(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Layers cut into many blocks (7 values per block over all models) must merge exactly as whole layers.
    models = random_models(5, seed=12)
    whole = merge(method, models, WEIGHTS[:5], trim_fraction=0.2, byzantine=1)
    monkeypatch.setattr(layers, "BLOCK_VALUES", 7)
    chunked = merge(method, models, WEIGHTS[:5], trim_fraction=0.2, byzantine=1)
    assert whole.selected == chunked.selected
    for name in whole.state:
        torch.testing.assert_close(chunked.state[name], whole.state[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_only_one_block_of_all_models_is_stacked_at_a_time(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory bound: no torch.stack inside merge() may hold more than BLOCK_VALUES values, although
    # one layer of all 5 models (conv.weight: 48 x 5 = 240 values) is larger than that.
    # The kernels stack nothing (they read every model through its address): the torch code only.
    monkeypatch.setenv("SWARM_MERGE_KERNELS", "torch")
    models = random_models(5, seed=20)
    largest = 0
    real_stack = torch.stack

    def recording_stack(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
        nonlocal largest
        out = real_stack(tensors, dim=dim)
        largest = max(largest, out.numel())
        return out

    monkeypatch.setattr(layers, "BLOCK_VALUES", 64)
    monkeypatch.setattr(torch, "stack", recording_stack)
    merge(method, models, WEIGHTS[:5], byzantine=1)
    assert 0 < largest <= 64


def test_trimmedmean_that_would_cut_everything_falls_back_to_the_median() -> None:
    models = random_models(2, seed=21)
    trimmed = merge("trimmedmean", models, [1, 1], trim_fraction=0.5 - 1e-12)
    median = merge("coordmedian", models, [1, 1])
    for name in median.state:
        assert torch.equal(trimmed.state[name], median.state[name]), name


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [3, 4, 6])
def test_identical_models_merge_to_that_model(method: str, n: int) -> None:
    base = random_models(1, seed=100 + n)[0]
    models = [{k: v.clone() for k, v in base.items()} for _ in range(n)]
    weights = [float(w) for w in torch.randint(1, 100, (n,), generator=torch.Generator().manual_seed(n))]
    result = merge(method, models, weights)
    for name, tensor in base.items():
        assert result.state[name].dtype == tensor.dtype
        assert torch.equal(result.state[name], tensor), (method, name)


@pytest.mark.parametrize("method", ["mean", "coordmedian", "geomedian", "trimmedmean"])
def test_single_model_is_returned(method: str) -> None:
    model = random_models(1, seed=13)[0]
    result = merge(method, [model], [5])
    assert result.selected == (0,)
    for name, tensor in model.items():
        assert torch.equal(result.state[name], tensor)


def outlier_setup() -> tuple[list[dict[str, torch.Tensor]], float]:
    honest = random_models(5, seed=14)
    bound = max(float(t.abs().max()) for m in honest for k, t in m.items() if t.is_floating_point())
    attacker = {
        k: (torch.full_like(v, 1e6) if v.is_floating_point() else v.clone()) for k, v in honest[0].items()
    }
    return [*honest, attacker], bound


@pytest.mark.parametrize("method", ["coordmedian", "geomedian", "trimmedmean", "krum", "multikrum"])
def test_robust_methods_resist_one_huge_model(method: str) -> None:
    models, bound = outlier_setup()
    result = merge(method, models, [1.0] * 6, trim_fraction=0.2, byzantine=1)
    worst = max(float(t.abs().max()) for t in result.state.values() if t.is_floating_point())
    assert worst <= bound, f"{method} moved to {worst}, honest values are within {bound}"
    if method in ("krum", "multikrum"):
        assert 5 not in result.selected


def test_mean_does_not_resist_one_huge_model() -> None:
    models, bound = outlier_setup()
    result = merge("mean", models, [1.0] * 6)
    assert float(result.state["fc.weight"].min()) > 1e5 > bound


@pytest.mark.parametrize("method", ["mean", "coordmedian", "geomedian"])
def test_weight_three_equals_three_copies(method: str) -> None:
    a, b = random_models(2, seed=15)
    weighted = merge(method, [a, b], [1, 3])
    repeated = merge(method, [a, b, b, b], [1, 1, 1, 1])
    for name in a:
        torch.testing.assert_close(weighted.state[name], repeated.state[name], rtol=1e-6, atol=1e-6)


def test_weights_are_normalised_and_scale_free() -> None:
    models = random_models(3, seed=16)
    small = merge("mean", models, [1, 2, 3])
    large = merge("mean", models, [100 * 50, 200 * 50, 300 * 50])
    for name in small.state:
        torch.testing.assert_close(small.state[name], large.state[name])


@pytest.mark.parametrize("method", METHODS)
def test_zero_weight_model_contributes_nothing(method: str) -> None:
    models, _ = outlier_setup()  # the attacker (index 5) is marked inactive with weight 0
    without = merge(method, models[:5], [1, 2, 3, 4, 5], byzantine=1)
    with_zero = merge(method, models, [1, 2, 3, 4, 5, 0], byzantine=1)
    assert 5 not in with_zero.selected
    assert with_zero.selected == without.selected
    for name in without.state:
        assert torch.equal(with_zero.state[name], without.state[name]), name


# ---------------------------------------------------------------- geomedian specifics


def scalar_models(values: list[float]) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.tensor([v], dtype=torch.float64)} for v in values]


@pytest.mark.parametrize(
    ("values", "weights", "median"),
    [
        ([0.0, 1.0, 5.0, 2.0, 40.0], [1, 1, 1, 1, 1], 2.0),
        ([0.0, 1.0, 2.0, 10.0], [1, 1, 3, 1], 2.0),
        ([-7.0, 3.0, 3.5, 100.0, 4.0, 5.0, 6.0], [1, 1, 1, 1, 1, 1, 3], 5.0),
        # The weighted mean (0) is one of the models but not the median: Vardi-Zhang must step off it.
        ([-3.0, 0.0, 1.0, 1.0, 1.0], [1, 1, 1, 1, 1], 1.0),
    ],
)
def test_geomedian_is_coordmedian_in_one_dimension(
    values: list[float], weights: list[int], median: float
) -> None:
    models = scalar_models(values)
    geo = merge("geomedian", models, weights, geomedian_tol=1e-10, geomedian_max_iter=500)
    coord = merge("coordmedian", models, weights)
    assert geo.iterations < 500
    assert float(coord.state["w"]) == median
    assert float(geo.state["w"]) == pytest.approx(median, abs=1e-7)


def test_geomedian_stops_on_a_model_that_is_the_median() -> None:
    # Weighted mean is 0 = the heavy middle model, which is also the median: no update is needed.
    models = scalar_models([-1.0, 0.0, 1.0])
    result = merge("geomedian", models, [1, 5, 1])
    assert float(result.state["w"]) == 0.0
    assert result.iterations <= 1


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n", [3, 5, 8])
def test_geomedian_stops_when_rounding_ends_progress(seed: int, n: int) -> None:
    # A tolerance no float64 change can meet: the run must still end by itself (the objective stops
    # decreasing at rounding level, or an update changes nothing), long before max_iter, at the optimum.
    models = random_models(n, seed=seed)
    weights = [float(i) for i in range(1, n + 1)]
    result = merge("geomedian", models, weights, geomedian_tol=1e-300, geomedian_max_iter=5000)
    assert result.iterations < 1000
    assert_close(result.state, ref_geomedian(to_numpy(models), weights))


def test_geomedian_respects_max_iter() -> None:
    models = random_models(6, seed=17)
    result = merge("geomedian", models, WEIGHTS[:6], geomedian_tol=1e-15, geomedian_max_iter=3)
    assert result.iterations == 3


def test_geomedian_multi_dimensional_differs_from_coordmedian() -> None:
    # Sanity check that the distances span the whole model, not each coordinate: three points of a
    # triangle in 2-D have a Fermat point that is not the coordinate-wise median.
    models = [
        {"a": torch.tensor([0.0], dtype=torch.float64), "b": torch.tensor([0.0], dtype=torch.float64)},
        {"a": torch.tensor([4.0], dtype=torch.float64), "b": torch.tensor([0.0], dtype=torch.float64)},
        {"a": torch.tensor([0.0], dtype=torch.float64), "b": torch.tensor([3.0], dtype=torch.float64)},
    ]
    geo = merge("geomedian", models, [1, 1, 1], geomedian_tol=1e-12, geomedian_max_iter=1000)
    z = np.array([float(geo.state["a"]), float(geo.state["b"])])
    points = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    units = [(p - z) / np.linalg.norm(p - z) for p in points]
    assert np.linalg.norm(sum(units)) < 1e-6  # first-order optimality of the Fermat point
    assert abs(z[0]) > 0.1 and abs(z[1]) > 0.1  # the coordinate median would be (0, 0)


# ---------------------------------------------------------------- non-float tensors, dtypes


@pytest.mark.parametrize("method", ["mean", "coordmedian", "geomedian", "trimmedmean"])
def test_integer_tensors_take_the_weighted_lower_median(method: str) -> None:
    models = random_models(3, seed=18)  # num_batches_tracked = 10, 20, 30
    for m, flag in zip(models, [True, False, False], strict=True):
        m["mask"] = torch.tensor([flag, True, False])
        m["counts"] = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32) * int(m["bn.num_batches_tracked"])
    heavy_last = merge(method, models, [1, 1, 5]).state
    assert heavy_last["bn.num_batches_tracked"].dtype == torch.int64
    assert int(heavy_last["bn.num_batches_tracked"]) == 30
    assert torch.equal(heavy_last["counts"], torch.tensor([[30, 60], [90, 120]], dtype=torch.int32))
    assert torch.equal(heavy_last["mask"], torch.tensor([False, True, False]))
    equal_two = merge(method, models[:2], [1, 1]).state
    assert int(equal_two["bn.num_batches_tracked"]) == 10  # a tie takes the lower value, never 15
    assert torch.equal(equal_two["mask"], torch.tensor([False, True, False]))
    equal_three = merge(method, models, [1, 1, 1]).state
    assert int(equal_three["bn.num_batches_tracked"]) == 20


def test_krum_integer_tensors_come_from_the_picked_model() -> None:
    models, _ = outlier_setup()
    result = merge("krum", models, [1.0] * 6, byzantine=1)
    (picked,) = result.selected
    assert torch.equal(result.state["bn.num_batches_tracked"], models[picked]["bn.num_batches_tracked"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_dtype_is_kept(method: str, dtype: torch.dtype) -> None:
    models = random_models(5, seed=19, dtype=dtype)
    result = merge(method, models, WEIGHTS[:5], byzantine=1)
    reference = merge(
        method,
        [{k: v.float() if v.is_floating_point() else v for k, v in m.items()} for m in models],
        WEIGHTS[:5],
        byzantine=1,
    )
    for name, tensor in models[0].items():
        assert result.state[name].dtype == tensor.dtype
        assert result.state[name].device == tensor.device
        assert result.state[name].shape == tensor.shape
        if tensor.is_floating_point():
            tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float64: 1e-5}[dtype]
            torch.testing.assert_close(result.state[name].float(), reference.state[name], rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["mean", "geomedian", "multikrum"])
def test_half_precision_is_computed_in_wide_precision(method: str) -> None:
    # float16 tops out at 65504: a sum (or distance) of these values computed in float16 would overflow.
    models = [{"w": torch.tensor([60000.0, -60000.0, 1.0], dtype=torch.float16)} for _ in range(4)]
    result = merge(method, models, [1.0] * 4)
    assert torch.equal(result.state["w"], models[0]["w"])
