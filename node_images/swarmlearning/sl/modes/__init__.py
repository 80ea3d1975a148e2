"""Round modes of the SL node: how a closed round becomes its merged model (one module each).

- ``single`` (:mod:`.single`): one leader per round fetches every whole input and merges.
- ``sharded`` (:mod:`.sharded`): every slice of the model has its own leader (reduce-scatter, then
  all-gather); no node receives another's whole model, and per-node traffic stays flat in N.
- ``secagg`` (:mod:`.secagg`): one leader per round merges masked inputs and learns only their weighted
  sum (the contract's ``secureAggregation``; mean only).

The contract's ``secureAggregation`` and ``mergeMode`` (``single``, ``sharded`` or ``auto``, the
default) and the close record decide each round's mode (:func:`mode_for`), so every participant picks
the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from swarmlearning.ledger import RoundClose
from swarmlearning.sl.modes.base import INITIAL_ROUND, RoundAbandoned, RoundContext, RoundFailed, RoundMode
from swarmlearning.sl.modes.secagg import SecureAggregation
from swarmlearning.sl.modes.sharded import DEFAULT_MODE, MODES, Sharded, is_sharded, may_shard, prepare_input
from swarmlearning.sl.modes.single import SingleLeader

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "RoundAbandoned",
    "RoundContext",
    "RoundFailed",
    "RoundMode",
    "may_shard",
    "mode_for",
    "prepare_input",
]


def mode_for(close: RoundClose, params: Mapping[str, Any]) -> RoundMode:
    """The mode of a closed round of a contract with these recorded parameters."""
    if params.get("secureAggregation") and close.round_no > INITIAL_ROUND:
        return SecureAggregation()
    return Sharded() if is_sharded(close, params) else SingleLeader()
