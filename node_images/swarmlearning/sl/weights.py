"""Model weights as bytes: safetensors in, safetensors out (never pickle), and their digests."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save


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


def decode_state(data: bytes) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes into CPU tensors."""
    return _st_load(data)


def digest(data: bytes) -> str:
    """SHA-256 hex digest of serialised weights, as recorded in the ledger."""
    return hashlib.sha256(data).hexdigest()
