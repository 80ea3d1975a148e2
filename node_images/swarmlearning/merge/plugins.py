"""Merge plugins: a user's own merge, installed as an entry point and selected as ``plugin:<name>``.

A plugin is a function registered in group ``swarmlearning.merge`` of an installed distribution::

    [project.entry-points."swarmlearning.merge"]
    clippedmean = "my_merges.clipped:merge"

and selected in the contract with ``mergeMethod: plugin:clippedmean``. It follows :class:`MergePlugin`.
It runs only where whole inputs meet: on a single-leader round's leader (never sharded, never under
secure aggregation), after the same argument and structure checks as the built-ins, and its output is
checked before anything is shared (same names, shapes and dtypes as the inputs, finite values).

Identity (:class:`~swarmlearning.merge.types.PluginInfo`): the entry point's name, the distribution
declaring it with its version, and the sha256 of the source file of the entry point's module as
loaded; the round record names it, so an auditor can compare it with the code they reviewed. Only that
one file is fingerprinted: code the module imports from elsewhere is identified by the version alone.

Every failure is a :class:`PluginError` (a ``MergeError``) whose message names the plugin: not
installed (:class:`PluginNotFound`, listing the installed ones), not loadable (:class:`PluginLoadError`),
raised inside (:class:`PluginFailed`), or a bad result (:class:`PluginResultError`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import torch

from swarmlearning.client.params import MERGE_METHODS, PLUGIN_NAME_RE, PLUGIN_PREFIX
from swarmlearning.merge.types import MergeError, MergeOptions, PluginInfo

GROUP = "swarmlearning.merge"
"""The entry-point group plugins register in."""
_FINGERPRINTS: dict[tuple[str, int, str], str] = {}
"""sha256 of each plugin module's source as it was when imported, by (module name, module object, file)."""


class MergePlugin(Protocol):
    """The interface of a merge plugin.

    ``fn(models, weights, options) -> state_dict``:

    models: the contributing inputs, already validated: identical names, shapes and dtypes, finite
        values, on the CPU. Read-only: a plugin must not modify them in place (the leader may merge the
        same inputs again with the fallback method when the plugin fails).
    weights: a float64 CPU tensor, one weight per model, all > 0, summing to 1 (nodeWeightage x samples,
        normalised; inputs of weight 0 are left out beforehand).
    options: the contract's merge options, read-only: ``trimFraction`` (float), ``byzantine`` (int),
        ``multikrumKeep`` (int or None), ``geomedianTol`` (float), ``geomedianMaxIter`` (int).

    Returns a mapping with exactly the inputs' tensor names, each a ``torch.Tensor`` of the inputs'
    shape and dtype with finite values. Raising means the merge failed (the contract's
    ``mergeFallback`` decides what the round does).
    """

    def __call__(
        self,
        models: Sequence[Mapping[str, torch.Tensor]],
        weights: torch.Tensor,
        options: Mapping[str, Any],
    ) -> Mapping[str, torch.Tensor]: ...


