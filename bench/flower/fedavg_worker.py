"""Flower's FedAvg aggregation as a service for the quality benchmark; runs in .venv-bench.

Protocol over stdin/stdout, length-prefixed pickles (8-byte big-endian length, then the pickle) between
our own two processes only: request ``(list of NDArrays per client, list of num_examples)`` -> reply
``NDArrays`` from ``flwr.server.strategy.aggregate.aggregate``. A zero length ends the worker.
"""

from __future__ import annotations

import pickle
import struct
import sys

from flwr.server.strategy.aggregate import aggregate


def read_exact(stream: object, n: int) -> bytes:
    data = sys.stdin.buffer.read(n)
    if len(data) != n:
        raise EOFError(f"fedavg worker: expected {n} bytes on stdin, got {len(data)}")
    return data


def main() -> int:
    out = sys.stdout.buffer
    while True:
        (length,) = struct.unpack(">Q", read_exact(sys.stdin, 8))
        if length == 0:
            return 0
        models, counts = pickle.loads(read_exact(sys.stdin, length))
        merged = aggregate(list(zip(models, counts, strict=True)))
        blob = pickle.dumps(merged, protocol=5)
        out.write(struct.pack(">Q", len(blob)) + blob)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
