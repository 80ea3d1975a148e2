"""Model weights as bytes: safetensors in, safetensors out (never pickle), and their digests.

``decode_state`` reads bytes another party wrote (a peer's round input, a merged model, the ML
process's payload), so it checks the framing against :class:`swarmlearning.limits.Limits` before the
safetensors parser sees it and turns every failure into :class:`WeightsError`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from swarmlearning.limits import Limits
from swarmlearning.weights_format import (
    METADATA_KEY,
    SUPPORTED_DTYPES,
    WeightsError,
    check_framing,
    digest,
    short,
)

__all__ = [
    "METADATA_KEY",
    "SUPPORTED_DTYPES",
    "WeightsError",
    "check_framing",
    "decode_state",
    "digest",
    "encode_state",
]


def encode_state(state: Mapping[str, object]) -> bytes:
    """Serialise a ``state_dict`` to safetensors bytes.

    Non-tensor entries (e.g. ``_extra_state`` objects) are skipped; tensors are copied to contiguous,
    unshared CPU storage because safetensors refuses tied or strided views.
    """
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    return _st_save(tensors)


def decode_state(data: bytes, limits: Limits | None = None) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes into CPU tensors; raises WeightsError (see :func:`check_framing`, plus
    whatever the safetensors parser refuses: bad offsets, shapes not matching the data, bad metadata)."""
    check_framing(data, limits)
    try:
        return _st_load(bytes(data))
    except Exception as exc:  # the Rust parser and torch conversion raise assorted types; all mean "bad body"
        raise WeightsError(f"not a valid safetensors body: {short(exc)}") from exc
