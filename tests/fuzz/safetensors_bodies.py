"""Builders of safetensors bodies, valid and not, shared by the Hypothesis tests and atheris targets."""

from __future__ import annotations

import json
import struct
from typing import Any

import torch
from swarmlearning.sl.weights import encode_state


def reference_state() -> dict[str, torch.Tensor]:
    """A small model: what a leader compares a peer's input against."""
    return {
        "fc.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "fc.bias": torch.zeros(3),
        "bn.num_batches_tracked": torch.tensor(5, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
    }


def body(header: Any, data: bytes = b"", declared: int | None = None) -> bytes:
    """A safetensors body from a header object (or raw header bytes) and data; ``declared`` overrides
    the header length prefix."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def valid_body() -> bytes:
    return encode_state(reference_state())
