"""Merge engine of the swarm runtime: robust, weighted, layer-by-layer merges of PyTorch state_dicts.

The round leader calls :func:`validate_peer_model` on every peer's state_dict against its own, then
:func:`merge` on the accepted ones (merge itself checks names, shapes and dtypes, not finiteness)::

    from swarmlearning.merge import merge, validate_peer_model
    result = merge("geomedian", [sd0, sd1, sd2], [w0, w1, w2])
    model.load_state_dict(result.state)

Methods (one module each, behind the registry in ``registry.py``): ``mean`` (weighted mean),
``coordmedian`` (weighted coordinate-wise median), ``geomedian`` (weighted geometric median, Weiszfeld),
``trimmedmean`` (weighted coordinate-wise trimmed mean), ``krum`` and ``multikrum`` (Blanchard et al.
2017). Weights are non-negative numbers (nodeWeightage 1-100 times sample count, see
:func:`contribution_weight`), normalised here; weight 0 means the model contributes nothing.

Shared rules (details in each module's docstring):
- Only a block of one layer of all N models is materialised at a time (``layers.BLOCK_VALUES`` = 256 Ki
  float64 values in total, whatever N), so the extra memory is a few such blocks plus one output layer
  in float64; geomedian also keeps its float64 estimate of the whole model.
- Floating tensors are computed in float64 (long weighted sums, Weiszfeld at 1e-6 and beyond, float16
  models whose sums would overflow) and cast back to the first model's dtype and device. Inputs on other
  devices are moved block by block to the first model's device.
- Integer and bool tensors (e.g. BatchNorm ``num_batches_tracked``) are never averaged: every method
  takes the per-element weighted lower median of the contributing models (krum/multikrum: of the picked
  ones), which is always one of the inputs' values and robust to one wild peer.
"""

from __future__ import annotations

from swarmlearning.merge.registry import METHODS, contribution_weight, merge
from swarmlearning.merge.types import MergeError, MergeResult
from swarmlearning.merge.validate import validate_peer_model

__all__ = [
    "METHODS",
    "MergeError",
    "MergeResult",
    "contribution_weight",
    "merge",
    "validate_peer_model",
]
