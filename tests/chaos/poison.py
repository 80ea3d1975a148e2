"""A training program that misbehaves: runs a user's train.py whose SwarmCallback sends poisoned weights.

``python tests/chaos/poison.py --kind KIND [--scale S] [--sigma F] <train.py> [train.py flags]``: every
sync after the initial one (and the final check-in) sends this node's state_dict poisoned; the initial
sync (round 1, which hands everyone one starting model) is never poisoned. Kinds:

- ``nan``: the first tensor replaced by NaNs, as a diverged site would send;
- ``shape``: the first tensor replaced by one of another shape, as a misconfigured site would send;
- ``scaled``, ``signflip``, ``random``: Byzantine updates relative to the last merged weights this node
  received (``tests/chaos/attacks.py``): ``w0 + s*(w - w0)`` (``--scale``, default 10),
  ``w0 - s*(w - w0)`` (``--scale``, default 4), ``w0 + N(0, sigma^2)`` with sigma = ``--sigma``
  (default 3) times the honest update's per-tensor std, noise seeded by ``--attack-seed`` (default 0).
  These pass every input check (names, shapes, dtypes, finite values): only a robust merge stops them.

The merged weights it gets back are loaded normally. This is the one fault no outside action on the
processes or the network can produce, so it lives in the ML program, not in the SL node.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository's `tests` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

import swarmlearning.pyt as pyt  # noqa: E402
import torch  # noqa: E402
from swarmlearning.sl.channel import Frame  # noqa: E402
from swarmlearning.sl.weights import decode_state, encode_state  # noqa: E402

from tests.chaos.attacks import ATTACKS, DEFAULT_SCALE, DEFAULT_SIGMA, Attack, poison_update  # noqa: E402

KINDS = ("nan", "shape", *ATTACKS)


def _poison(state: dict[str, Any], kind: str) -> dict[str, Any]:
    name = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor))[0]
    t = state[name]
    state[name] = (
        torch.full_like(t, float("nan")) if kind == "nan" else torch.zeros(*t.shape, 3, dtype=t.dtype)
    )
    return state


def poisoned_callback(
    kind: str, attack: Attack | None = None, attack_seed: int = 0
) -> type[pyt.SwarmCallback]:
    """A SwarmCallback that poisons what it sends: ``kind`` nan/shape, or an update ``attack``."""
    if kind in ATTACKS and (attack is None or attack.kind != kind):
        raise ValueError(f"kind {kind!r} needs an Attack of that kind; got {attack!r}")
    generator = torch.Generator().manual_seed(attack_seed)

    class PoisonedCallback(pyt.SwarmCallback):
        _w0: bytes | None = None
        """The last merged weights the SL node handed back (safetensors bytes): the round's start."""

        def _call(self, frame: Frame, timeout: float | None = 0.0) -> Frame:
            op, sync_kind = frame.header.get("op"), frame.header.get("kind")
            if ((op == "sync" and sync_kind != "initial") or op == "finish") and frame.payload:
                frame = Frame(frame.header, encode_state(self._poisoned(frame.payload)))
            reply = super()._call(frame, timeout)
            if reply.payload:
                self._w0 = reply.payload
            return reply

        def _poisoned(self, payload: bytes) -> dict[str, Any]:
            state = dict(decode_state(payload))
            if attack is None:
                return _poison(state, kind)
            if self._w0 is None:  # nothing merged yet to be relative to (cannot happen after round 1)
                return state
            return poison_update(decode_state(self._w0), state, attack, generator)

    return PoisonedCallback


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"s of scaled/signflip, in (0, 1e6]; default {DEFAULT_SCALE['scaled']:g} for scaled, "
        f"{DEFAULT_SCALE['signflip']:g} for signflip",
    )
    parser.add_argument(
        "--sigma",
        type=float,
        default=None,
        help=f"random: noise std in units of the honest update's per-tensor std, in (0, 1e6]; "
        f"default {DEFAULT_SIGMA:g}",
    )
    parser.add_argument("--attack-seed", type=int, default=0, help="random: seed of the noise (default 0)")
    parser.add_argument("script")
    args, rest = parser.parse_known_args()
    if args.scale is not None and args.kind not in ("scaled", "signflip"):
        parser.error(f"--scale applies to --kind scaled or signflip only; got --kind {args.kind}")
    if args.sigma is not None and args.kind != "random":
        parser.error(f"--sigma applies to --kind random only; got --kind {args.kind}")
    attack: Attack | None = None
    if args.kind in ATTACKS:
        try:
            attack = Attack(
                args.kind, scale=args.scale, sigma=DEFAULT_SIGMA if args.sigma is None else args.sigma
            )
        except ValueError as exc:
            parser.error(f"--scale/--sigma: {exc}")
    pyt.SwarmCallback = poisoned_callback(args.kind, attack, args.attack_seed)  # type: ignore[misc]
    what = attack.describe() if attack is not None else args.kind
    print(f"poison: sending {what} weights from round 2 on", flush=True)
    sys.argv = [args.script, *rest]
    runpy.run_path(args.script, run_name="__main__")


if __name__ == "__main__":
    main()
