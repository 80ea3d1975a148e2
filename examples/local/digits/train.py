"""Handwritten digits (8x8 images, 10 classes) with Swarm Learning: a plain PyTorch training script.

The only swarm-specific lines are the ``SwarmCallback`` import, its construction and the four hook
calls; with ``SWARM_LOOPBACK=True`` the script trains locally. ``swarmctl run examples/local/digits``
starts one copy per node with ``--data-dir`` pointing at that node's private share (``train.npz``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch
from swarmlearning.pyt import PrivacyBudgetSpent, SwarmCallback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def build_model() -> nn.Module:
    """A small MLP over the 64 pixels (about 9k parameters)."""
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))


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
    dp_sgd: dict[str, float] | None = None,
) -> nn.Module:
    """Train ``model`` with SGD + momentum; calls the swarm hooks when ``callback`` is given; with
    ``dp_sgd`` (``SwarmCallback.make_private``'s keywords) it trains with DP-SGD."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    net = model
    if callback and dp_sgd:
        net, optimizer, loader = callback.make_private(optimizer, loader, **dp_sgd)
    if callback:
        callback.on_train_begin()
    try:
        for epoch in range(epochs):
            net.train()
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(net(x), y).backward()
                optimizer.step()
                if callback:
                    callback.on_batch_end()
            if callback:
                callback.on_epoch_end(epoch)
    except PrivacyBudgetSpent as spent:
        logging.getLogger("train").warning("%s", spent)
    if callback:
        callback.on_train_end()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "/data"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync-frequency", type=int, default=4)
    parser.add_argument("--min-peers", type=int, default=2)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--merge-fallback", default="none", help="with a plugin:<name> merge method")
    parser.add_argument("--merge-mode", default="auto", choices=("auto", "single", "sharded"))
    parser.add_argument("--node-weightage", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--checkin", default="snapshot", choices=("snapshot", "active", "inactive"))
    parser.add_argument("--full-quorum-wait", type=float, default=5.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=30.0)
    parser.add_argument("--quorum-timeout", type=float, default=60.0)
    # Privacy (docs/privacy.md): site-level DP and secure aggregation are contract settings; DP-SGD is local.
    parser.add_argument("--site-dp-clip-norm", type=float, default=0.0, help="0 = no site-level DP")
    parser.add_argument("--site-dp-noise-multiplier", type=float, default=1.0)
    parser.add_argument("--site-dp-delta", type=float, default=1e-5)
    parser.add_argument("--site-dp-epsilon-budget", type=float, default=0.0, help="0 = no budget")
    parser.add_argument("--site-dp-on-budget-spent", default="stop", choices=("stop", "warn"))
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--secagg-threshold", type=float, default=0.0, help="0 = 2/3 of the participants")
    # Merge-side optimiser (docs/quality.md): the round leader steps the merged update with momentum.
    parser.add_argument("--server-optimizer", default="none", choices=("none", "fedavgm"))
    parser.add_argument("--server-learning-rate", type=float, default=1.0)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    parser.add_argument("--dp-sgd-noise-multiplier", type=float, default=0.0, help="0 = no DP-SGD")
    parser.add_argument("--dp-sgd-target-epsilon", type=float, default=0.0, help="0 = no DP-SGD")
    parser.add_argument("--dp-sgd-max-grad-norm", type=float, default=1.0)
    parser.add_argument("--dp-sgd-delta", type=float, default=1e-5)
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
        mergeMode=args.merge_mode,
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
        siteDpClipNorm=args.site_dp_clip_norm,
        siteDpNoiseMultiplier=args.site_dp_noise_multiplier,
        siteDpDelta=args.site_dp_delta,
        siteDpEpsilonBudget=args.site_dp_epsilon_budget,
        siteDpOnBudgetSpent=args.site_dp_on_budget_spent,
        secureAggregation=args.secure_aggregation,
        secaggThreshold=args.secagg_threshold,
        serverOptimizer=args.server_optimizer,
        serverLearningRate=args.server_learning_rate,
        serverMomentum=args.server_momentum,
    )
    dp_sgd: dict[str, float] | None = None
    if args.dp_sgd_target_epsilon:
        dp_sgd = {"target_epsilon": args.dp_sgd_target_epsilon, "epochs": args.epochs}
    elif args.dp_sgd_noise_multiplier:
        dp_sgd = {"noise_multiplier": args.dp_sgd_noise_multiplier}
    if dp_sgd is not None:
        dp_sgd |= {"max_grad_norm": args.dp_sgd_max_grad_norm, "delta": args.dp_sgd_delta}
    fit(
        model,
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        callback=callback,
        dp_sgd=dp_sgd,
    )


if __name__ == "__main__":
    main()
