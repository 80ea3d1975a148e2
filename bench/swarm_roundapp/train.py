"""Round-latency benchmark ML program: a model of given layer shapes, trivial training (one in-place
add per round), one sync per batch. Writes ``{"round", "start", "end"}`` (wall clock, seconds) per
sync to ``$SWARM_MODEL_OUTPUT/round-times.jsonl``: start just before the callback hands the model to
its SL node, end when the merged model is loaded back. Started by bench/rounds.py via LocalSwarm.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from swarmlearning.pyt import SwarmCallback
from torch import nn


class Blob(nn.Module):
    """Parameters of the given shapes; no forward pass is needed for timing rounds."""

    def __init__(self, shapes: list[list[int]]) -> None:
        super().__init__()
        self.layers = nn.ParameterList([nn.Parameter(torch.randn(*s) * 0.01) for s in shapes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--shapes", required=True, help="JSON list of parameter shapes")
    parser.add_argument("--sync-frequency", type=int, default=1)
    parser.add_argument("--min-peers", type=int, required=True)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument("--full-quorum-wait", type=float, default=0.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=120.0)
    parser.add_argument("--quorum-timeout", type=float, default=300.0)
    args, _ = parser.parse_known_args()  # epochs, batch_size, lr: unused here
    torch.manual_seed(args.seed)
    model = Blob(json.loads(args.shapes))
    callback = SwarmCallback(
        syncFrequency=args.sync_frequency,
        minPeers=args.min_peers,
        maxPeers=args.max_peers,
        model=model,
        mergeMethod=args.merge_method,
        numSamples=100,
        totalEpochs=1,
        fullQuorumWaitSeconds=args.full_quorum_wait,
        leaderFailureTimeoutSeconds=args.leader_failure_timeout,
        quorumTimeoutSeconds=args.quorum_timeout,
    )
    out = Path(os.environ["SWARM_MODEL_OUTPUT"])
    out.mkdir(parents=True, exist_ok=True)
    first = model.layers[0]
    callback.on_train_begin()
    with open(out / "round-times.jsonl", "w") as f:
        for r in range(args.rounds):
            with torch.no_grad():
                first.view(-1)[0] += 0.001  # trivial training: the models differ a little every round
            start = time.time()
            for _ in range(args.sync_frequency):
                callback.on_batch_end()
            end = time.time()
            f.write(json.dumps({"round": r, "start": start, "end": end}) + "\n")
            f.flush()
    callback.on_train_end()


if __name__ == "__main__":
    main()
