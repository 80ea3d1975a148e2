"""The safetensors framing every party checks before parsing weights, without any ML framework.

:func:`check_framing` reads bytes another party wrote (a peer's round input, a merged model, the ML
process's payload) and checks them against :class:`swarmlearning.limits.Limits` before a safetensors
parser sees them; used by the SL node (torch) and by the ML callbacks (torch, Keras on TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import load as _np_load
from safetensors.numpy import save as _np_save

from swarmlearning.limits import Limits, describe

_HEADER_LEN = struct.Struct("<Q")
METADATA_KEY = "__metadata__"
SUPPORTED_DTYPES = (
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64",
)  # fmt: skip
"""safetensors dtypes that map to a torch dtype (others, e.g. F8_E8M0 or F4, are refused)."""


class WeightsError(ValueError):
    """Bytes that are not a safetensors model this node accepts; the message says what and the limit."""


def check_framing(data: bytes, limits: Limits | None = None) -> dict[str, object]:
    """Check the safetensors framing of ``data`` without building tensors; returns the parsed header.

    Raises WeightsError when the body is truncated, declares a header over
    ``limits.safetensors_header_bytes``, has a header that is not a JSON object, more tensors than
    ``limits.tensors``, or an entry without a supported dtype.
    """
    lim = limits or Limits.from_env()
    if len(data) < _HEADER_LEN.size:
        raise WeightsError(f"truncated safetensors body: {len(data)} bytes, the header length alone needs 8")
    (hlen,) = _HEADER_LEN.unpack_from(data)
    if hlen > lim.safetensors_header_bytes:
        raise WeightsError(
            f"safetensors header declares {hlen} bytes, over the limit of "
            f"{describe(lim, 'safetensors_header_bytes')}"
        )
    if _HEADER_LEN.size + hlen > len(data):
        raise WeightsError(
            f"truncated safetensors body: header declares {hlen} bytes, only "
            f"{len(data) - _HEADER_LEN.size} follow"
        )
    raw = data[_HEADER_LEN.size : _HEADER_LEN.size + hlen]
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, 4300+ digit ints; nesting
        raise WeightsError(f"safetensors header is not JSON: {short(exc)}") from exc
    if not isinstance(header, dict):
        raise WeightsError(f"safetensors header is a JSON {type(header).__name__}, expected an object")
    n = len(header) - (METADATA_KEY in header)
    if n > lim.tensors:
        raise WeightsError(f"safetensors body has {n} tensors, over the limit of {describe(lim, 'tensors')}")
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in SUPPORTED_DTYPES:
            raise WeightsError(
                f"tensor {short(name)!r} has dtype {short(dtype)!r}: use one of {', '.join(SUPPORTED_DTYPES)}"
            )
    return header


def digest(data: bytes) -> str:
    """SHA-256 hex digest of serialised weights, as recorded in the ledger."""
    return hashlib.sha256(data).hexdigest()


def short(value: object, limit: int = 200) -> str:
    """``str(value)`` cut to ``limit`` characters: messages quote peer-controlled text."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialise named numpy arrays (Keras weights, PEFT adapters) to safetensors bytes."""
    return _np_save({name: np.ascontiguousarray(value) for name, value in arrays.items()})


def decode_arrays(data: bytes, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into numpy arrays after :func:`check_framing`; raises WeightsError."""
    check_framing(data, limits)
    try:
        return _np_load(bytes(data))
    except Exception as exc:  # the Rust parser raises assorted types; all mean "bad body"
        raise WeightsError(f"not a valid safetensors body: {short(exc)}") from exc
