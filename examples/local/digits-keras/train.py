"""Handwritten digits (8x8 images, 10 classes) with Swarm Learning: a plain Keras training script.

Written as an HPE Swarm Learning user writes one: ``model.compile`` and
``model.fit(..., callbacks=[SwarmCallback(...)])``; the only swarm-specific lines are the import and
the callback. Keras 3 on either backend (``KERAS_BACKEND=tensorflow`` (default) or ``torch``). With
``SWARM_LOOPBACK=True`` the script trains locally. ``swarmctl run examples/local/digits-keras`` starts
one copy per node with ``--data-dir`` pointing at that node's private share (``train.npz``,
``val.npz``) and imports this file for the baselines (``build_model``, ``load_split``, ``fit``,
``load_model``, ``predict``, ``pool``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from swarmlearning.tf import SwarmCallback, load_weights

Split = tuple[np.ndarray, np.ndarray]
"""(x float32 (N, 64), y int64 (N,))."""


def build_model() -> keras.Model:
    """A small MLP over the 64 pixels (about 7k parameters). Explicit names keep the weight names
    (``digits_mlp/hidden/kernel`` …) the same however many models a process builds."""
    return keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(96, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )


def load_split(path: Path) -> Split:
    with np.load(path) as data:
        return data["x"].astype("float32"), data["y"].astype("int64")


def pool(datasets: Sequence[Split]) -> Split:
    """All nodes' data as one set (the central reference)."""
    return np.concatenate([x for x, _ in datasets]), np.concatenate([y for _, y in datasets])


def compile_model(model: keras.Model, lr: float) -> None:
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def fit(
    model: keras.Model,
    train: Split,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int = 0,
) -> keras.Model:
    """Compile and train ``model`` with SGD + momentum (shuffled with ``seed``); returns it."""
    keras.utils.set_random_seed(seed)
    compile_model(model, lr)
    x, y = train
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=verbose, callbacks=callbacks)
    return model


def load_model(path: Path) -> keras.Model:
    """The model with the weights of a ``model.safetensors`` the callback wrote."""
    model = build_model()
    load_weights(model, Path(path).read_bytes())
    return model


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Class ids for the rows of ``x``."""
    # A direct call, not model.predict: no per-model tf.function to trace for a few hundred rows.
    logits = keras.ops.convert_to_numpy(model(x.astype("float32"), training=False))
    return np.asarray(logits).argmax(axis=1)


def one_thread_per_process() -> None:
    """Nodes share the machine: one compute thread each (must run before the backend computes)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    elif keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "/data"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sync-frequency", type=int, default=4)
    parser.add_argument("--min-peers", type=int, default=2)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--node-weightage", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--checkin", default="snapshot", choices=("snapshot", "active", "inactive"))
    parser.add_argument("--full-quorum-wait", type=float, default=10.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=30.0)
    parser.add_argument("--quorum-timeout", type=float, default=90.0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    one_thread_per_process()
    data = Path(args.data_dir)
    x_train, y_train = load_split(data / "train.npz")
    x_val, y_val = load_split(data / "val.npz")
    model = build_model()
    swarm_callback = SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.min_peers,
        maxPeers=args.max_peers,
        mergeMethod=args.merge_method,
        nodeWeightage=args.node_weightage,
        numSamples=len(y_train),
        useAdaptiveSync=args.adaptive,
        checkinModelOnTrainEnd=args.checkin,
        adsValData=(x_val, y_val),
        adsValBatchSize=256,
        totalEpochs=args.epochs,
        fullQuorumWaitSeconds=args.full_quorum_wait,
        leaderFailureTimeoutSeconds=args.leader_failure_timeout,
        quorumTimeoutSeconds=args.quorum_timeout,
    )
    fit(
        model,
        (x_train, y_train),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        callbacks=[swarm_callback],
        verbose=2,
    )
    loss, accuracy = swarm_callback.get_loss(), swarm_callback.get_metric()
    swarm_callback.logger.info(
        "final Swarm model (Keras backend %s) on local validation data: loss %s, accuracy %s",
        keras.backend.backend(),
        loss,
        accuracy,
    )


if __name__ == "__main__":
    main()
