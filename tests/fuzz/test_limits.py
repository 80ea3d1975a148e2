"""``Limits.from_env``: defaults, overrides, and errors naming the variable and its range."""

from __future__ import annotations

import dataclasses

import pytest
from swarmlearning.limits import GIB, SPECS, Limits, LimitsError

pytestmark = pytest.mark.unit


def test_defaults_are_generous_for_real_models() -> None:
    lim = Limits.from_env({})
    assert lim == Limits()
    assert lim.model_bytes == 8 * GIB
    assert lim.safetensors_header_bytes == 100_000_000


def test_every_field_has_a_variable_and_its_default_is_in_range() -> None:
    assert set(SPECS) == {f.name for f in dataclasses.fields(Limits)}
    for name, spec in SPECS.items():
        assert spec.env.startswith("SWARM_MAX_")
        assert spec.low <= getattr(Limits(), name) <= spec.high, name


def test_variables_override_defaults() -> None:
    lim = Limits.from_env({"SWARM_MAX_MODEL_BYTES": "1_048_576", "SWARM_MAX_TENSORS": " 12 ", "OTHER": "x"})
    assert lim.model_bytes == 1 << 20
    assert lim.tensors == 12
    assert lim.record_bytes == Limits().record_bytes


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("SWARM_MAX_MODEL_BYTES", "lots"),
        ("SWARM_MAX_MODEL_BYTES", "1.5e9"),
        ("SWARM_MAX_TENSORS", "0"),
        ("SWARM_MAX_SAFETENSORS_HEADER_BYTES", "100000001"),
        ("SWARM_MAX_HEADER_COUNT", "-3"),
    ],
)
def test_bad_values_name_the_variable_and_the_range(env: str, value: str) -> None:
    spec = next(s for s in SPECS.values() if s.env == env)
    with pytest.raises(LimitsError) as err:
        Limits.from_env({env: value})
    assert str(err.value).startswith(f"{env}={value!r}: must be an integer")
    assert f"{spec.low}..{spec.high}" in str(err.value)
