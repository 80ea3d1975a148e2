"""Safetensors bodies from a peer: ``decode_state`` + ``validate_peer_model`` end in WeightsError or a
problem string, never another exception, whatever the bytes (truncated, oversized, wrong dtypes, header
bombs)."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from swarmlearning.limits import Limits
from swarmlearning.merge.validate import validate_peer_model
from swarmlearning.sl.weights import SUPPORTED_DTYPES, WeightsError, decode_state, encode_state

from tests.fuzz.safetensors_bodies import body, reference_state, valid_body
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.unit

REF = reference_state()
SMALL = Limits(safetensors_header_bytes=4096, tensors=16)


def _decode_and_validate(data: bytes, limits: Limits | None = None) -> str:
    """What the leader does with a peer's bytes: the decode error or the validation outcome."""
    try:
        state = decode_state(data, limits)
    except WeightsError as exc:
        # The leader records this as the input's rejection reason in the round record: short, one line.
        reason = str(exc)
        assert reason and len(reason) < 600 and "\n" not in reason, reason
        return f"error: {reason}"
    problem = validate_peer_model(REF, state)
    assert problem is None or (isinstance(problem, str) and len(problem) < 1000)
    return problem or "ok"


@fuzz(300)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_and_validate(data)


@fuzz(200)
@given(st.data())
def test_truncated_valid_body(data: st.DataObject) -> None:
    full = valid_body()
    cut = data.draw(st.integers(0, len(full) - 1))
    with pytest.raises(WeightsError, match="truncated|not a valid safetensors|not JSON"):
        decode_state(full[:cut])


@fuzz(200)
@given(st.data())
def test_valid_body_with_flipped_bytes(data: st.DataObject) -> None:
    raw = bytearray(valid_body())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _decode_and_validate(bytes(raw))


_shape = st.lists(st.one_of(st.integers(0, 6), st.integers(-3, -1), st.just(1 << 62)), max_size=4)
_entry = st.fixed_dictionaries(
    {
        "dtype": st.one_of(
            st.sampled_from([*SUPPORTED_DTYPES, "F8_E8M0", "F4", "F6_E2M3", "I4"]), st.text(max_size=8)
        ),
        "shape": st.one_of(_shape, st.text(max_size=3), st.none()),
        "data_offsets": st.one_of(
            st.lists(st.integers(-2, 80), min_size=2, max_size=2),
            st.lists(st.integers(0, 1 << 63), max_size=3),
        ),
    }
)
_names = st.one_of(st.sampled_from(sorted(REF)), st.text(max_size=12), st.just("__metadata__"))


@fuzz(200)
@given(st.dictionaries(_names, st.one_of(_entry, st.integers(), st.text(max_size=4))), st.binary(max_size=96))
def test_structured_headers_with_wrong_dtypes_shapes_offsets(header: dict, data: bytes) -> None:
    _decode_and_validate(body(header, data))


@fuzz(100)
@given(st.integers(SMALL.safetensors_header_bytes + 1, (1 << 64) - 1))
def test_header_bomb_declared_length_is_refused_before_reading(declared: int) -> None:
    with pytest.raises(
        WeightsError, match="over the limit of 4096 bytes .SWARM_MAX_SAFETENSORS_HEADER_BYTES."
    ):
        decode_state(body(b"{}", declared=declared), SMALL)


def test_default_header_limit_matches_safetensors() -> None:
    with pytest.raises(
        WeightsError, match="declares 18446744073709551615 bytes, over the limit of 100000000"
    ):
        decode_state(struct.pack("<Q", (1 << 64) - 1) + b"{}")


@pytest.mark.parametrize("depth", [50, 5_000, 100_000])
def test_deeply_nested_header(depth: int) -> None:
    """Our own header check (json) must turn RecursionError into WeightsError, not let it escape."""
    with pytest.raises(WeightsError, match="not JSON|is a JSON list"):
        decode_state(body(b"[" * depth + b"]" * depth))


def test_giant_header_over_a_configured_limit() -> None:
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200)}
    with pytest.raises(WeightsError, match="SWARM_MAX_SAFETENSORS_HEADER_BYTES"):
        decode_state(body(header), SMALL)


def test_too_many_tensors() -> None:
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(17)}
    with pytest.raises(
        WeightsError, match="has 17 tensors, over the limit of 16 tensors .SWARM_MAX_TENSORS."
    ):
        decode_state(body(header), SMALL)
    header.pop("t0")
    assert len(decode_state(body(header), SMALL)) == 16


@pytest.mark.parametrize("dtype", ["F8_E8M0", "F4", "F6_E3M2", "Q8"])
def test_dtypes_without_a_torch_type(dtype: str) -> None:
    """Regression: ``F8_E8M0`` passed safetensors' parser and died in its torch conversion with a bare
    ``KeyError: 'F8_E8M0'`` (the leader recorded "not safetensors: 'F8_E8M0'")."""
    with pytest.raises(WeightsError, match=f"tensor 'a' has dtype '{dtype}': use one of F64, F32"):
        decode_state(body({"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"))


def test_big_number_in_header() -> None:
    """Regression: a 5000-digit integer made json raise a plain ValueError (int digit limit)."""
    with pytest.raises(WeightsError, match="not JSON"):
        decode_state(body(b'{"a": ' + b"9" * 5000 + b"}"))


def test_bool_tensor_with_bytes_other_than_0_and_1_is_rejected() -> None:
    """Regression: safetensors accepts any byte in a BOOL tensor; torch then sums 2 for one 'True'."""
    raw = bytearray(valid_body())
    state = decode_state(bytes(raw))
    assert validate_peer_model(REF, state) is None
    mask_at = raw.rfind(b"\x01\x00")  # mask = [True, False] is the last tensor in the data section
    raw[mask_at] = 2
    problem = validate_peer_model(REF, decode_state(bytes(raw)))
    assert problem == "tensor 'mask' (bool) has 1 bytes other than 0 and 1"


def test_wrong_dtype_decodes_but_is_rejected() -> None:
    peer = dict(REF, **{"fc.bias": torch.zeros(3, dtype=torch.float64)})
    assert validate_peer_model(REF, decode_state(encode_state(peer))) == (
        "tensor 'fc.bias' has dtype torch.float64, expected torch.float32"
    )


def test_peer_chosen_names_are_cut_in_reasons() -> None:
    """Reasons go into the round record: a 1 MB tensor name must not make it 1 MB."""
    peer = dict(REF, **{"x" * 1_000_000: torch.zeros(1)})
    problem = validate_peer_model(REF, decode_state(encode_state(peer)))
    assert problem is not None and problem.startswith("unexpected tensors: 'xxx") and len(problem) < 200
