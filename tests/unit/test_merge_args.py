"""Invalid arguments to merge() and contribution_weight(): errors name the parameter and allowed values."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from swarmlearning.merge import METHODS, MergeError, contribution_weight, merge

pytestmark = pytest.mark.unit


def models(n: int) -> list[dict[str, torch.Tensor]]:
    return [{"w": torch.full((2, 3), float(i)), "n": torch.tensor(i)} for i in range(n)]


def test_methods_are_the_documented_six() -> None:
    assert METHODS == ("mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum")


def test_merge_error_is_a_value_error() -> None:
    assert issubclass(MergeError, ValueError)


def test_unknown_method_lists_the_methods() -> None:
    with pytest.raises(MergeError) as err:
        merge("median", models(3), [1, 1, 1])
    message = str(err.value)
    assert "method" in message and "'median'" in message
    assert all(m in message for m in METHODS)


@pytest.mark.parametrize("empty", [[], ()])
def test_no_models(empty: Any) -> None:
    with pytest.raises(MergeError, match=r"models must be a non-empty sequence"):
        merge("mean", empty, [])


def test_a_single_state_dict_instead_of_a_list_is_refused() -> None:
    with pytest.raises(MergeError, match=r"models must be a non-empty sequence"):
        merge("mean", models(1)[0], [1])  # type: ignore[arg-type]


@pytest.mark.parametrize("weights", [[1, 1], [1, 1, 1, 1]])
def test_weights_length_must_match(weights: list[float]) -> None:
    with pytest.raises(
        MergeError, match=rf"weights must have one number per model: got {len(weights)} for 3"
    ):
        merge("mean", models(3), weights)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "2", None, True])
def test_each_weight_must_be_finite_and_non_negative(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"weights\[1\] must be a finite number >= 0; got "):
        merge("mean", models(3), [1, bad, 1])


def test_all_zero_weights_is_an_error() -> None:
    with pytest.raises(MergeError, match=r"weights must not all be 0.*inactive"):
        merge("mean", models(3), [0, 0.0, 0])


def test_weights_may_be_numpy_or_tensor_scalars() -> None:
    import numpy as np

    result = merge("mean", models(2), [np.float32(1.0), torch.tensor(3)])  # type: ignore[list-item]
    assert torch.equal(result.state["w"], torch.full((2, 3), 0.75))


@pytest.mark.parametrize("bad", [-0.1, 0.5, 0.7, math.nan, "0.1"])
def test_trim_fraction_range(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"trim_fraction must be a number in \[0, 0\.5\); got "):
        merge("trimmedmean", models(3), [1, 1, 1], trim_fraction=bad)


def test_trim_fraction_is_checked_for_every_method() -> None:
    with pytest.raises(MergeError, match=r"trim_fraction"):
        merge("mean", models(3), [1, 1, 1], trim_fraction=0.5)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_byzantine_must_be_a_non_negative_integer(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"byzantine must be an integer >= 0; got "):
        merge("krum", models(7), [1] * 7, byzantine=bad)


@pytest.mark.parametrize("method", ["krum", "multikrum"])
def test_krum_needs_2f_plus_3_models(method: str) -> None:
    with pytest.raises(MergeError) as err:
        merge(method, models(6), [1] * 6, byzantine=2)
    message = str(err.value)
    assert "byzantine must satisfy n >= 2 * byzantine + 3" in message
    assert "n=6" in message and "allowed byzantine: 0..1" in message
    merge(method, models(6), [1] * 6, byzantine=1)  # the boundary is allowed


def test_krum_counts_only_models_with_weight() -> None:
    with pytest.raises(MergeError, match=r"n=2 models with weight > 0.*at least 3 models"):
        merge("krum", models(3), [1, 0, 1])


def test_byzantine_is_ignored_by_non_krum_methods() -> None:
    merge("mean", models(2), [1, 1], byzantine=5)


@pytest.mark.parametrize(
    ("keep", "pattern"), [(0, r"None or an integer >= 1"), (8, r"in 1\.\.7"), (2.0, r">= 1")]
)
def test_multikrum_keep_range(keep: Any, pattern: str) -> None:
    with pytest.raises(MergeError, match=rf"multikrum_keep must be .*{pattern}"):
        merge("multikrum", models(7), [1] * 7, multikrum_keep=keep)


@pytest.mark.parametrize("bad", [0, -1e-6, math.inf, math.nan])
def test_geomedian_tol_range(bad: float) -> None:
    with pytest.raises(MergeError, match=r"geomedian_tol must be a finite number > 0; got "):
        merge("geomedian", models(3), [1, 1, 1], geomedian_tol=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_geomedian_max_iter_range(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"geomedian_max_iter must be an integer >= 1; got "):
        merge("geomedian", models(3), [1, 1, 1], geomedian_max_iter=bad)


def test_models_must_share_names_shapes_and_dtypes() -> None:
    good = models(3)
    wrong_shape = [good[0], {"w": torch.zeros(3, 2), "n": torch.tensor(1)}, good[2]]
    with pytest.raises(
        MergeError, match=r"models\[1\] does not match models\[0\]: tensor 'w' has shape \(3, 2\)"
    ):
        merge("mean", wrong_shape, [1, 1, 1])
    wrong_dtype = [good[0], good[1], {"w": torch.zeros(2, 3, dtype=torch.float64), "n": torch.tensor(1)}]
    with pytest.raises(MergeError, match=r"models\[2\] .* dtype torch.float64, expected torch.float32"):
        merge("mean", wrong_dtype, [1, 1, 1])
    missing = [good[0], {"w": torch.zeros(2, 3)}]
    with pytest.raises(MergeError, match=r"models\[1\] .* missing tensors: 'n'"):
        merge("mean", missing, [1, 1])


def test_contribution_weight() -> None:
    assert contribution_weight(1, 600) == 600.0
    assert contribution_weight(100, 0) == 0.0
    assert contribution_weight(3, 10) == 30.0


@pytest.mark.parametrize("bad", [0, 101, -1, 1.5, True])
def test_contribution_weight_node_weightage_range(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"node_weightage must be an integer in 1\.\.100; got "):
        contribution_weight(bad, 10)


@pytest.mark.parametrize("bad", [-1, 2.0])
def test_contribution_weight_sample_count_range(bad: Any) -> None:
    with pytest.raises(MergeError, match=r"sample_count must be an integer >= 0; got "):
        contribution_weight(1, bad)


def test_complex_tensors_are_refused() -> None:
    with pytest.raises(
        MergeError, match=r"tensor 'c' has dtype torch.complex64: complex tensors cannot be merged"
    ):
        merge("mean", [{"c": torch.zeros(2, dtype=torch.complex64)}], [1])
