"""The torch code's fast paths (sorting networks, equal-weight shortcuts) against its torch.sort paths.

The compiled kernels are pinned off here (they have their own tests in test_merge_kernels.py)."""

from __future__ import annotations

import itertools

import pytest
import swarmlearning.merge.layers as layers
import torch
from swarmlearning.merge import merge

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_MERGE_KERNELS", "torch")


@pytest.mark.parametrize("n", [*range(1, 13), 16])
def test_sorting_network_sorts_every_zero_one_input(n: int) -> None:
    # 0-1 principle: a comparator network that sorts all 2^n zero-one inputs sorts every input.
    columns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float32).T.contiguous()
    expected = torch.sort(columns, dim=0).values
    rows = layers.sort_rows(columns)  # sorts in place
    assert torch.equal(torch.stack(rows), expected)
    assert len(layers.sorting_network(n)) <= {4: 5, 8: 19, 16: 63}.get(n, n * n)


@pytest.mark.parametrize("n", [2, 5, 16, 17, 32])
def test_weighted_network_is_a_stable_sort(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    block = torch.randint(0, 3, (n, 200), generator=gen).float()  # many ties
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    rows, wrows = layers.sort_rows_weighted(block.clone(), weights, stable=True)
    values, order = torch.sort(block, dim=0, stable=True)
    assert torch.equal(torch.stack(rows), values)
    assert torch.equal(torch.stack(wrows), weights[order])


def tied_models(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    # Small integer values: most coordinates have ties, where the order of equal values matters for
    # the weighted trimmed mean.
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randint(-2, 3, (300,), generator=gen).float(),
            "b": torch.randn(7, generator=gen),
            "step": torch.tensor(i),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("method", ["coordmedian", "trimmedmean"])
@pytest.mark.parametrize("n", [2, 3, 4, 7, 10])
@pytest.mark.parametrize("equal", [True, False])
def test_network_paths_match_the_sort_paths(
    method: str, n: int, equal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tied_models(n, seed=n)
    weights = [1.0] * n if equal else [float(1 + (3 * i) % 5) for i in range(n)]
    fast = merge(method, models, weights, trim_fraction=0.3)
    monkeypatch.setattr(layers, "NETWORK_MAX_MODELS", 0)  # torch.sort for every weighting
    monkeypatch.setattr(layers, "EQUAL_RTOL", -1.0)  # never the equal-weight shortcut
    slow = merge(method, models, weights, trim_fraction=0.3)
    for name in slow.state:
        torch.testing.assert_close(fast.state[name], slow.state[name], rtol=1e-6, atol=1e-6)


def test_mean_of_many_float16_models_is_accurate() -> None:
    gen = torch.Generator().manual_seed(0)
    models = [{"w": (1000 * torch.randn(5000, generator=gen)).half()} for _ in range(40)]
    weights = [float(i + 1) for i in range(40)]
    result = merge("mean", models, weights).state["w"]
    exact = sum(w * m["w"].double() for m, w in zip(models, weights, strict=True)) / sum(weights)
    assert result.dtype == torch.float16
    torch.testing.assert_close(result.double(), exact.half().double(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["mean", "geomedian", "multikrum"])
def test_small_stream_slices_give_the_same_result(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The streaming passes cut every tensor into STREAM_VALUES slices; 5 values must merge like whole ones.
    gen = torch.Generator().manual_seed(3)
    models = [{"w": torch.randn(4, 9, generator=gen), "b": torch.randn(3, generator=gen)} for _ in range(5)]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    whole = merge(method, models, weights, byzantine=1)
    monkeypatch.setattr(layers, "STREAM_VALUES", 5)
    sliced = merge(method, models, weights, byzantine=1)
    assert whole.selected == sliced.selected and whole.iterations == sliced.iterations
    for name in whole.state:
        torch.testing.assert_close(sliced.state[name], whole.state[name], rtol=1e-6, atol=1e-6)
