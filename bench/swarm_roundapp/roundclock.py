"""What both round-benchmark ML programs share (no torch here): their flags, the per-round clock and the
SL node's model-byte counters, written as one JSON line per sync to ``$SWARM_MODEL_OUTPUT/round-times.jsonl``:
``{"round", "start", "end", "sent", "received", "cpu"}``: wall clock seconds just before the callback
hands the model to its SL node and when the merged model is loaded back, then the SL node's
``swarm_sl_peer_bytes_{sent,received}_total`` (bytes, summed over ``kind``) and its process's
``process_cpu_seconds_total`` read from its ``/metrics`` once they settled after ``end``
(``settle_s``: how long that took). A line ``{"round": -1, ...}`` before
the first round holds the counters after the initial sync. The counters are None when the SL node's
metrics URL is unknown or unreachable.

Settling: a node's SL may still serve the merged model (single leader) or its merged slice (sharded)
when its own ML process already has the merged model, so the counters are read again every 50 ms
until ``sent`` did not change for :data:`SETTLE_S`. This cannot lengthen the measured round: the next
round closes only when every node fetched what it needs, and a round's latency starts at the last
node's hand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRICS_URLS_ENV = "BENCH_SL_METRICS_URLS"
"""Path of the run's ``sl-metrics.json`` ({node: /metrics URL}); set by bench/rounds.py."""
SETTLE_S = 0.5
"""Seconds without sent bytes after which a node's round traffic counts as done."""
SETTLE_CAP_S = 120.0
"""At most this long settling (a node that keeps serving, e.g. to a late joiner)."""
COUNTERS = {
    "swarm_sl_peer_bytes_sent_total": "sent",
    "swarm_sl_peer_bytes_received_total": "received",
    "process_cpu_seconds_total": "cpu",
}


def parse_args(doc: str | None) -> argparse.Namespace:
    """The flags LocalSwarm passes from swarm.yaml (``train`` and ``swarm`` keys); unknown ones ignored."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--shapes", required=True, help="JSON list of parameter shapes")
    parser.add_argument("--sync-frequency", type=int, default=1)
    parser.add_argument("--min-peers", type=int, required=True)
    parser.add_argument("--max-peers", type=int, default=0)
    parser.add_argument("--merge-method", default="mean")
    parser.add_argument(
        "--merge-mode", default=None, help="single | sharded | auto; unset: the runtime's default"
    )
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--full-quorum-wait", type=float, default=0.0)
    parser.add_argument("--leader-failure-timeout", type=float, default=120.0)
    parser.add_argument("--quorum-timeout", type=float, default=300.0)
    args, _ = parser.parse_known_args()  # epochs, batch_size, lr: unused here
    return args


def callback_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """SwarmCallback keyword arguments from the flags; ``mergeMode`` only when ``--merge-mode`` is given
    (bench/rounds.py gives it when the runtime has merge modes, whose default ``auto`` is not single)."""
    kwargs: dict[str, Any] = {
        "syncFrequency": args.sync_frequency,
        "minPeers": args.min_peers,
        "maxPeers": args.max_peers,
        "mergeMethod": args.merge_method,
        "numSamples": 100,
        "totalEpochs": 1,
        "fullQuorumWaitSeconds": args.full_quorum_wait,
        "leaderFailureTimeoutSeconds": args.leader_failure_timeout,
        "quorumTimeoutSeconds": args.quorum_timeout,
    }
    if args.merge_mode is not None:
        kwargs["mergeMode"] = args.merge_mode
    if args.secure_aggregation:
        kwargs["secureAggregation"] = True
    return kwargs


def metrics_url() -> str | None:
    """This node's SL ``/metrics`` URL from the run's sl-metrics.json, None when not given."""
    path = os.environ.get(METRICS_URLS_ENV)
    node = os.environ.get("SWARM_NODE_NAME", "")
    if not path or not Path(path).is_file():
        return None
    url = json.loads(Path(path).read_text()).get(node)
    return str(url) if url else None


def parse_counters(text: str) -> dict[str, float | None]:
    """``{"sent": bytes, "received": bytes, "cpu": seconds}`` (bytes summed over ``kind``) from Prometheus
    text format; ``cpu`` is None when the SL node does not export its process's CPU time."""
    out: dict[str, float | None] = {"sent": 0.0, "received": 0.0, "cpu": None}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in COUNTERS:
            key = COUNTERS[name]
            out[key] = (out[key] or 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def read_counters(url: str | None) -> dict[str, float | None]:
    """The SL node's byte counters now; None values when there is no URL or it does not answer in 5 s."""
    if url is None:
        return {"sent": None, "received": None, "cpu": None}
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(parse_counters(resp.read().decode()))
    except OSError:
        return {"sent": None, "received": None, "cpu": None}


def settled_counters(url: str | None) -> dict[str, float | None]:
    """The counters once ``sent`` stayed the same for :data:`SETTLE_S` (at most :data:`SETTLE_CAP_S`)."""
    last = read_counters(url)
    t0 = stable_since = time.monotonic()
    while last["sent"] is not None and time.monotonic() - t0 < SETTLE_CAP_S:
        time.sleep(0.05)
        now = read_counters(url)
        if now["sent"] != last["sent"]:
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= SETTLE_S:
            break
    return last | {"settle_s": time.monotonic() - t0}


def run_rounds(rounds: int, train_step: Callable[[], None], sync: Callable[[], None]) -> None:
    """``rounds`` times: ``train_step`` (trivial training), timed ``sync``; one JSON line each."""
    out = Path(os.environ["SWARM_MODEL_OUTPUT"])
    out.mkdir(parents=True, exist_ok=True)
    url = metrics_url()
    with open(out / "round-times.jsonl", "w") as f:
        now = time.time()
        f.write(json.dumps({"round": -1, "start": now, "end": now, **settled_counters(url)}) + "\n")
        for r in range(rounds):
            train_step()
            start = time.time()
            sync()
            end = time.time()
            f.write(json.dumps({"round": r, "start": start, "end": end, **settled_counters(url)}) + "\n")
            f.flush()
