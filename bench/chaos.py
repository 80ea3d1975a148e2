"""Part ``chaos``: what faults cost. One fault-free run and one chaos run of the same seed and epochs
(tests/chaos/harness.py: 3 SN members, 5 sites on network namespaces); training time of each, their
ratio (the overhead of surviving the faults), rounds, and the time to recover per fault kind (p50/p95).
The chaos run's own plot (rounds over time with the faults) is copied next to the results."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.results import PartResult, Row, log

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ChaosBenchConfig:
    seed: int = 5
    faults: int = 50
    epochs: int = 120


def run(cfg: ChaosBenchConfig) -> PartResult:
    from tests.chaos.harness import ChaosConfig, ChaosRun

    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        out = Path(tmp)
        log(f"chaos: fault-free run, seed {cfg.seed}, {cfg.epochs} epochs")
        base = ChaosRun(
            ChaosConfig(seed=cfg.seed, faults=0, epochs=cfg.epochs, out=out / "base"), emit=log
        ).run()
        log(f"chaos: {cfg.faults} faults, same seed and epochs")
        chaos = ChaosRun(
            ChaosConfig(seed=cfg.seed, faults=cfg.faults, epochs=cfg.epochs, out=out / "chaos"), emit=log
        ).run()
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "chaos" / "chaos.png", RESULTS / "chaos-timeline.png")
    passed = sum(c.ok for c in chaos.checks)
    rows = [
        Row(
            "chaos",
            "fault-free",
            {"seed": cfg.seed, "faults": 0},
            {"training_s": base.training_s, "rounds": base.rounds},
        ),
        Row(
            "chaos",
            f"{len(chaos.faults)} faults",
            {"seed": cfg.seed, "faults": len(chaos.faults)},
            {
                "training_s": chaos.training_s,
                "rounds": chaos.rounds,
                "overhead_x": chaos.training_s / base.training_s if base.training_s else None,
                "checks_passed": f"{passed}/{len(chaos.checks)}",
                "crash_restarts": len(chaos.crash_restarts),
            },
        ),
    ]
    for kind, r in sorted(chaos.recovery.items()):
        rows.append(
            Row(
                "chaos",
                f"recover {kind}",
                {"kind": kind},
                {"n": r["n"], "p50_s": r["p50"], "p95_s": r["p95"]},
            )
        )
    return PartResult(
        "chaos",
        tuple(rows),
        baselines={"fault-free training_s": round(base.training_s, 1)},
        summary=(
            f"{len(chaos.faults)} faults survived with {passed}/{len(chaos.checks)} checks passing; training "
            f"{chaos.training_s:.0f} s vs {base.training_s:.0f} s fault-free "
            f"({chaos.training_s / max(base.training_s, 1e-9):.2f}x), {chaos.rounds} vs {base.rounds} rounds",
        ),
    )
