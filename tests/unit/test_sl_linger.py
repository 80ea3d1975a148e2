"""When a finished SL node may stop serving the final model: the ledger's delivery state, not a timer."""

from __future__ import annotations

import pytest
from swarmlearning.ledger import ModelDelivery, model_delivery
from swarmlearning.sl.node import FinalRound, linger_status

pytestmark = pytest.mark.unit

FINAL = FinalRound("digits", 37, ("node-1", "node-2", "node-3"), "bcccc2ab7ae7" + "0" * 52)
LIVE = frozenset({"node-1", "node-2", "node-3"})


def test_a_participant_still_fetching_is_waited_for() -> None:
    d = model_delivery(37, FINAL.participants, LIVE, {"node-1": "has", "node-2": "has"})
    assert d.waiting_for == ("node-3",) and not d.complete and d.needed_by == 3
    status = linger_status(FINAL, d, left_s=27.2, limit_s=30)
    assert not status.done
    assert status.message == (
        "serving final model of round 37 of 'digits' for node-3 (1 of 3 still fetching), up to 27s more"
    )


def test_exit_as_soon_as_every_participant_has_it() -> None:
    d = model_delivery(37, FINAL.participants, LIVE, dict.fromkeys(FINAL.participants, "has"))
    status = linger_status(FINAL, d, left_s=29.9, limit_s=30)
    assert status.done and status.complete
    assert (
        "every node that needs the final model bcccc2ab7ae7 has it (node-1, node-2, node-3)" in status.message
    )


def test_a_participant_that_left_without_the_model_is_not_waited_for() -> None:
    d = model_delivery(
        37, FINAL.participants, frozenset({"node-1", "node-2"}), {"node-1": "has", "node-2": "has"}
    )
    assert d.complete and d.left == ("node-3",)
    status = linger_status(FINAL, d, left_s=20, limit_s=30)
    assert status.done and status.complete and "not waiting for node-3 (left the swarm)" in status.message


def test_a_live_announced_fetcher_is_waited_for_and_a_dead_one_is_not() -> None:
    marks = dict.fromkeys(FINAL.participants, "has") | {"node-4": "fetching", "node-5": "fetching"}
    d = model_delivery(37, FINAL.participants, LIVE | {"node-4"}, marks)
    assert d.waiting_for == ("node-4",) and d.needed_by == 4
    done = model_delivery(37, FINAL.participants, LIVE | {"node-4"}, marks | {"node-4": "has"})
    assert done.complete and done.has == ("node-1", "node-2", "node-3", "node-4")


def test_the_linger_time_is_only_the_maximum() -> None:
    d = model_delivery(37, FINAL.participants, LIVE, {"node-1": "has"})
    assert not linger_status(FINAL, d, left_s=0.1, limit_s=30).done
    status = linger_status(FINAL, d, left_s=0, limit_s=30)
    assert status.done and not status.complete
    assert "linger maximum of 30s reached while serving the final model for node-2, node-3" in status.message
    assert "2 of 3 still fetching" in status.message


def test_an_unreadable_ledger_keeps_the_node_serving() -> None:
    status = linger_status(FINAL, "etcd unavailable", left_s=10, limit_s=30)
    assert not status.done and "cannot read who has it: etcd unavailable" in status.message


def test_a_final_round_without_participants_waits_only_for_fetchers() -> None:
    final = FinalRound("digits", 12, (), "ab" * 32)
    assert model_delivery(12, final.participants, LIVE, {}).complete
    d = model_delivery(12, final.participants, LIVE, {"node-3": "fetching"})
    assert isinstance(d, ModelDelivery) and d.waiting_for == ("node-3",)
