"""Per-node training progress (latest validation loss and metric, and the sample-level privacy ε its
DP-SGD spent) on its way into round records.

The ML process sends ``loss``/``metric``/``epsilon`` in each sync header; its SL node keeps them with
its round input and serves them to the leader next to the input (``swarmlearning.sl.peers``); the
leader records them as ``extra["loss"][name]`` / ``extra["metric"][name]`` / ``extra["epsilon"][name]``
of the round record, which the operator shows in SwarmTask status. Values come from other sites, so
they are untrusted: only finite floats pass (the ledger's canonical JSON refuses NaN/Infinity, and
status must not show garbage).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_TEXT_CHARS = 64
"""Longest text accepted as a number (an HTTP header value); longer is not a float we sent."""


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None.

    Accepts ints and floats (not bools: JSON ``true`` is no loss) and, for HTTP header values, text of
    at most ``MAX_TEXT_CHARS`` characters that parses as a float. NaN, ±Infinity and overflowing text
    (``1e999``) give None.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            return None
        try:
            number = float(value)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int too big for a float
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Progress:
    """A node's latest validation ``loss`` and ``metric``, and the ``epsilon`` its DP-SGD has spent so
    far (None = not reported or not finite)."""

    loss: float | None = None
    metric: float | None = None
    epsilon: float | None = None

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Progress:
        """From a channel sync/finish header's ``loss``, ``metric`` and ``epsilon`` keys (missing = None)."""
        return cls(finite(header.get("loss")), finite(header.get("metric")), finite(header.get("epsilon")))


def round_extra(progress: Mapping[str, Progress], accepted: Iterable[str]) -> dict[str, dict[str, float]]:
    """The round record's ``extra`` entries for the ``accepted`` participants that reported values:
    ``{"loss": {name: float}, "metric": {name: float}, "epsilon": {name: float}}``; a key is left out
    when nobody reported it."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted(accepted):
        p = progress.get(name)
        if p is None:
            continue
        for key, value in (
            ("loss", finite(p.loss)),
            ("metric", finite(p.metric)),
            ("epsilon", finite(p.epsilon)),
        ):
            if value is not None:
                out.setdefault(key, {})[name] = value
    return out
