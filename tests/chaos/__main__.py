"""``python -m tests.chaos [--seed N] [--faults N] ...`` (``make chaos``): one chaos run, see harness.py."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tests.chaos.harness import ChaosConfig, ChaosRun


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and printed)")
    p.add_argument("--faults", type=int, default=50, help="faults to inject (default 50)")
    p.add_argument("--sites", type=int, default=5, help="SL/ML sites, 3-12 (default 5)")
    p.add_argument("--sn", type=int, default=3, help="SN members, 1-5 (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of each site's first run")
    p.add_argument("--out", type=Path, default=Path("runs/chaos"), help="output folder (default runs/chaos)")
    args = p.parse_args(argv)
    for name, value, low, high in (
        ("--faults", args.faults, 0, 500),
        ("--sites", args.sites, 3, 12),
        ("--sn", args.sn, 1, 5),
    ):
        if not low <= value <= high:
            p.error(f"{name}={value}: must be {low}..{high}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 16)
    epochs = args.epochs or max(20, int(args.faults * 2.4))
    cfg = ChaosConfig(
        seed=seed, faults=args.faults, sites=args.sites, sn_members=args.sn, epochs=epochs, out=args.out
    )
    report = ChaosRun(cfg).run()
    print(f"chaos run with seed {seed}: {'every check passed' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
