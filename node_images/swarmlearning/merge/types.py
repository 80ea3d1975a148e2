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
    """

    state: dict[str, torch.Tensor]
    selected: tuple[int, ...]
    iterations: int = 0


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
