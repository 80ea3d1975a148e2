"""Round-latency benchmark ML program without torch: NumPy arrays of the given shapes, exchanged as
safetensors through the framework-free ``swarmlearning.client.swarm.SwarmCallbackBase`` over the same
SL channel, so 32 nodes fit on a small machine (a torch process costs hundreds of MB). Same flags,
trivial training and output as train.py (roundclock.py); bench/rounds.py runs it for large N.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from roundclock import callback_kwargs, parse_args, run_rounds
from swarmlearning.client.swarm import SLPlatforms, SwarmCallbackBase
from swarmlearning.weights_format import decode_arrays, encode_arrays


class WeightsCallback(SwarmCallbackBase):
    """Swarm sync of a dict of named float32 arrays (``layers.<i>``, as train.py's ParameterList)."""

    mlPlatform = SLPlatforms.PYTORCH  # the SL node needs no framework; this names the wire format's origin
    logger_name = "bench.weights"

    def __init__(self, arrays: dict[str, np.ndarray], **kwargs: Any) -> None:
        sync, peers = kwargs.pop("syncFrequency"), kwargs.pop("minPeers")
        super().__init__(sync, peers, **kwargs)
        self.arrays = arrays

    def _model_weights(self) -> bytes:
        return encode_arrays(self.arrays)

    def _load_model_weights(self, data: bytes) -> None:
        merged = decode_arrays(data)
        for name in self.arrays:
            self.arrays[name] = merged[name]


def main() -> None:
    args = parse_args(__doc__)
    rng = np.random.default_rng(args.seed)
    arrays = {
        f"layers.{i}": (rng.standard_normal(s, dtype=np.float32) * 0.01)
        for i, s in enumerate(json.loads(args.shapes))
    }
    callback = WeightsCallback(arrays, **callback_kwargs(args))

    def train_step() -> None:
        first = callback.arrays["layers.0"]
        if not first.flags.writeable:  # decoded arrays may be read-only views of the payload
            callback.arrays["layers.0"] = first = first.copy()
        first.reshape(-1)[0] += 0.001  # trivial training: the models differ a little every round

    def sync() -> None:
        for _ in range(args.sync_frequency):
            callback._swarm_on_batch_end()

    callback._swarm_on_train_begin()
    run_rounds(args.rounds, train_step, sync)
    callback._swarm_on_train_end()


if __name__ == "__main__":
    main()
