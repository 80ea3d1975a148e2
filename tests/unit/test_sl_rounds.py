"""Pure logic of the SL node: reference structure for validation, final-round detection, model store."""

from __future__ import annotations

import pytest
import torch
from swarmlearning.ledger import Record
from swarmlearning.sl.kinds import CHUNKS, chunk_kind
from swarmlearning.sl.modes.base import majority_structure as _majority_structure
from swarmlearning.sl.node import _RoundResult
from swarmlearning.sl.peers import KEEP_CHUNK_ROUNDS, KEEP_ROUNDS, ModelKey, ModelStore
from swarmlearning.sl.weights import digest

pytestmark = pytest.mark.unit


def _state(width: int) -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(2, width), "b": torch.zeros(2)}


def test_majority_structure_outvotes_a_malformed_leader() -> None:
    states = {"leader": _state(5), "a": _state(3), "b": _state(3)}
    ref = _majority_structure(states, prefer="leader")
    assert ref["w"].shape == (2, 3)


def test_majority_structure_prefers_own_on_ties_and_handles_empty() -> None:
    states = {"me": _state(3), "other": _state(4)}
    assert _majority_structure(states, prefer="me") is states["me"]
    assert _majority_structure({}, prefer="me") == {}


def _record(participants: list[str], final: list[str]) -> Record:
    body = {
        "round": 7,
        "participants": participants,
        "merged_digest": "d" * 64,
        "rejected": {},
        "extra": {"final": final},
    }
    return Record(
        seq=3,
        contract="c",
        kind="round",
        body=body,
        prev_hash="0" * 64,
        author="a",
        author_fingerprint="f",
        time="t",
    )


class _Close:
    round_no = 7
    names = ("a", "b", "rejected")


@pytest.mark.parametrize(
    ("participants", "final", "done"),
    [(["a", "b"], ["a", "b"], True), (["a", "b"], ["a"], False), ([], [], False), (["a"], ["a", "x"], True)],
)
def test_round_is_the_last_only_when_every_merged_participant_finished(
    participants: list[str], final: list[str], done: bool
) -> None:
    result = _RoundResult.of(_Close(), _record(participants, final), b"x")  # type: ignore[arg-type]
    assert result.all_final is done
    assert result.closed == ("a", "b", "rejected")  # everyone in the close receives the model
    reply = result.reply()
    assert reply.header["round"] == 7 and reply.payload == b"x"


def test_model_store_keeps_the_newest_rounds_per_kind() -> None:
    store = ModelStore()
    for r in range(1, KEEP_ROUNDS + 4):
        store.put(ModelKey("c", r, "input"), f"in{r}".encode(), final=r % 2 == 0)
    store.put(ModelKey("c", 1, "merged"), b"m1")
    assert store.get(ModelKey("c", 1, "input")) is None
    assert store.get(ModelKey("c", 3, "input")) is None
    kept = store.get(ModelKey("c", KEEP_ROUNDS + 3, "input"))
    assert kept is not None and kept.data == f"in{KEEP_ROUNDS + 3}".encode()
    assert kept.digest == digest(kept.data) and kept.final is False
    held = store.get(ModelKey("c", 1, "merged"))
    assert held is not None and held.data == b"m1"


def test_model_store_keeps_chunks_of_the_newest_chunk_rounds_and_forgets_dropped_keys() -> None:
    store = ModelStore()
    for r in range(1, KEEP_CHUNK_ROUNDS + 3):
        for i in range(CHUNKS):
            store.put(ModelKey("c", r, chunk_kind("input-chunk", i)), f"{r}/{i}".encode())
        store.put(ModelKey("c", r, "input"), f"in{r}".encode())
    newest = range(3, KEEP_CHUNK_ROUNDS + 3)
    for r in range(1, KEEP_CHUNK_ROUNDS + 3):
        held = [store.get(ModelKey("c", r, chunk_kind("input-chunk", i))) for i in range(CHUNKS)]
        assert all((h is not None) == (r in newest) for h in held), r
        assert store.get(ModelKey("c", r, "input")) is not None  # inputs keep KEEP_ROUNDS rounds
    store.drop(ModelKey("c", 3, "input"))
    assert store.get(ModelKey("c", 3, "input")) is None
    store.put(ModelKey("c", 3, "input"), b"again")  # a dropped key can be stored again
    again = store.get(ModelKey("c", 3, "input"))
    assert again is not None and again.data == b"again"
