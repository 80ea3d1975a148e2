"""Per-node loss/metric on their way from the ML callback to the round record (pure logic)."""

from __future__ import annotations

import math

import pytest
import torch
from multidict import CIMultiDict
from swarmlearning.pyt import SwarmCallback
from swarmlearning.sl.channel import Frame, decode_frame, encode_frame
from swarmlearning.sl.peers import (
    LOSS_HEADER,
    METRIC_HEADER,
    ModelKey,
    ModelStore,
    parse_progress_headers,
    progress_headers,
)
from swarmlearning.sl.progress import MAX_TEXT_CHARS, Progress, finite, round_extra
from torch.utils.data import DataLoader, TensorDataset

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.25, 0.25),
        (3, 3.0),
        (-1.5, -1.5),
        ("0.125", 0.125),
        (" 2e-3 ", 0.002),
        (None, None),
        (True, None),
        (False, None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        ("nan", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e999", None),
        (10**400, None),
        ("", None),
        ("0.5; drop table", None),
        ("1" * (MAX_TEXT_CHARS + 1), None),
        ([1.0], None),
        ({"loss": 1.0}, None),
    ],
)
def test_only_finite_floats_pass(value: object, expected: float | None) -> None:
    assert finite(value) == expected


def test_sync_header_values_survive_the_channel_and_garbage_becomes_none() -> None:
    sent = Frame({"op": "sync", "loss": 0.4321, "metric": 0.875}, b"w")
    assert Progress.from_header(decode_frame(encode_frame(sent)).header) == Progress(0.4321, 0.875)
    # json.dumps writes NaN/Infinity; the SL side must not pass them on (the ledger refuses them).
    odd = Frame({"op": "sync", "loss": math.nan, "metric": math.inf})
    assert Progress.from_header(decode_frame(encode_frame(odd)).header) == Progress(None, None)
    assert Progress.from_header({"op": "sync", "loss": "high", "metric": True}) == Progress(None, None)
    assert Progress.from_header({"op": "sync"}) == Progress(None, None)


def test_peer_headers_round_trip_exactly_and_untrusted_values_are_dropped() -> None:
    p = Progress(0.1 + 0.2, 1 / 3)
    headers = progress_headers(p)
    assert set(headers) == {LOSS_HEADER, METRIC_HEADER}
    assert parse_progress_headers(CIMultiDict(headers)) == p  # repr round-trips a float bit for bit
    assert progress_headers(Progress(None, 0.5)) == {METRIC_HEADER: "0.5"}
    assert progress_headers(Progress(math.nan, None)) == {}
    # what a peer sends is untrusted; header names are case-insensitive as in aiohttp's responses
    bad = CIMultiDict({"x-swarm-loss": "NaN", "X-SWARM-METRIC": "1e999"})
    assert parse_progress_headers(bad) == Progress(None, None)
    assert parse_progress_headers(CIMultiDict({"x-swarm-loss": "0.75"})) == Progress(0.75, None)
    assert parse_progress_headers(CIMultiDict()) == Progress(None, None)


def test_round_extra_keeps_accepted_reporters_only() -> None:
    progress = {
        "a": Progress(0.5, 0.9),
        "b": Progress(None, 0.8),
        "c": Progress(0.7, None),
        "rejected": Progress(0.1, 0.1),
        "broken": Progress(math.nan, math.inf),  # a Progress built without finite() still cannot leak
    }
    extra = round_extra(progress, ["c", "b", "a", "broken", "silent"])
    assert extra == {"loss": {"a": 0.5, "c": 0.7}, "metric": {"a": 0.9, "b": 0.8}}
    assert list(extra["loss"]) == ["a", "c"]  # sorted names: the record's JSON is canonical anyway
    assert round_extra({"a": Progress()}, ["a"]) == {}
    assert round_extra({}, []) == {}


def test_model_store_keeps_progress_with_the_input() -> None:
    store = ModelStore()
    key = ModelKey("c", 2, "input")
    store.put(key, b"in", final=True, progress=Progress(0.3, 0.6))
    held = store.get(key)
    assert held is not None and held.progress == Progress(0.3, 0.6) and held.final
    store.put(ModelKey("c", 2, "merged"), b"m")
    merged = store.get(ModelKey("c", 2, "merged"))
    assert merged is not None and merged.progress == Progress()


def test_callback_sends_its_latest_validation_loss_and_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_LOOPBACK", "True")
    monkeypatch.delenv("SWARM_METRICS_FILE", raising=False)
    val = DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=8)
    cb = SwarmCallback(
        1,
        1,
        model=torch.nn.Linear(3, 2),
        adsValData=val,
        lossFunction="CrossEntropyLoss",
        metricFunction="Accuracy",
    )
    cb.on_train_begin()
    before = Progress.from_header(cb._sync_header("round"))
    assert before == Progress(None, None), "nothing validated yet"
    cb.on_epoch_end(0)
    header = decode_frame(encode_frame(Frame(cb._sync_header("round")))).header
    got = Progress.from_header(header)
    assert got.loss is not None and got.loss > 0
    assert got.metric is not None and 0.0 <= got.metric <= 1.0

    plain = SwarmCallback(1, 1, model=torch.nn.Linear(3, 2))  # no validation data: nothing to report
    plain.on_train_begin()
    plain.on_epoch_end(0)
    header = plain._sync_header("final")
    assert header["loss"] is None and header["metric"] is None
