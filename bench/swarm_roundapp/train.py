"""Round-latency benchmark ML program (PyTorch): a model of given layer shapes, trivial training (one
in-place add per round), one sync per batch through ``swarmlearning.pyt.SwarmCallback``. Per sync it
writes the round's clock and its SL node's byte counters (roundclock.py). Started by bench/rounds.py via
LocalSwarm; train_weights.py is the same without torch for large N.
"""

from __future__ import annotations

import json

import torch
from roundclock import callback_kwargs, parse_args, run_rounds
from swarmlearning.pyt import SwarmCallback
from torch import nn


class Blob(nn.Module):
    """Parameters of the given shapes; no forward pass is needed for timing rounds."""

    def __init__(self, shapes: list[list[int]]) -> None:
        super().__init__()
        self.layers = nn.ParameterList([nn.Parameter(torch.randn(*s) * 0.01) for s in shapes])


def main() -> None:
    args = parse_args(__doc__)
    torch.manual_seed(args.seed)
    model = Blob(json.loads(args.shapes))
    callback = SwarmCallback(model=model, **callback_kwargs(args))
    first = model.layers[0]

    def train_step() -> None:
        with torch.no_grad():
            first.view(-1)[0] += 0.001  # trivial training: the models differ a little every round

    def sync() -> None:
        for _ in range(args.sync_frequency):
            callback.on_batch_end()

    callback.on_train_begin()
    run_rounds(args.rounds, train_step, sync)
    callback.on_train_end()


if __name__ == "__main__":
    main()
