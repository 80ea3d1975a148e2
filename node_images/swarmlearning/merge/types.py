"""Value types shared by the merge methods: the result, the error and the prepared inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


class MergeError(ValueError):
    """Invalid merge arguments or inputs; the message names the parameter and the allowed values."""


@dataclass(frozen=True)
class MergeResult:
    """Outcome of one merge.

    state: the merged state_dict (same names, shapes, dtypes and device as the first input model).
    selected: indices (into the ``models`` argument) of the models that contributed, ascending: every
        model with a positive weight, or for krum/multikrum the picked ones.
    iterations: Weiszfeld updates performed by geomedian (0 for the other methods).
    plugin: the merge plugin's identity when a ``plugin:<name>`` method merged (None for the built-ins).
    """

    state: dict[str, torch.Tensor]
    selected: tuple[int, ...]
    iterations: int = 0
    plugin: PluginInfo | None = None


@dataclass(frozen=True)
class PluginInfo:
    """Which code a merge plugin is: what a round record names so an auditor can tell who merged.

    name: the entry point's name in group ``swarmlearning.merge`` (selected as ``plugin:<name>``).
    distribution, version: the installed distribution that declares the entry point.
    sha256: hex digest of the source file of the entry point's module, as loaded.
    target: the entry point's value, ``module:function``.
    """

    name: str
    distribution: str
    version: str
    sha256: str
    target: str = ""

    def to_record(self) -> dict[str, str]:
        """The identity as a round record's ``extra["merge_plugin"]`` holds it."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class MergeOptions:
    """Method parameters, already validated by :func:`swarmlearning.merge.merge`."""

    trim_fraction: float = 0.1
    byzantine: int = 0
    multikrum_keep: int | None = None
    geomedian_tol: float = 1e-6
    geomedian_max_iter: int = 100


@dataclass(frozen=True)
class MergeInputs:
    """The contributing models (positive weight only) with their normalised weights.

    models[k] is the caller's ``models[indices[k]]``; weights is a float64 CPU tensor summing to 1.
    """

    models: tuple[Mapping[str, torch.Tensor], ...]
    weights: torch.Tensor
    indices: tuple[int, ...]
    options: MergeOptions