class PluginError(MergeError):
    """A merge plugin could not merge; the message names the plugin and what was wrong."""

    def __init__(self, message: str, plugin: str, info: PluginInfo | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.info = info


class PluginNotFound(PluginError):
    """No entry point of that name is installed (or the name is not a plugin name)."""


class PluginLoadError(PluginError):
    """The entry point exists but its module or function cannot be loaded or fingerprinted."""


class PluginFailed(PluginError):
    """The plugin raised while merging."""


class PluginResultError(PluginError):
    """The plugin returned something other than a finite state_dict shaped like its inputs."""


@dataclass(frozen=True)
class LoadedPlugin:
    """A plugin ready to merge: its identity and its function."""

    info: PluginInfo
    fn: MergePlugin


def plugin_name(method: str) -> str | None:
    """``<name>`` of a ``plugin:<name>`` method, None for anything else (the built-ins)."""
    return method[len(PLUGIN_PREFIX) :] if method.startswith(PLUGIN_PREFIX) else None


def check_name(name: str) -> None:
    """Raise PluginNotFound when ``name`` cannot be a plugin's name (pattern, or a built-in's name)."""
    if not isinstance(name, str) or not PLUGIN_NAME_RE.match(name):
        raise PluginNotFound(
            f"merge plugin name {name!r} is invalid: 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            str(name),
        )
    if name in MERGE_METHODS:
        raise PluginNotFound(
            f"merge plugin name {name!r} is a built-in method's name: built-ins cannot be replaced "
            f"(select {name!r} itself)",
            name,
        )


def installed() -> dict[str, list[md.EntryPoint]]:
    """Entry points of group ``swarmlearning.merge`` on ``sys.path`` now, by name (a name declared by
    two distributions has two entries)."""
    out: dict[str, list[md.EntryPoint]] = {}
    for ep in md.entry_points(group=GROUP):
        out.setdefault(ep.name, []).append(ep)
    return out


def load_plugin(name: str) -> LoadedPlugin:
    """Find, import and fingerprint plugin ``name``; raises PluginNotFound or PluginLoadError."""
    check_name(name)
    found = installed()
    eps = found.get(name, [])
    if not eps:
        have = ", ".join(sorted(n for n in found if PLUGIN_NAME_RE.match(n))) or "none"
        raise PluginNotFound(
            f"merge plugin {name!r} is not installed on this node (entry point group {GROUP!r}); "
            f"installed plugins: {have}",
            name,
        )
    dists = {_dist_label(ep) for ep in eps}
    if len(dists) > 1:
        raise PluginLoadError(
            f"merge plugin {name!r} is declared by several distributions ({', '.join(sorted(dists))}): "
            "its identity would be ambiguous; uninstall all but one",
            name,
        )
    ep = eps[0]
    dist, version = (ep.dist.name, ep.dist.version) if ep.dist is not None else ("unknown", "unknown")
    try:
        fn = ep.load()
    except Exception as exc:  # any import-time error of user code
        raise PluginLoadError(
            f"merge plugin {name!r} ({dist} {version}, {ep.value}) could not be loaded: "
            f"{type(exc).__name__}: {exc}",
            name,
        ) from exc
    if not callable(fn):
        raise PluginLoadError(
            f"merge plugin {name!r} ({dist} {version}): {ep.value} is a {type(fn).__name__}, not a function",
            name,
        )
    module = sys.modules.get(ep.module)
    source = getattr(module, "__file__", None)
    if not source or not Path(source).is_file():
        raise PluginLoadError(
            f"merge plugin {name!r} ({dist} {version}): module {ep.module!r} has no source file to "
            "fingerprint (the round record must name its sha256)",
            name,
        )
    # Hashed once per imported module: a file edited on disk later must not be named for the code that
    # is still running (the import is cached in sys.modules).
    key = (ep.module, id(module), source)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return LoadedPlugin(PluginInfo(name, dist, version, _FINGERPRINTS[key], ep.value), fn)


def options_of(options: MergeOptions) -> Mapping[str, Any]:
    """The contract's merge options under their contract names, read-only."""
    return MappingProxyType(
        {
            "trimFraction": options.trim_fraction,
            "byzantine": options.byzantine,
            "multikrumKeep": options.multikrum_keep,
            "geomedianTol": options.geomedian_tol,
            "geomedianMaxIter": options.geomedian_max_iter,
        }
    )


def run_plugin(
    plugin: LoadedPlugin,
    models: Sequence[Mapping[str, torch.Tensor]],
    weights: torch.Tensor,
    options: MergeOptions,
) -> dict[str, torch.Tensor]:
    """Call the plugin and check its output against ``models[0]``; raises PluginFailed or
    PluginResultError naming the plugin."""
    info = plugin.info
    who = f"merge plugin {info.name!r} ({info.distribution} {info.version})"
    try:
        out = plugin.fn(tuple(models), weights.clone(), options_of(options))
    except Exception as exc:  # the plugin's own bug or refusal, reported as the round's merge failure
        raise PluginFailed(f"{who} raised {type(exc).__name__}: {exc}", info.name, info) from exc
    problem = result_problem(models[0], out)
    if problem:
        raise PluginResultError(f"{who} returned a bad result: {problem}", info.name, info)
    assert isinstance(out, Mapping)
    return {k: out[k] for k in models[0]}


def result_problem(reference: Mapping[str, torch.Tensor], out: object) -> str:
    """What is wrong with a plugin's output against the inputs' structure, or ""."""
    if not isinstance(out, Mapping):
        return f"expected a mapping of tensor names to tensors, got {type(out).__name__}"
    missing = sorted(set(reference) - set(out))
    extra = sorted(str(k) for k in set(out) - set(reference))
    if missing or extra:
        return "tensor names differ from the inputs': " + "; ".join(
            part
            for part in (
                f"missing {_names(missing)}" if missing else "",
                f"extra {_names(extra)}" if extra else "",
            )
            if part
        )
    for key, want in reference.items():
        got = out[key]
        if not isinstance(got, torch.Tensor):
            return f"tensor {key!r} is a {type(got).__name__}, not a torch.Tensor"
        if tuple(got.shape) != tuple(want.shape):
            return f"tensor {key!r} has shape {tuple(got.shape)}, the inputs have {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"tensor {key!r} has dtype {got.dtype}, the inputs have {want.dtype}"
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            return f"tensor {key!r} has {bad} non-finite value{'s' if bad != 1 else ''} (NaN or inf)"
    return ""


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _dist_label(ep: md.EntryPoint) -> str:
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown"


__all__ = [
    "GROUP",
    "LoadedPlugin",
    "MergePlugin",
    "PluginError",
    "PluginFailed",
    "PluginLoadError",
    "PluginNotFound",
    "PluginResultError",
    "check_name",
    "installed",
    "load_plugin",
    "options_of",
    "plugin_name",
    "result_problem",
    "run_plugin",
]
