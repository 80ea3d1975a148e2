"""The quality benchmark's lock-step sync schedule (pure logic)."""

from __future__ import annotations

import pytest

from bench.quality import sync_schedule

pytestmark = pytest.mark.unit


def test_every_node_syncs_until_its_batches_run_out() -> None:
    # 10 and 4 batches, a sync every 4: node 1 stops after its first round.
    assert sync_schedule([10, 4], 4) == [[0, 1], [0], [0]]


def test_equal_nodes_sync_together_every_round() -> None:
    assert sync_schedule([8, 8, 8], 2) == [[0, 1, 2]] * 4


def test_no_batches_no_rounds() -> None:
    assert sync_schedule([], 3) == []
    assert sync_schedule([0, 0], 3) == []


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="sync_frequency"):
        sync_schedule([4], 0)
    with pytest.raises(ValueError, match="batches_per_node"):
        sync_schedule([4, -1], 2)
