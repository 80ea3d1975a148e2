"""Validation of a peer's state_dict against the leader's own before it enters a merge.

A peer is rejected (and recorded by the leader) when its tensor names, shapes or dtypes differ from the
reference, when a floating tensor holds NaN or +-Inf, or when a bool tensor holds bytes other than 0 and 1
(safetensors does not check them; torch treats them inconsistently). The checks are cheap except those
of values, which read every value once, one tensor at a time. Messages quote peer-chosen tensor names
cut to :data:`_MAX_NAME_CHARS`, because they end up in the round record.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_MAX_NAMES = 5
_MAX_NAME_CHARS = 80


def validate_peer_model(
    reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor]
) -> str | None:
    """Return None if ``candidate`` can be merged with ``reference``, else the first problem found, e.g.
    "tensor 'fc.weight' has shape (10, 64), expected (10, 32)", "missing tensors: ...",
    "unexpected tensors: ...", "tensor 'x' has dtype torch.float64, expected torch.float32" or
    "tensor 'x' has 3 non-finite values"."""
    problem = structure_problem(reference, candidate)
    if problem is not None:
        return problem
    for name, tensor in candidate.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum().item())
            if bad:
                return f"tensor {_name(name)} has {bad} non-finite values (NaN or Inf)"
        elif tensor.dtype == torch.bool:
            bad = int((tensor.view(torch.uint8) > 1).sum().item())
            if bad:
                return f"tensor {_name(name)} (bool) has {bad} bytes other than 0 and 1"
    return None


def structure_problem(reference: Mapping[str, torch.Tensor], candidate: object) -> str | None:
    """Names, types, shapes and dtypes of ``candidate`` against ``reference``; None if they all match."""
    if not isinstance(candidate, Mapping):
        return f"model is a {type(candidate).__name__}, expected a mapping of tensor names to tensors"
    missing = [name for name in reference if name not in candidate]
    if missing:
        return f"missing tensors: {_names(missing)}"
    unexpected = [name for name in candidate if name not in reference]
    if unexpected:
        return f"unexpected tensors: {_names(unexpected)}"
    for name, ref in reference.items():
        got = candidate[name]
        if not isinstance(got, torch.Tensor):
            return f"tensor {_name(name)} is a {type(got).__name__}, expected a torch.Tensor"
        if got.shape != ref.shape:
            return f"tensor {_name(name)} has shape {_shape(got.shape)}, expected {_shape(ref.shape)}"
        if got.dtype != ref.dtype:
            return f"tensor {_name(name)} has dtype {got.dtype}, expected {ref.dtype}"
    return None


def _name(name: object) -> str:
    text = repr(name)
    return text if len(text) <= _MAX_NAME_CHARS else f"{text[:_MAX_NAME_CHARS]}...({len(text)} chars)"


def _shape(shape: torch.Size) -> str:
    text = str(tuple(shape))
    return text if len(text) <= _MAX_NAME_CHARS else f"{text[:_MAX_NAME_CHARS]}...({len(shape)} dims)"


def _names(names: list[str]) -> str:
    shown = ", ".join(_name(n) for n in names[:_MAX_NAMES])
    return shown if len(names) <= _MAX_NAMES else f"{shown} (+{len(names) - _MAX_NAMES} more)"
