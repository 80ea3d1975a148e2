"""Merge engine of the swarm runtime: robust, weighted, layer-by-layer merges of PyTorch state_dicts.

The round leader calls :func:`validate_peer_model` on every peer's state_dict against its own, then
:func:`merge` on the accepted ones (merge itself checks names, shapes and dtypes, not finiteness)::

    from swarmlearning.merge import merge, validate_peer_model
    result = merge("geomedian", [sd0, sd1, sd2], [w0, w1, w2])
    model.load_state_dict(result.state)

Methods (one module each, behind the registry in ``registry.py``): ``mean`` (weighted mean),
``coordmedian`` (weighted coordinate-wise median), ``geomedian`` (weighted geometric median, Weiszfeld),
``trimmedmean`` (weighted coordinate-wise trimmed mean), ``krum`` and ``multikrum`` (Blanchard et al.
2017). A user's own merge is an entry point of group ``swarmlearning.merge`` selected as ``plugin:<name>``
(``plugins.py``; docs/merge-plugins.md): same checks before, its output checked after, its identity
(name, distribution, version, sha256 of its module) in the result. Weights are non-negative numbers
(nodeWeightage 1-100 times sample count, see :func:`contribution_weight`), normalised here; weight 0
means the model contributes nothing.

Shared rules (details in each module's docstring and in ``layers.py``):
- Nothing concatenates a whole model: work is per tensor, in slices (streaming passes: mean, multikrum's
  average, geomedian) or stacked blocks of one slice of all N models (at most ``layers.BLOCK_VALUES`` =
  4 Mi values whatever N; the sorting networks use 64 Ki values per model). The extra memory is a few
  blocks plus one output layer; geomedian also keeps its float64 estimate of the whole model.
- Floating tensors are computed in float32 for float32/float16/bfloat16 models (half precision widened
  slice by slice, so sums cannot overflow) and in float64 for float64 models; cumulative weights that
  decide a pick, distance sums and geomedian's estimate are float64. Results are cast back to the first
  model's dtype and device; inputs on other devices are copied to that device one tensor at a time.
- Compiled kernels (``kernels.py``, numba) run each merge step as one blocked, multithreaded pass over
  the peers' tensors (weighted mean, sorting networks for the order statistics, one fused pass per
  Weiszfeld iteration); the torch code of each method is the fallback with the same results to rounding.
  ``SWARM_MERGE_KERNELS``: ``auto`` (default: numba if it imports, loaded on the first merge of >= 16 Mi
  values over all tensors and models), ``torch`` (never), ``numba`` (always; error without numba).
  numba's on-disk cache goes to ``NUMBA_CACHE_DIR``, else beside the package, else (read-only package) under
  ``$XDG_CACHE_HOME`` or /tmp; ``kernels.warm_up()`` loads or compiles the kernels ahead of a merge.
- Integer and bool tensors (e.g. BatchNorm ``num_batches_tracked``) are never averaged: every method
  takes the per-element weighted lower median of the contributing models (krum/multikrum: of the picked
  ones), which is always one of the inputs' values and robust to one wild peer.
"""

from __future__ import annotations

from swarmlearning.merge.plugins import PluginError
from swarmlearning.merge.registry import METHODS, contribution_weight, merge
from swarmlearning.merge.types import MergeError, MergeResult, PluginInfo
from swarmlearning.merge.validate import validate_peer_model

__all__ = [
    "METHODS",
    "MergeError",
    "MergeResult",
    "PluginError",
    "PluginInfo",
    "contribution_weight",
    "merge",
    "validate_peer_model",
]
