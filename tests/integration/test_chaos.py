"""The chaos harness in its short form (``make chaos`` runs 50 faults): 3 SN members, 5 sites, each on its
own network namespace, 12 faults of every kind drawn with a fixed seed during one training. Every check
of the harness must pass (ledger, rounds, one final model everywhere, rejoins, nothing left)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, ChaosRun

pytestmark = pytest.mark.integration


def test_short_chaos_run_survives_every_fault(tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = ChaosConfig(seed=11, faults=12, sites=5, sn_members=3, epochs=40, out=tmp_path / "chaos")
    report = ChaosRun(cfg, emit=lines.append).run()
    text = "\n".join(lines)
    print(text)
    assert len(report.faults) == 12, text
    failed = [c for c in report.checks if not c.ok]
    assert not failed, text
    assert (tmp_path / "chaos" / "chaos.png").stat().st_size > 0
    assert report.rounds >= 20, text
