"""Breast cancer diagnosis (30 tabular features, 2 classes) with Swarm Learning: plain PyTorch.

The only swarm-specific lines are the ``SwarmCallback`` import, its construction and the four hook
calls; with ``SWARM_LOOPBACK=True`` the script trains locally. ``swarmctl run examples/local/breast_cancer``
starts one copy per node with ``--data-dir`` pointing at that node's private share (``train.npz``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch
from swarmlearning.pyt import SwarmCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build_model() -> nn.Module:
    """A small MLP over the 30 standardised features (2 logits: benign, malignant)."""
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))


def load_split(path: Path) -> TensorDataset:
    with np.load(path) as data:
        return TensorDataset(torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).long())


def fit(
    model: nn.Module,
    train: TensorDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    callback: SwarmCallback | None = None,
) -> nn.Module:
    """Train ``model`` with SGD + momentum; calls the swarm hooks when ``callback`` is given."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    if callback:
        callback.on_train_begin()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            if callback:
                callback.on_batch_end()
        if callback:
            callback.on_epoch_end(epoch)
    if callback:
        callback.on_train_end()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "/data"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync-frequency", type=int, default=4)
    parser.add_argument("--min-peers", type=int, default=2)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--merge-fallback", default="none", help="with a plugin:<name> merge method")
    parser.add_argument("--node-weightage", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--checkin", default="snapshot", choices=("snapshot", "active", "inactive"))
    parser.add_argument("--full-quorum-wait", type=float, default=5.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=30.0)
    parser.add_argument("--quorum-timeout", type=float, default=60.0)
    # Merge-side optimiser (docs/quality.md): the round leader steps the merged update with momentum.
    parser.add_argument("--server-optimizer", default="none", choices=("none", "fedavgm"))
    parser.add_argument("--server-learning-rate", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = Path(args.data_dir)
    train = load_split(data / "train.npz")
    val = load_split(data / "val.npz")
    model = build_model()
    callback = SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.min_peers,
        maxPeers=args.max_peers,
        model=model,
        mergeMethod=args.merge_method,
        mergeFallback=args.merge_fallback,
        nodeWeightage=args.node_weightage,
        numSamples=len(train),
        useAdaptiveSync=args.adaptive,
        checkinModelOnTrainEnd=args.checkin,
        adsValData=DataLoader(val, batch_size=256),
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
        totalEpochs=args.epochs,
        fullQuorumWaitSeconds=args.full_quorum_wait,
        leaderFailureTimeoutSeconds=args.leader_failure_timeout,
        quorumTimeoutSeconds=args.quorum_timeout,
        serverOptimizer=args.server_optimizer,
        serverLearningRate=args.server_learning_rate,
        serverMomentum=args.server_momentum,
    )
    fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        callback=callback,
    )


if __name__ == "__main__":
    main()
