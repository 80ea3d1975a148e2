"""The quality benchmark's lock-step sync schedule (pure logic) and its plot."""

from __future__ import annotations

import pytest

from bench.plots import QUALITY_GAPS, _quality
from bench.quality import sync_schedule
from bench.results import Row

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


def test_quality_plot_shows_each_swarm_against_the_central_of_its_own_runtime() -> None:
    metrics = {"central_%": 97.0, "real_swarm_%": 96.5, "real_swarm_minus_central": -1.5}
    fig = _quality([Row("quality", "digits iid N=2", metrics=metrics), Row("quality", "no central")])
    assert fig is not None
    accuracy, gaps = fig.axes
    assert [t.get_text() for t in gaps.get_xticklabels()] == ["digits iid N=2"]  # only cases with a central
    heights = {c.get_label(): [b.get_height() for b in c] for c in gaps.containers}
    assert heights["swarm (real runtime)"] == [-1.5]  # the runtime's own gap, not 96.5 - 97.0
    assert heights["swarm (simulated)"] == [0.0]  # not measured: no bar height
    assert len(gaps.containers) == len(QUALITY_GAPS)
    # The legends sit right of the axes, clear of the bars.
    for ax in (accuracy, gaps):
        legend = ax.get_legend()
        assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
