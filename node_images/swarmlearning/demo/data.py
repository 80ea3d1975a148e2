"""The demo's data, for every platform's demo program (no ML framework imported): a site's share of
scikit-learn's bundled digits, or the files mounted in its data folder."""

from __future__ import annotations

import os
from pathlib import Path

from swarmlearning.local.datasets import Shard, partition

SKEW = 0.85
"""Share of each class kept by its primary site (label skew), as in examples/local/digits/swarm.yaml."""
TEST_FRACTION = 0.25
VAL_FRACTION = 0.15
SPLIT_SEED = 0


def site_data(data_dir: Path, index: int, count: int) -> tuple[Shard, Shard, Shard | None]:
    """(train, val, test): the mounted files when present, else this site's share of the bundled set."""
    if (data_dir / "train.npz").is_file():
        train = Shard.load(data_dir / "train.npz")
        val_path = data_dir / "val.npz"
        val = Shard.load(val_path) if val_path.is_file() else train
        test_path = data_dir / "test.npz"
        return train, val, Shard.load(test_path) if test_path.is_file() else None
    if not 0 <= index < count:
        raise ValueError(
            f"SWARM_PEER_INDEX must be in 0..{count - 1} (SWARM_PEER_COUNT={count}), got {index}"
        )
    parts = partition(
        "digits", count, split="label_skew", skew=SKEW, test_fraction=TEST_FRACTION, seed=SPLIT_SEED
    )
    shard = parts.nodes[index]
    n_val = int(round(len(shard.y) * VAL_FRACTION))
    return Shard(shard.x[n_val:], shard.y[n_val:]), Shard(shard.x[:n_val], shard.y[:n_val]), parts.test


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
