"""Method registry and the public :func:`merge` entry point: argument checks, weights, dispatch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch

from swarmlearning.merge import kernels, plugins
from swarmlearning.merge.geomedian import merge_geomedian
from swarmlearning.merge.krum import merge_krum, merge_multikrum
from swarmlearning.merge.mean import merge_mean
from swarmlearning.merge.median import merge_coordmedian
from swarmlearning.merge.trimmed import merge_trimmedmean
from swarmlearning.merge.types import MergeError, MergeInputs, MergeOptions, MergeResult
from swarmlearning.merge.validate import structure_problem

MergeFn = Callable[[MergeInputs], MergeResult]

_REGISTRY: dict[str, MergeFn] = {
    "mean": merge_mean,
    "coordmedian": merge_coordmedian,
    "geomedian": merge_geomedian,
    "trimmedmean": merge_trimmedmean,
    "krum": merge_krum,
    "multikrum": merge_multikrum,
}

METHODS: tuple[str, ...] = ("mean", "coordmedian", "geomedian", "trimmedmean", "krum", "multikrum")

NODE_WEIGHTAGE_RANGE = (1, 100)


def contribution_weight(node_weightage: int, sample_count: int) -> float:
    """Merge weight of one peer: nodeWeightage (int 1-100, HPE's default 1) times its sample count (>= 0).

    A node with checkinModelOnTrainEnd=inactive passes weight 0 to :func:`merge` instead.
    """
    lo, hi = NODE_WEIGHTAGE_RANGE
    if (
        isinstance(node_weightage, bool)
        or not isinstance(node_weightage, int)
        or not lo <= node_weightage <= hi
    ):
        raise MergeError(f"node_weightage must be an integer in {lo}..{hi}; got {node_weightage!r}")
    if isinstance(sample_count, bool) or not isinstance(sample_count, int) or sample_count < 0:
        raise MergeError(f"sample_count must be an integer >= 0; got {sample_count!r}")
    return float(node_weightage * sample_count)


def merge(
    method: str,
    models: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    trim_fraction: float = 0.1,
    byzantine: int = 0,
    multikrum_keep: int | None = None,
    geomedian_tol: float = 1e-6,
    geomedian_max_iter: int = 100,
) -> MergeResult:
    """Merge state_dicts layer by layer with one of :data:`METHODS`, or a plugin as ``plugin:<name>``.

    models: state_dicts with identical names, shapes and dtypes (checked; finiteness is not checked here,
        run :func:`validate_peer_model` first). The result has the first model's dtypes and devices.
    weights: one finite number >= 0 per model (e.g. :func:`contribution_weight`), normalised here; a model
        with weight 0 contributes nothing and is ignored by every method; not all may be 0.
    trim_fraction: trimmedmean, share of the total weight cut from each end per coordinate, in [0, 0.5).
    byzantine: krum/multikrum, number f >= 0 of assumed attackers; needs n >= 2f + 3 weighted models.
    multikrum_keep: multikrum, number m of best-scored models averaged, 1..n; default n - f.
    geomedian_tol: geomedian, stop when the update's norm <= tol * the estimate's norm (> 0, default 1e-6).
    geomedian_max_iter: geomedian, at most this many Weiszfeld updates (>= 1, default 100).
    Raises MergeError (a ValueError) naming the parameter and the allowed values.

    ``plugin:<name>`` (``swarmlearning.merge.plugins``): the same checks, then the installed entry
    point ``<name>`` of group ``swarmlearning.merge`` merges the positive-weight models with their
    normalised weights and these options; its output is checked (names, shapes, dtypes, finite) and the
    result carries the plugin's identity. Its failures are ``plugins.PluginError`` (a MergeError).
    Built-in names always mean the built-in.
    """
    plugin = plugins.plugin_name(method) if isinstance(method, str) else None
    if plugin is not None:
        plugins.check_name(plugin)
    elif not isinstance(method, str) or method not in _REGISTRY:
        raise MergeError(f"method must be one of {', '.join(METHODS)} or plugin:<name>; got {method!r}")
    if isinstance(models, Mapping) or not isinstance(models, Sequence) or len(models) == 0:
        raise MergeError("models must be a non-empty sequence of state_dicts; got none")
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence) or len(weights) != len(models):
        count = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise MergeError(f"weights must have one number per model: got {count} for {len(models)} models")
    options = _check_options(trim_fraction, byzantine, multikrum_keep, geomedian_tol, geomedian_max_iter)
    raw = _check_weights(weights)
    for i, model in enumerate(models):
        problem = structure_problem(models[0], model)
        if problem is not None:
            raise MergeError(f"models[{i}] does not match models[0]: {problem}")
    for name, tensor in models[0].items():
        if tensor.is_complex():
            raise MergeError(f"tensor {name!r} has dtype {tensor.dtype}: complex tensors cannot be merged")
    indices = tuple(i for i, w in enumerate(raw) if w > 0)
    if method in ("krum", "multikrum"):
        _check_krum(method, len(indices), options)
    total = math.fsum(raw[i] for i in indices)
    normalised = torch.tensor([raw[i] / total for i in indices], dtype=torch.float64)
    inputs = MergeInputs(
        models=tuple(models[i] for i in indices), weights=normalised, indices=indices, options=options
    )
    if plugin is not None:
        loaded = plugins.load_plugin(plugin)
        state = plugins.run_plugin(loaded, inputs.models, inputs.weights, options)
        return MergeResult(state=state, selected=indices, plugin=loaded.info)
    kernels.prepare(inputs.models)
    return _REGISTRY[method](inputs)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_weights(weights: Sequence[float]) -> list[float]:
    raw: list[float] = []
    for i, w in enumerate(weights):
        if isinstance(w, torch.Tensor) and w.numel() == 1:
            w = w.item()
        if not _is_real(w) or not math.isfinite(float(w)) or float(w) < 0:
            raise MergeError(f"weights[{i}] must be a finite number >= 0; got {w!r}")
        raw.append(float(w))
    if not any(w > 0 for w in raw):
        raise MergeError(
            "weights must not all be 0: at least one model needs a positive weight "
            "(checkinModelOnTrainEnd=inactive gives 0; not all nodes may be inactive)"
        )
    return raw


def _check_options(
    trim_fraction: float, byzantine: int, multikrum_keep: int | None, tol: float, max_iter: int
) -> MergeOptions:
    if not _is_real(trim_fraction) or not 0 <= float(trim_fraction) < 0.5:
        raise MergeError(f"trim_fraction must be a number in [0, 0.5); got {trim_fraction!r}")
    if not _is_int(byzantine) or byzantine < 0:
        raise MergeError(f"byzantine must be an integer >= 0; got {byzantine!r}")
    if multikrum_keep is not None and (not _is_int(multikrum_keep) or multikrum_keep < 1):
        raise MergeError(f"multikrum_keep must be None or an integer >= 1; got {multikrum_keep!r}")
    if not _is_real(tol) or not math.isfinite(float(tol)) or float(tol) <= 0:
        raise MergeError(f"geomedian_tol must be a finite number > 0; got {tol!r}")
    if not _is_int(max_iter) or max_iter < 1:
        raise MergeError(f"geomedian_max_iter must be an integer >= 1; got {max_iter!r}")
    return MergeOptions(
        trim_fraction=float(trim_fraction),
        byzantine=int(byzantine),
        multikrum_keep=None if multikrum_keep is None else int(multikrum_keep),
        geomedian_tol=float(tol),
        geomedian_max_iter=int(max_iter),
    )


def _check_krum(method: str, n: int, options: MergeOptions) -> None:
    f = options.byzantine
    if n < 2 * f + 3:
        allowed = f"0..{(n - 3) // 2}" if n >= 3 else "none (krum needs at least 3 models with weight > 0)"
        raise MergeError(
            f"byzantine must satisfy n >= 2 * byzantine + 3 for {method}: n={n} models with weight > 0, "
            f"byzantine={f}; allowed byzantine: {allowed}"
        )
    keep = options.multikrum_keep
    if method == "multikrum" and keep is not None and keep > n:
        raise MergeError(f"multikrum_keep must be in 1..{n} (the models with weight > 0); got {keep}")
