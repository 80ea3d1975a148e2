"""Write per-site data folders for the scripts here: ``python prepare_data.py OUT --nodes 2``.

Each ``OUT/node-<i>/`` gets ``train.npz`` and ``val.npz`` (arrays ``x``: float32 features, ``y``: labels)
from scikit-learn's bundled handwritten digits, split with label skew as real sites' data would be;
``OUT/test.npz`` is a common held-out test set. Your own data replaces this step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from swarmlearning.local.datasets import Shard, partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--skew", type=float, default=0.6, help="share of a class kept by its main site")
    args = parser.parse_args()
    parts = partition("digits", args.nodes, skew=args.skew, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)
    parts.test.save(args.out / "test.npz")
    for i, shard in enumerate(parts.nodes):
        folder = args.out / f"node-{i + 1}"
        folder.mkdir(exist_ok=True)
        n_val = len(shard.y) // 6
        Shard(shard.x[n_val:], shard.y[n_val:]).save(folder / "train.npz")
        Shard(shard.x[:n_val], shard.y[:n_val]).save(folder / "val.npz")
        print(f"{folder}: {len(shard.y) - n_val} training and {n_val} validation samples")


if __name__ == "__main__":
    main()
