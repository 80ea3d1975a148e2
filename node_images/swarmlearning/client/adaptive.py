"""Adaptive sync for PyTorch: choose the next sync interval from the validation-loss trend.

Rule (applied after every merge, on the merged model's loss on ``adsValData``):

* the loss fell by more than ``IMPROVEMENT`` (2 %) relative to the previous sync: local training is
  productive and the merged model is moving the right way, so sync less often: ``interval × 2``,
  at most ``MAX_FACTOR × syncFrequency``;
* otherwise (plateau or worse): the nodes drift apart or over-fit their own data, so sync more often:
  ``interval // 2``, at least ``max(1, syncFrequency // MAX_FACTOR)``.

The first measurement only sets the baseline. ``syncFrequency`` is the starting interval.
"""

from __future__ import annotations

import math

IMPROVEMENT = 0.02
MAX_FACTOR = 4


def next_sync_interval(current: int, base: int, previous_loss: float | None, loss: float) -> int:
    """Return the number of local batches until the next sync (see the module docstring)."""
    if previous_loss is None or not math.isfinite(loss) or not math.isfinite(previous_loss):
        return current
    low, high = max(1, base // MAX_FACTOR), base * MAX_FACTOR
    if loss < previous_loss * (1.0 - IMPROVEMENT):
        return min(high, current * 2)
    return max(low, current // 2)
