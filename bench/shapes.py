"""Realistic layer layouts for synthetic models: a few big matrices plus their biases."""

from __future__ import annotations

import math

# Shares of the parameters in four weight matrices (like an embedding, two hidden layers and a head).
MATRIX_SHARES = (0.45, 0.3, 0.15, 0.1)
COLUMNS = 1024


def layer_shapes(n_params: int) -> list[tuple[int, ...]]:
    """Shapes whose element counts add up to exactly ``n_params`` (>= 16384): four (rows, 1024) matrices
    holding about 45/30/15/10 % of the parameters, one bias per matrix, and a 1-D remainder tensor."""
    if not isinstance(n_params, int) or isinstance(n_params, bool) or n_params < 16384:
        raise ValueError(f"n_params must be an integer >= 16384; got {n_params!r}")
    shapes: list[tuple[int, ...]] = []
    used = 0
    for share in MATRIX_SHARES:
        rows = math.floor(share * n_params / (COLUMNS + 1))  # >= 1 for n_params >= 16384
        shapes += [(rows, COLUMNS), (rows,)]
        used += rows * (COLUMNS + 1)
    if used < n_params:
        shapes.append((n_params - used,))
    return shapes


def human(n: int) -> str:
    """1000000 -> '1M', 10000000 -> '10M', 1500 -> '1500'."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)
