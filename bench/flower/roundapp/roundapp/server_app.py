"""ServerApp: FedAvg rounds timed one by one (send model, trivial training, receive, aggregate).

Run config: shapes (JSON list of layer shapes), rounds, nodes (wait for this many SuperNodes, 300 s at
most), out (path of the JSON result: per-round seconds split into exchange and aggregation).
"""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    shapes = [tuple(s) for s in json.loads(str(cfg["shapes"]))]
    rounds, nodes, out = int(cfg["rounds"]), int(cfg["nodes"]), str(cfg["out"])
    deadline = time.monotonic() + 300
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {nodes} SuperNodes connected within 300 s")
        time.sleep(0.2)
        node_ids = list(grid.get_node_ids())
    rng = np.random.default_rng(0)
    arrays = ArrayRecord([rng.standard_normal(s, dtype=np.float32) for s in shapes])
    timings: list[dict[str, float]] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        msgs = [
            Message(
                content=RecordDict({"arrays": arrays, "config": ConfigRecord({"round": r})}),
                message_type=MessageType.TRAIN,
                dst_node_id=nid,
            )
            for nid in node_ids
        ]
        replies = list(grid.send_and_receive(msgs, timeout=600))
        t1 = time.perf_counter()
        errors = [m.error for m in replies if m.has_error()]
        if len(replies) != len(node_ids) or errors:
            raise RuntimeError(f"round {r}: {len(replies)} of {len(node_ids)} replies, errors {errors}")
        arrays = aggregate_arrayrecords([m.content for m in replies], "num-examples")
        t2 = time.perf_counter()
        timings.append({"seconds": t2 - t0, "exchange_s": t1 - t0, "aggregate_s": t2 - t1})
        print(f"roundapp: round {r}: {t2 - t0:.3f} s (aggregate {t2 - t1:.3f} s)", flush=True)
    with open(out, "w") as f:
        json.dump({"rounds": timings, "nodes": len(node_ids)}, f)
