"""The ml-tensorflow image's demo program: the digits task of ``make demo`` as a Keras script, one site of
a swarm (the same data rules as :mod:`swarmlearning.demo.digits`: mounted ``train.npz``/``val.npz``, else
the site's share of the bundled set from ``SWARM_PEER_INDEX`` of ``SWARM_PEER_COUNT``). Written the way
HPE's Keras users write theirs: ``model.fit(..., callbacks=[SwarmCallback(...)])``, epochs from
``MAX_EPOCHS``. No torch: it runs on the TensorFlow backend of the no-torch image.

    python -m swarmlearning.demo.digits_keras [--epochs 15] [--data-dir /data]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from swarmlearning.demo.data import env_int, site_data

log = logging.getLogger("swarmlearning.demo.digits_keras")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", "/data")))
    parser.add_argument("--epochs", type=int, default=env_int("MAX_EPOCHS", 15), help="(1-1000)")
    parser.add_argument("--batch-size", type=int, default=32, help="(1-4096)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (0-10)")
    args = parser.parse_args(argv)
    if not 1 <= args.epochs <= 1000:
        parser.error(f"--epochs must be between 1 and 1000, got {args.epochs}")
    if not 1 <= args.batch_size <= 4096:
        parser.error(f"--batch-size must be between 1 and 4096, got {args.batch_size}")
    if not 0 < args.lr <= 10:
        parser.error(f"--lr must be in (0, 10], got {args.lr}")

    import keras

    from swarmlearning.tf import SwarmCallback

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keras.utils.set_random_seed(0)
    index, count = env_int("SWARM_PEER_INDEX", 0), env_int("SWARM_PEER_COUNT", 1)
    train, val, test = site_data(args.data_dir, index, count)
    log.info("site %d of %d: %d training and %d validation samples", index, count, len(train.y), len(val.y))
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(96, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    swarm = SwarmCallback(
        syncFrequency=4,
        minPeers=2,
        adsValData=(val.x, val.y),
        adsValBatchSize=256,
        totalEpochs=args.epochs,
        numSamples=len(train.y),
    )
    model.fit(train.x, train.y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=[swarm])
    if test is not None:
        pred = np.argmax(model.predict(test.x, verbose=0), axis=1)
        log.info(
            "merged model: test accuracy %.4f on %d held-out samples",
            float(np.mean(pred == test.y)),
            len(test.y),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
