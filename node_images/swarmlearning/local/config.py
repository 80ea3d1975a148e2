"""The local-run configuration of an example: ``examples/local/<x>/swarm.yaml``.

Example::

    dataset: digits            # digits | breast_cancer (scikit-learn's bundled sets, offline)
    nodes: 4                   # 1-16 SL/ML node pairs
    seed: 0
    split: {kind: label_skew, skew: 0.85, test_fraction: 0.25, val_fraction: 0.15}
    train: {epochs: 15, batch_size: 32, lr: 0.1}          # passed to train.py as --epochs ... and to fit()
    swarm: {sync_frequency: 4, min_peers: 2, merge_method: mean}   # to train.py as --sync-frequency ...
    timeout_seconds: 600       # the whole run, after which everything is stopped

Keys of ``train`` and ``swarm`` become command-line flags of the example's ``train.py``
(``batch_size`` -> ``--batch-size``; ``true`` -> a bare flag, ``false`` -> omitted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swarmlearning.local.datasets import DATASETS, SPLITS, Partition, partition

CONFIG_FILE = "swarm.yaml"
TRAIN_SCRIPT = "train.py"
MAX_NODES = 16


class ConfigError(ValueError):
    """The example's configuration is invalid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    example_dir: Path
    name: str
    dataset: str
    nodes: int
    seed: int = 0
    split: str = "label_skew"
    skew: float = 0.85
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    """Share of each node's data kept for its own validation (``adsValData``)."""
    train: Mapping[str, Any] = field(default_factory=dict)
    swarm: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: float = 600.0

    @property
    def script(self) -> Path:
        return self.example_dir / TRAIN_SCRIPT

    def partition(self, seed_offset: int = 0) -> Partition:
        """This run's data split: one shard per node plus the common test set (seed + ``seed_offset``)."""
        return partition(
            self.dataset,
            self.nodes,
            split=self.split,
            skew=self.skew,
            test_fraction=self.test_fraction,
            seed=self.seed + seed_offset,
        )

    def node_names(self) -> list[str]:
        return [f"node-{i + 1}" for i in range(self.nodes)]

    def script_args(self, overrides: Mapping[str, Any] | None = None) -> list[str]:
        """Flags for ``train.py`` from ``train`` and ``swarm`` (``overrides`` win)."""
        merged = {**self.train, **self.swarm, **(overrides or {})}
        args: list[str] = []
        for key, value in merged.items():
            flag = "--" + str(key).replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is False or value is None:
                continue
            else:
                args += [flag, str(value)]
        return args


def _get(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = mapping.get(key, default)
    if value is None or isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ConfigError(f"{key} must be of type {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def load_config(example_dir: str | Path, *, nodes: int | None = None, seed: int | None = None) -> RunConfig:
    """Read and check ``<example_dir>/swarm.yaml``; ``nodes`` and ``seed`` override the file's values."""
    folder = Path(example_dir)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: an example folder needs {CONFIG_FILE} and {TRAIN_SCRIPT}")
    if not (folder / TRAIN_SCRIPT).is_file():
        raise ConfigError(f"{folder / TRAIN_SCRIPT} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    known = {"dataset", "nodes", "seed", "split", "train", "swarm", "timeout_seconds", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    dataset = _get(raw, "dataset", str, "")
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    n = nodes if nodes is not None else _get(raw, "nodes", int, 2)
    if not 1 <= n <= MAX_NODES:
        raise ConfigError(f"nodes must be between 1 and {MAX_NODES}, got {n}")
    split = _get(raw, "split", dict, {})
    kind = _get(split, "kind", str, "label_skew")
    if kind not in SPLITS:
        raise ConfigError(f"split.kind must be one of {', '.join(SPLITS)}, got {kind!r}")
    skew = float(_get(split, "skew", (int, float), 0.85))
    if not 0 <= skew <= 1:
        raise ConfigError(f"split.skew must be between 0 and 1, got {skew}")
    test_fraction = float(_get(split, "test_fraction", (int, float), 0.25))
    val_fraction = float(_get(split, "val_fraction", (int, float), 0.15))
    if not 0.0 <= val_fraction <= 0.5:
        raise ConfigError(f"split.val_fraction must be between 0 and 0.5, got {val_fraction}")
    timeout = float(_get(raw, "timeout_seconds", (int, float), 600))
    if not 10 <= timeout <= 86400:
        raise ConfigError(f"timeout_seconds must be between 10 and 86400, got {timeout}")
    train = _get(raw, "train", dict, {})
    for key in ("epochs", "batch_size", "lr"):
        if key not in train:
            raise ConfigError(f"train.{key} is required (used by train.py and by the baselines)")
    return RunConfig(
        example_dir=folder.resolve(),
        name=folder.resolve().name,
        dataset=dataset,
        nodes=n,
        seed=seed if seed is not None else _get(raw, "seed", int, 0),
        split=kind,
        skew=skew,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        train=dict(train),
        swarm=dict(_get(raw, "swarm", dict, {})),
        timeout_seconds=timeout,
    )
