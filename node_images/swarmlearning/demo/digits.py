"""The ML image's default program: the digits demo of ``make demo``, run as one site of a swarm.

A site trains an MLP on its share of scikit-learn's bundled 8x8 digits with ``SwarmCallback``. Its data:
``train.npz`` and ``val.npz`` in ``--data-dir`` when a site mounts them; otherwise the site makes its own
share of the bundled set, the same label-skewed split ``make demo`` uses, from its position among the
task's peers (``SWARM_PEER_INDEX`` of ``SWARM_PEER_COUNT``, set by the operator). Sync parameters come
from the ``SWARM_*`` environment the operator sets (they override the defaults below). At the end the
site reports the merged model's accuracy on the common held-out test set, which no site trains on.

    python -m swarmlearning.demo.digits [--epochs 15] [--data-dir /data]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from swarmlearning.demo.data import env_int, site_data
from swarmlearning.local.datasets import Shard
from swarmlearning.pyt import SwarmCallback

log = logging.getLogger("swarmlearning.demo.digits")

def build_model() -> nn.Module:
    """A small MLP over the 64 pixels (about 9k parameters); `swarmctl model fetch` output loads into it."""
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))


def dataset(shard: Shard) -> TensorDataset:
    return TensorDataset(torch.from_numpy(shard.x).float(), torch.from_numpy(shard.y).long())


def accuracy(model: nn.Module, shard: Shard) -> float:
    """Share (0-1) of ``shard`` that ``model`` classifies correctly."""
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(shard.x).float()).argmax(dim=1).numpy()
    return float(np.mean(pred == shard.y))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SWARM_DATA_DIR", "/data")))
    parser.add_argument("--epochs", type=int, default=env_int("SWARM_TOTAL_EPOCHS", 15), help="(1-1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="(1-4096)")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate (0-10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value, lo, hi in (
        ("--epochs", args.epochs, 1, 1000),
        ("--batch-size", args.batch_size, 1, 4096),
    ):
        if not lo <= value <= hi:
            parser.error(f"{name} must be between {lo} and {hi}, got {value}")
    if not 0 < args.lr <= 10:
        parser.error(f"--lr must be in (0, 10], got {args.lr}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    index, count = env_int("SWARM_PEER_INDEX", 0), env_int("SWARM_PEER_COUNT", 1)
    train, val, test = site_data(args.data_dir, index, count)
    log.info("site %d of %d: %d training and %d validation samples", index, count, len(train.y), len(val.y))

    model = build_model()
    swarm = SwarmCallback(
        syncFrequency=4,
        minPeers=2,
        model=model,
        numSamples=len(train.y),
        adsValData=DataLoader(dataset(val), batch_size=256),
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        totalEpochs=args.epochs,
    )
    generator = torch.Generator().manual_seed(args.seed + index)
    loader = DataLoader(dataset(train), batch_size=args.batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    swarm.on_train_begin()
    for epoch in range(args.epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            swarm.on_batch_end()
        swarm.on_epoch_end(epoch)
        log.info("epoch %d/%d done", epoch + 1, args.epochs)
    swarm.on_train_end()
    if test is not None:
        log.info(
            "merged model: test accuracy %.4f on %d held-out samples", accuracy(model, test), len(test.y)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
