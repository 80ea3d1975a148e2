"""Data sets for local runs: scikit-learn's bundled sets (offline), split into a common held-out test set
and one private training share per node, IID or with label skew.

Label skew: class ``c`` is a *primary* class of node ``c mod N``; a share ``skew`` of each class's
training samples goes to its primary node, the rest is spread evenly over the other nodes. With 10
classes and 4 nodes every node holds mostly 2–3 classes and a little of every other class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "breast_cancer")
SPLITS = ("label_skew", "iid")


@dataclass(frozen=True)
class Shard:
    """Features (float32, standardised with training statistics) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, x=self.x, y=self.y)

    @classmethod
    def load(cls, path: str | Path) -> Shard:
        with np.load(path) as data:
            return cls(data["x"], data["y"])

    def class_counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.y, minlength=n_classes).tolist()


@dataclass(frozen=True)
class Partition:
    nodes: tuple[Shard, ...]
    test: Shard
    n_classes: int


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a bundled scikit-learn data set (``digits`` or ``breast_cancer``)."""
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
    elif name == "breast_cancer":
        bunch = datasets.load_breast_cancer()
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def partition(
    name: str,
    nodes: int,
    *,
    split: str = "label_skew",
    skew: float = 0.8,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Partition:
    """Split data set ``name`` for ``nodes`` nodes (≥ 1).

    ``split``: ``label_skew`` or ``iid``; ``skew``: share (0–1) of a class kept by its primary node;
    ``test_fraction``: share (0.05–0.5) held out as the common test set, stratified by class.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be between 0 and 1, got {skew}")
    if not 0.05 <= test_fraction <= 0.5:
        raise ValueError(f"test_fraction must be between 0.05 and 0.5, got {test_fraction}")
    x, y = load_dataset(name)
    n_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_all = np.concatenate(train_idx)
    mean = x[train_all].mean(axis=0)
    std = x[train_all].std(axis=0)
    std[std == 0] = 1.0
    xs = ((x - mean) / std).astype(np.float32)

    per_node: list[list[np.ndarray]] = [[] for _ in range(nodes)]
    if split == "iid":
        for k, chunk in enumerate(np.array_split(rng.permutation(train_all), nodes)):
            per_node[k].append(chunk)
    else:
        for c, idx in enumerate(train_idx):
            primary = c % nodes
            n_primary = round(len(idx) * skew) if nodes > 1 else len(idx)
            per_node[primary].append(idx[:n_primary])
            others = [k for k in range(nodes) if k != primary]
            if not others:  # one node holds everything
                continue
            for k, chunk in zip(others, np.array_split(idx[n_primary:], len(others)), strict=False):
                per_node[k].append(chunk)
    shards = []
    for parts in per_node:
        idx = rng.permutation(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)
        shards.append(Shard(xs[idx], y[idx]))
    test = np.concatenate(test_idx)
    return Partition(tuple(shards), Shard(xs[test], y[test]), n_classes)
