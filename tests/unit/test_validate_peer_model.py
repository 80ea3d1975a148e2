"""validate_peer_model: names, shapes, dtypes and finiteness of a peer's state_dict against the leader's."""

from __future__ import annotations

import math

import pytest
import torch
from swarmlearning.merge import validate_peer_model

pytestmark = pytest.mark.unit


def reference() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "fc.weight": torch.randn(10, 32),
        "fc.bias": torch.zeros(10),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def test_a_matching_model_is_accepted() -> None:
    ref = reference()
    candidate = {k: v.clone() + 1 if v.is_floating_point() else v.clone() for k, v in ref.items()}
    assert validate_peer_model(ref, candidate) is None


def test_order_of_names_does_not_matter() -> None:
    ref = reference()
    assert validate_peer_model(ref, dict(reversed(list(ref.items())))) is None


def test_wrong_shape() -> None:
    ref, candidate = reference(), reference()
    candidate["fc.weight"] = torch.randn(10, 64)
    assert validate_peer_model(ref, candidate) == "tensor 'fc.weight' has shape (10, 64), expected (10, 32)"


def test_scalar_versus_vector_shape() -> None:
    ref, candidate = reference(), reference()
    candidate["bn.num_batches_tracked"] = torch.tensor([7])
    assert (
        validate_peer_model(ref, candidate) == "tensor 'bn.num_batches_tracked' has shape (1,), expected ()"
    )


def test_missing_tensors() -> None:
    ref, candidate = reference(), reference()
    del candidate["fc.bias"], candidate["conv.weight"]
    assert validate_peer_model(ref, candidate) == "missing tensors: 'conv.weight', 'fc.bias'"


def test_unexpected_tensors() -> None:
    ref, candidate = reference(), reference()
    candidate["head.weight"] = torch.zeros(2)
    assert validate_peer_model(ref, candidate) == "unexpected tensors: 'head.weight'"


def test_many_names_are_abbreviated() -> None:
    ref = reference()
    candidate = {**ref, **{f"extra.{i}": torch.zeros(1) for i in range(8)}}
    message = validate_peer_model(ref, candidate)
    assert message is not None and message.startswith("unexpected tensors: 'extra.0'")
    assert message.endswith("(+3 more)")


@pytest.mark.parametrize(
    ("name", "dtype", "expected"),
    [("fc.weight", torch.float64, "torch.float32"), ("bn.num_batches_tracked", torch.int32, "torch.int64")],
)
def test_dtype_mismatch(name: str, dtype: torch.dtype, expected: str) -> None:
    ref, candidate = reference(), reference()
    candidate[name] = candidate[name].to(dtype)
    assert validate_peer_model(ref, candidate) == f"tensor {name!r} has dtype {dtype}, expected {expected}"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(bad: float) -> None:
    ref, candidate = reference(), reference()
    candidate["fc.weight"][0, :3] = bad
    assert validate_peer_model(ref, candidate) == "tensor 'fc.weight' has 3 non-finite values (NaN or Inf)"


def test_mixed_nan_and_inf_are_counted() -> None:
    ref, candidate = reference(), reference()
    candidate["conv.weight"].view(-1)[:2] = math.nan
    candidate["conv.weight"].view(-1)[5] = math.inf
    assert validate_peer_model(ref, candidate) == "tensor 'conv.weight' has 3 non-finite values (NaN or Inf)"


def test_half_precision_inf_is_caught() -> None:
    ref = {"w": torch.zeros(4, dtype=torch.float16)}
    candidate = {"w": torch.tensor([1.0, 70000.0, 0.0, 0.0]).to(torch.float16)}  # overflows to inf
    assert validate_peer_model(ref, candidate) == "tensor 'w' has 1 non-finite values (NaN or Inf)"


def test_non_tensor_value() -> None:
    ref, candidate = reference(), reference()
    candidate["fc.bias"] = [0.0] * 10  # type: ignore[assignment]
    assert validate_peer_model(ref, candidate) == "tensor 'fc.bias' is a list, expected a torch.Tensor"


def test_not_a_mapping() -> None:
    message = validate_peer_model(reference(), [torch.zeros(1)])  # type: ignore[arg-type]
    assert message == "model is a list, expected a mapping of tensor names to tensors"
