"""`python -m tests.testbed down` stops only its own real node: a live one of another test bed (a test
session's, on another pytest-xdist worker or beside `make cluster-down`) is left running."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.processes import ProcessRecord, wait_for
from tests.testbed.realnode import Baseline, NodeRecord, runs_for_another

pytestmark = pytest.mark.integration


@pytest.fixture
def live_process() -> Iterator[ProcessRecord]:
    """A live group leader standing in for a real node's kubelet."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = ProcessRecord("kubelet", proc.pid, "sleep")
        # Popen may return before /proc shows the new command line (it reads empty for a moment).
        wait_for("the stand-in's /proc/<pid>/cmdline", lambda: record.is_ours() or None, timeout=10)
        yield record
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _record(run_dir: Path, state: Path, processes: list[ProcessRecord]) -> None:
    baseline = Baseline(existing_paths=[], netns=[], shim_entries=[], chains=[], sysctls={})
    dirs = [str(state / "realnode"), str(run_dir)]
    NodeRecord(baseline, state_dirs=dirs, processes=processes).save(run_dir)


def test_a_live_node_of_another_test_bed_is_left_alone(tmp_path: Path, live_process: ProcessRecord) -> None:
    run_dir, theirs, mine = tmp_path / "run", tmp_path / "session", tmp_path / "cluster"
    _record(run_dir, theirs, [live_process])
    assert runs_for_another(mine, run_dir) == [str(theirs / "realnode"), str(run_dir)]
    # The same node under this test bed's state dir is its own to stop.
    assert runs_for_another(theirs, run_dir) == []


def test_a_dead_runs_node_is_anyones_to_clean(tmp_path: Path, live_process: ProcessRecord) -> None:
    run_dir = tmp_path / "run"
    assert runs_for_another(tmp_path / "cluster", run_dir) == []  # no record
    dead = ProcessRecord("kubelet", live_process.pid, "not-what-runs-there")  # its PID reused by another
    _record(run_dir, tmp_path / "session", [dead])
    assert runs_for_another(tmp_path / "cluster", run_dir) == []
