"""A training program that misbehaves: runs a user's train.py whose SwarmCallback sends poisoned weights.

``python tests/chaos/poison.py --kind nan|shape <train.py> [train.py flags]``: every sync after the
initial one (and the final check-in) sends this node's state_dict with its first tensor replaced, by
NaNs (``nan``) or by a tensor of another shape (``shape``), as a diverged or misconfigured site would.
The merged weights it gets back are loaded normally. This is the one fault no outside action on the
processes or the network can produce, so it lives in the ML program, not in the SL node.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any

import swarmlearning.pyt as pyt
import torch
from swarmlearning.sl.channel import Frame
from swarmlearning.sl.weights import decode_state, encode_state


def _poison(state: dict[str, Any], kind: str) -> dict[str, Any]:
    name = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))[0]
    t = state[name]
    state[name] = (
        torch.full_like(t, float("nan")) if kind == "nan" else torch.zeros(*t.shape, 3, dtype=t.dtype)
    )
    return state


def poisoned_callback(kind: str) -> type[pyt.SwarmCallback]:
    class PoisonedCallback(pyt.SwarmCallback):
        def _call(self, frame: Frame, timeout: float | None = 0.0) -> Frame:
            op, sync_kind = frame.header.get("op"), frame.header.get("kind")
            if (op == "sync" and sync_kind != "initial") or op == "finish":
                frame = Frame(frame.header, encode_state(_poison(dict(decode_state(frame.payload)), kind)))
            return super()._call(frame, timeout)

    return PoisonedCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("nan", "shape"), required=True)
    parser.add_argument("script")
    args, rest = parser.parse_known_args()
    pyt.SwarmCallback = poisoned_callback(args.kind)  # type: ignore[misc]
    print(f"poison: sending {args.kind} weights from round 2 on", flush=True)
    sys.argv = [args.script, *rest]
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
