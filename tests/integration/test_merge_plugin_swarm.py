"""Merge plugins in a real swarm: SN (etcd), SL nodes over mTLS and ML processes on the digits data.

The plugin is a distribution in a temporary folder (package + dist-info with its entry point) that the
processes find through PYTHONPATH, as a pip install into the SL node's environment would make it
found; nothing is installed into the shared venv. The example plugin (examples/merge-plugin) merges
every round after the first and each record names it; a plugin that raises is replaced by the
contract's mergeFallback, and without one the task fails on every node naming the plugin.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from swarmlearning.local.runner import LocalSwarm

from tests.integration.test_sharded_merge import verify_ledger
from tests.integration.test_swarm import (
    assert_all_succeeded,
    assert_identical,
    final_models,
    round_records,
    small_config,
)
from tests.unit.test_merge_plugins import install_example, make_distribution

pytestmark = pytest.mark.integration

NODES = ["node-1", "node-2"]
RAISES = "def merge(models, weights, options):\n    raise RuntimeError('boom: refusing to merge')\n"


def _swarm(tmp_path: Path, method: str, site: Path, fallback: str | None = None, **swarm: Any) -> LocalSwarm:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path} | ({"SWARM_MERGE_FALLBACK": fallback} if fallback else {})
    cfg = small_config(len(NODES), train={"epochs": 2}, merge_method=method, **swarm)
    return LocalSwarm(cfg, tmp_path / "run", node_env=dict.fromkeys(NODES, env))


def _merged_rounds(swarm: LocalSwarm) -> dict[int, Any]:
    rounds = round_records(swarm)
    assert rounds and rounds[1].body["merge_method"] == "initial"
    merged = {n: r for n, r in rounds.items() if n > 1}
    assert merged, f"no round after the initial one was committed: {sorted(rounds)}"
    return merged


def test_plugin_merges_every_round_and_every_record_names_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    module = install_example(site)
    with _swarm(tmp_path, "plugin:clippedmean", site) as swarm:
        swarm.prepare()
        swarm.start_all()
        assert_all_succeeded(swarm, NODES)
        merged = _merged_rounds(swarm)
        verify_ledger(swarm)
        assert_identical(final_models(swarm, NODES))
    identity = {
        "name": "clippedmean",
        "distribution": "swarm-clipped-mean",
        "version": "0.1.0",
        "sha256": hashlib.sha256(module.read_bytes()).hexdigest(),
    }
    for n, rec in merged.items():
        assert rec.body["merge_method"] == "plugin:clippedmean", (n, rec.body)
        assert rec.body["extra"]["merge_plugin"] == identity, (n, rec.body["extra"])
        assert "merge_plugin_error" not in rec.body["extra"]


def test_failing_plugin_with_a_fallback_commits_rounds_naming_the_fallback(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_distribution(site, "boom-merge", "0.0.1", {"boom_merge.py": RAISES}, {"boom": "boom_merge:merge"})
    with _swarm(tmp_path, "plugin:boom", site, fallback="coordmedian") as swarm:
        swarm.prepare()
        swarm.start_all()
        assert_all_succeeded(swarm, NODES)
        merged = _merged_rounds(swarm)
        verify_ledger(swarm)
        assert_identical(final_models(swarm, NODES))
    for n, rec in merged.items():
        assert rec.body["merge_method"] == "coordmedian", (n, rec.body)
        error = rec.body["extra"]["merge_plugin_error"]
        assert "merge plugin 'boom' (boom-merge 0.0.1) raised RuntimeError: boom: refusing" in error, error
        assert "merge_plugin" not in rec.body["extra"]


def test_failing_plugin_without_a_fallback_fails_the_task_on_every_node(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_distribution(site, "boom-merge", "0.0.1", {"boom_merge.py": RAISES}, {"boom": "boom_merge:merge"})
    # A leader timeout far above the wait below: the failure is recorded, nobody waits it out.
    with _swarm(tmp_path, "plugin:boom", site, leader_failure_timeout=600) as swarm:
        swarm.prepare()
        swarm.start_all()
        codes = swarm.wait_ml(NODES, timeout=120)
        logs = {n: swarm.nodes[n].ml.log_path.read_text(errors="replace") for n in NODES}  # type: ignore[union-attr]
        snap = swarm.ledger_snapshot()
        verify_ledger(swarm)
    assert all(c != 0 for c in codes.values()), codes
    for n in NODES:
        assert "merge plugin 'boom' (boom-merge 0.0.1) raised RuntimeError" in logs[n], logs[n][-3000:]
        assert "mergeFallback none" in logs[n], logs[n][-3000:]
    assert not [r for r in snap.records if r.kind == "round" and r.body["round"] > 1]
    (failed,) = [r for r in snap.records if r.kind == "abandon"]
    assert failed.body["round"] == 2 and "merge plugin 'boom'" in failed.body["merge_plugin_error"]
