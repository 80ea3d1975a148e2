"""Pure parts of the sharded merge: chunk plans, manifests, slice ranges, slice leaders, mode choice,
served kinds and the ledger's slice rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from swarmlearning import pki
from swarmlearning.ledger import slice_leader_for
from swarmlearning.ledger.records import GENESIS_HASH, Record, check_protocol, make_record
from swarmlearning.ledger.rounds import Participant, RoundClose
from swarmlearning.merge import merge
from swarmlearning.sl import kinds
from swarmlearning.sl import slices as sl
from swarmlearning.sl.modes.sharded import is_sharded, may_shard
from swarmlearning.sl.weights import WeightsError, decode_state, encode_state

pytestmark = pytest.mark.unit


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "bn.running_mean": torch.randn(8, generator=g).to(torch.float64),
        "emb": torch.randn(1000, 17, generator=g).to(torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
    }


def test_chunks_cover_every_element_once_and_assemble_back_exactly() -> None:
    state = _state()
    layout = sl.layout_of(state)
    plan = sl.chunk_plan(layout)
    assert len(plan) == kinds.CHUNKS
    for name, shape, _ in layout:
        pieces = sorted((p.start, p.stop) for chunk in plan for p in chunk if p.name == name)
        n = 1
        for d in shape:
            n *= d
        covered = [i for a, b in pieces for i in range(a, b)]
        assert covered == list(range(n)), name
    chunks = [decode_state(encode_state(c)) for c in sl.cut(state, plan)]
    back = sl.assemble(layout, plan, chunks)
    assert back.keys() == state.keys()
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t), name


def test_chunks_are_balanced_by_bytes() -> None:
    state = {"a": torch.zeros(64 * 1000), "b": torch.zeros(10, dtype=torch.float64)}
    plan = sl.chunk_plan(sl.layout_of(state))
    sizes = [sum((p.stop - p.start) * (4 if p.name == "a" else 8) for p in c) for c in plan]
    assert max(sizes) - min(sizes) <= 8


def test_tiny_models_have_empty_chunks_that_still_round_trip() -> None:
    state = {"w": torch.arange(5, dtype=torch.float32)}
    layout = sl.layout_of(state)
    plan = sl.chunk_plan(layout)
    assert sum(1 for c in plan if c) == 5
    back = sl.assemble(layout, plan, [decode_state(encode_state(c)) for c in sl.cut(state, plan)])
    assert torch.equal(back["w"], state["w"])


def test_merging_chunk_by_chunk_equals_merging_the_whole_model() -> None:
    """Why coordinate-wise merges shard exactly."""
    models = [_state(s) for s in range(5)]
    for m in models[1:]:
        m["flag"] = torch.tensor([False, False, True])
    weights = [1.0, 2.0, 3.0, 1.0, 5.0]
    layout = sl.layout_of(models[0])
    plan = sl.chunk_plan(layout)
    for method in ("mean", "coordmedian", "trimmedmean"):
        whole = merge(method, models, weights, trim_fraction=0.2).state
        cut = [sl.cut(m, plan) for m in models]
        merged = [
            merge(method, [c[i] for c in cut], weights, trim_fraction=0.2).state for i in range(len(plan))
        ]
        back = sl.assemble(layout, plan, merged)
        for name in whole:
            assert torch.equal(back[name], whole[name]), (method, name)


def test_assemble_refuses_a_chunk_that_does_not_fit_the_plan() -> None:
    state = _state()
    layout = sl.layout_of(state)
    plan = sl.chunk_plan(layout)
    chunks = sl.cut(state, plan)
    wrong = [dict(c) for c in chunks]
    name = next(iter(wrong[3]))
    wrong[3][name] = wrong[3][name][:-1]
    with pytest.raises(WeightsError, match="chunk 3"):
        sl.assemble(layout, plan, wrong)
    with pytest.raises(WeightsError, match="chunks given"):
        sl.assemble(layout, plan, chunks[:-1])


def test_manifest_round_trip_and_bad_ones_are_named() -> None:
    m = sl.Manifest("a" * 64, tuple(f"{i:064x}" for i in range(kinds.CHUNKS)))
    assert sl.Manifest.from_bytes(m.to_bytes()) == m
    for bad, why in (
        (b"{", "not JSON"),
        (b"[]", "format-1"),
        (b'{"format":1,"layout":"x","chunks":[]}', "layout"),
        (b'{"format":1,"layout":"' + b"a" * 64 + b'","chunks":["00"]}', "64 sha256"),
        (b" " * 70000, "exceeds"),
    ):
        with pytest.raises(WeightsError, match=why):
            sl.Manifest.from_bytes(bad)


def test_slices_split_the_chunks_evenly() -> None:
    for s in (1, 2, 3, 4, 7, 16, 32, 64):
        ranges = [sl.slice_chunks(k, s) for k in range(s)]
        assert [i for r in ranges for i in r] == list(range(kinds.CHUNKS))
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    with pytest.raises(ValueError, match="slice 4 of 4"):
        sl.slice_chunks(4, 4)
    with pytest.raises(ValueError, match="slice 0 of 65"):
        sl.slice_chunks(0, 65)


def _close(
    signer: pki.NodeCert,
    names: list[str],
    *,
    eligible: set[str] | None = None,
    manifest: str = "m" * 64,
    round_no: int = 5,
    size: int = 64 << 20,
) -> RoundClose:
    parts = tuple(
        Participant(n, f"{n}:1", eligible is None or n in eligible, "d" * 64, 1.0, 10, manifest, size)
        for n in names
    )
    rec = make_record(
        seq=3,
        contract="c",
        kind="close",
        body={"round": round_no, "participants": [p.to_dict() for p in parts]},
        prev_hash="f" * 64,
        signer=signer,
    )
    return RoundClose.from_record(rec)


def test_each_eligible_participant_leads_one_slice_and_failover_moves_to_the_next(
    signer: pki.NodeCert,
) -> None:
    close = _close(
        signer, [f"node-{i}" for i in range(1, 7)], eligible={"node-1", "node-2", "node-4", "node-6"}
    )
    first = [slice_leader_for(close, k, 0) for k in range(4)]
    assert sorted(first) == ["node-1", "node-2", "node-4", "node-6"]
    for k in range(4):
        assert slice_leader_for(close, k, 1) == first[(k + 1) % 4]
    # The order depends on the seed (the hash of the record before the close), which nobody controls.
    orders = {
        tuple(slice_leader_for(dataclasses.replace(close, prev_hash=f"{s:064x}"), k, 0) for k in range(4))
        for s in range(20)
    }
    assert len(orders) > 1 and all(sorted(o) == sorted(first) for o in orders)
    with pytest.raises(ValueError, match="must be >= 0"):
        slice_leader_for(close, -1, 0)


def test_round_mode_comes_from_the_contract_and_the_close(signer: pki.NodeCert) -> None:
    names = [f"n{i}" for i in range(4)]
    assert is_sharded(_close(signer, names), {"mergeMethod": "mean"})  # auto from 4 eligible peers
    assert not is_sharded(_close(signer, names, size=4 << 20), {})  # ... and 16 MB models
    assert is_sharded(_close(signer, names, size=4 << 20), {"mergeMode": "sharded"})
    assert not is_sharded(_close(signer, names[:3]), {"mergeMethod": "mean"})
    assert is_sharded(_close(signer, names[:2]), {"mergeMethod": "coordmedian", "mergeMode": "sharded"})
    assert not is_sharded(_close(signer, names[:1]), {"mergeMode": "sharded"})
    assert not is_sharded(_close(signer, names), {"mergeMethod": "mean", "mergeMode": "single"})
    assert not is_sharded(_close(signer, names), {"mergeMethod": "geomedian", "mergeMode": "sharded"})
    assert not is_sharded(_close(signer, names, round_no=1), {"mergeMode": "sharded"})  # the initial round
    assert not is_sharded(_close(signer, names, manifest=""), {"mergeMode": "sharded"})
    assert not is_sharded(_close(signer, names, eligible={"n0"}), {"mergeMode": "sharded"})
    assert may_shard({}) and not may_shard({"mergeMethod": "krum"})


def test_served_kinds() -> None:
    assert kinds.family_of("input") == "input"
    assert kinds.family_of("manifest") == "manifest"
    assert kinds.family_of("input-chunk-0") == "input-chunk"
    assert kinds.family_of("merged-chunk-63") == "merged-chunk"
    for bad in ("input-chunk-64", "input-chunk-01", "input-chunk-", "merged-chunk-x", "weights", "chunk-1"):
        assert kinds.family_of(bad) is None, bad
    with pytest.raises(ValueError, match="index 0..63"):
        kinds.chunk_kind("input-chunk", 64)


def test_ledger_accepts_slices_from_their_leaders_only_once_and_before_the_result(
    signer: pki.NodeCert,
) -> None:
    close_rec = _close(signer, ["a", "b", "c"]).record
    closes: dict[tuple[str, int], Record] = {}
    results: set[tuple[str, int]] = set()
    slices: set[tuple[str, int, int]] = set()
    assert check_protocol(close_rec, closes, results, slices) == ""
    close = RoundClose.from_record(close_rec)

    def slice_rec(k: int, attempt: int, author: str) -> Record:
        body = {"round": 5, "slice": k, "attempt": attempt}
        return dataclasses.replace(_rec(signer, "slice", body), author=author)

    leader = slice_leader_for(close, 1, 0)
    other = next(n for n in close.names if n != leader)
    assert "its leader of attempt 0 is" in check_protocol(slice_rec(1, 0, other), closes, results, slices)
    assert check_protocol(slice_rec(1, 0, leader), closes, results, slices) == ""
    assert "second record" in check_protocol(slice_rec(1, 0, leader), closes, results, slices)
    assert "not an int in 0..4095" in check_protocol(slice_rec(-1, 0, leader), closes, results, slices)
    assert "not an int in 0..4095" in check_protocol(slice_rec(4096, 0, leader), closes, results, slices)
    results.add(("c", 5))
    late = slice_leader_for(close, 2, 0)
    assert "after the round's result" in check_protocol(slice_rec(2, 0, late), closes, results, slices)
    orphan = dataclasses.replace(_rec(signer, "slice", {"round": 9, "slice": 0, "attempt": 0}), author=late)
    assert "without a close" in check_protocol(orphan, closes, results, slices)


def _rec(signer: pki.NodeCert, kind: str, body: Mapping[str, Any]) -> Record:
    return make_record(seq=9, contract="c", kind=kind, body=body, prev_hash=GENESIS_HASH, signer=signer)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> pki.NodeCert:
    root = tmp_path_factory.mktemp("slices-pki")
    pki.create_ca(root / "ca")
    return pki.issue_node_cert(root / "ca", root / "node", "signer", "org", "sl")


def test_chunk_ranges_are_served_in_one_framed_body() -> None:
    assert kinds.chunk_range_kind("input-chunk", 0, 16) == "input-chunks-0-16"
    assert kinds.chunk_range("input-chunks-0-16") == ("input-chunk", 0, 16)
    assert kinds.chunk_range("merged-chunks-60-64") == ("merged-chunk", 60, 64)
    assert kinds.family_of("merged-chunks-60-64") == "merged-chunk"
    for bad in ("input-chunks-3-3", "input-chunks-0-65", "input-chunks-01-2", "inputs-0-1", "input-chunks-0"):
        assert kinds.chunk_range(bad) is None and kinds.family_of(bad) is None, bad
    with pytest.raises(ValueError, match="first < stop"):
        kinds.chunk_range_kind("input-chunk", 4, 4)
    parts = [b"", b"abc", bytes(range(256)) * 3]
    body = kinds.frame_chunks(parts)
    assert kinds.split_chunks(body, 3) == parts
    broken = ((body[:-1], 3, "runs past"), (body + b"x", 3, "bytes after"), (body[:5], 1, "ends"))
    for cut, count, why in broken:
        with pytest.raises(ValueError, match=why):
            kinds.split_chunks(cut, count)
