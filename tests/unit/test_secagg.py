"""Secure aggregation core: the leader gets the weighted sum, never a single input."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from safetensors.numpy import load as st_load
from scipy.stats import chi2
from swarmlearning.privacy import secagg as sa

pytestmark = pytest.mark.unit

Tensors = Mapping[str, npt.NDArray[np.generic]]


@dataclass
class Swarm:
    """One round attempt among real Participant objects, with the leader's relaying done by hand."""

    setup: sa.RoundSetup
    parts: dict[str, sa.Participant]
    public: dict[str, bytes]
    sent: dict[str, dict[str, bytes]]  # sender -> {recipient: ciphertext}

    @classmethod
    def start(
        cls, names: list[str], threshold: int | None = None, without_key: Collection[str] = ()
    ) -> Swarm:
        setup = sa.RoundSetup.of(names, b"c1|7|0", threshold)
        keys = {n: sa.RoundKeys.generate() for n in names}
        parts = {n: sa.Participant(n, setup, keys[n]) for n in names}
        public = {n: k.public for n, k in keys.items() if n not in without_key}
        sent = {u: parts[u].share_keys(public) for u in public}
        return cls(setup, parts, public, sent)

    def received_by(self, v: str, sharers: Collection[str]) -> dict[str, bytes]:
        return {u: self.sent[u][v] for u in sharers}

    def reveal(self, v: str, sharers: Collection[str], survivors: Collection[str]) -> dict[str, bytes]:
        dropped = set(sharers) - set(survivors)
        return self.parts[v].reveal(self.received_by(v, sharers), survivors, dropped)


def plain_mean(
    inputs: Mapping[str, Tensors], weights: Mapping[str, float], name: str
) -> npt.NDArray[np.float64]:
    acc = np.zeros(np.shape(next(iter(inputs.values()))[name]), dtype=np.float64)
    for n, tensors in inputs.items():
        acc = acc + np.asarray(tensors[name], dtype=np.float64) * weights[n]
    return acc / sum(weights[n] for n in inputs)


def model(rng: np.random.Generator, counter: int) -> dict[str, npt.NDArray[np.generic]]:
    return {
        "fc.weight": (rng.normal(size=(5, 3)) * 4).astype(np.float32),
        "fc.bias": -np.abs(rng.normal(size=(3,))).astype(np.float32),
        "bn.running_var": rng.normal(size=(2, 2, 2)).astype(np.float64),
        "bn.num_batches_tracked": np.array(counter, dtype=np.int64),
        "scale": np.array(-2.5 * counter, dtype=np.float32),
    }


def test_unmasked_sum_divided_by_weights_is_the_weighted_mean() -> None:
    names = ["ada", "bob", "cyd", "dee"]
    swarm = Swarm.start(names)
    rng = np.random.default_rng(1)
    inputs = {n: model(rng, 1000 + 7 * i) for i, n in enumerate(names)}
    weights = {"ada": 120.0, "bob": 3.0, "cyd": 45.5, "dee": 0.25}
    masked = {n: swarm.parts[n].mask(inputs[n], weights[n], names) for n in names}
    reveals = {v: swarm.reveal(v, names, names) for v in names}
    layout = sa.layout_of(inputs["ada"])

    sums, weight = sa.unmask(swarm.setup, swarm.public, names, masked, reveals, layout)

    assert weight == pytest.approx(sum(weights.values()), abs=1e-6)
    tol = len(names) * 2.0**-25 / weight + 1e-12  # rounding of each weighted entry, spread over the weights
    for name in layout:
        np.testing.assert_allclose(sums[name] / weight, plain_mean(inputs, weights, name), rtol=0, atol=tol)
    mean = sa.weighted_mean(sums, weight, layout)
    assert {k: (v.dtype, v.shape) for k, v in mean.items()} == {
        k: (np.dtype(s.dtype), s.shape) for k, s in layout.items()
    }
    assert int(mean["bn.num_batches_tracked"]) == round(
        float(plain_mean(inputs, weights, "bn.num_batches_tracked"))
    )
    np.testing.assert_allclose(
        mean["fc.weight"].astype(np.float64), plain_mean(inputs, weights, "fc.weight"), rtol=1e-6, atol=1e-6
    )


def test_bool_and_integer_tensors_come_back_in_their_dtype() -> None:
    names = ["a", "b", "c"]
    swarm = Swarm.start(names)
    inputs = {
        "a": {"flag": np.array([True, False, True]), "steps": np.array([10, -4], dtype=np.int32)},
        "b": {"flag": np.array([True, False, False]), "steps": np.array([20, -4], dtype=np.int32)},
        "c": {"flag": np.array([False, False, True]), "steps": np.array([30, -5], dtype=np.int32)},
    }
    masked = {n: swarm.parts[n].mask(inputs[n], 1.0, names) for n in names}
    reveals = {v: swarm.reveal(v, names, names) for v in names}
    layout = sa.layout_of(inputs["a"])
    mean = sa.weighted_mean(*sa.unmask(swarm.setup, swarm.public, names, masked, reveals, layout), layout)
    assert mean["flag"].dtype == np.bool_ and mean["flag"].tolist() == [True, False, True]
    assert mean["steps"].dtype == np.int32 and mean["steps"].tolist() == [20, -4]  # -13/3 rounds to -4


def bytes_look_uniform(a: npt.NDArray[np.uint64]) -> bool:
    """Chi-square on byte values and a per-bit balance check; False for anything visibly structured."""
    counts = np.bincount(a.view(np.uint8), minlength=256)
    expected = a.view(np.uint8).size / 256
    if chi2.sf(float(((counts - expected) ** 2 / expected).sum()), df=255) < 1e-6:
        return False
    bits = np.unpackbits(a.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=0)  # ones per bit position
    return bool(np.all(np.abs(bits - a.size / 2) < 6 * np.sqrt(a.size) / 2))


def test_a_masked_input_is_indistinguishable_from_uniform_noise() -> None:
    names = ["a", "b", "c"]
    swarm = Swarm.start(names)
    zeros = {"w": np.zeros(1 << 15, dtype=np.float32)}
    smooth = {"w": np.linspace(-3, 3, 1 << 15, dtype=np.float32)}

    masked = swarm.parts["a"].mask(zeros, 120.0, names)["w"]
    other = swarm.parts["b"].mask(smooth, 3.0, names)["w"]

    assert bytes_look_uniform(masked) and bytes_look_uniform(other)
    # the same check rejects the encodings without masks: it would catch masks that are missing
    assert not bytes_look_uniform(sa.encode(zeros, 120.0, 3)["w"])
    assert not bytes_look_uniform(sa.encode(smooth, 3.0, 3)["w"])
    assert np.mean(other == sa.encode(smooth, 3.0, 3)["w"]) < 1e-3


def test_nodes_that_drop_after_sharing_keys_are_recovered() -> None:
    names = ["n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    swarm = Swarm.start(names, threshold=4, without_key=["n7"])  # n7 dropped before sharing: not in U2
    sharers = ["n1", "n2", "n3", "n4", "n5", "n6"]
    survivors = ["n1", "n3", "n4", "n6"]  # n2, n5 shared keys, then dropped before masking
    rng = np.random.default_rng(2)
    inputs = {n: model(rng, 10) for n in survivors}
    weights = {"n1": 120.0, "n3": 3.0, "n4": 1.0, "n6": 60.0}
    masked = {n: swarm.parts[n].mask(inputs[n], weights[n], sharers) for n in survivors}
    layout = sa.layout_of(inputs["n1"])
    # exactly threshold revealers, two different sets: any t shares rebuild the secrets
    for revealers in (["n1", "n3", "n4", "n6"], ["n6", "n4", "n3", "n1"]):
        reveals = {v: swarm.reveal(v, sharers, survivors) for v in revealers}
        sums, weight = sa.unmask(swarm.setup, swarm.public, sharers, masked, reveals, layout)
        assert weight == pytest.approx(184.0)
        for name in layout:
            np.testing.assert_allclose(sums[name] / weight, plain_mean(inputs, weights, name), atol=1e-7)


def test_fewer_revealers_than_the_threshold_is_not_enough() -> None:
    names = ["a", "b", "c", "d"]
    swarm = Swarm.start(names)  # threshold 3
    x = {"w": np.ones(4, dtype=np.float32)}
    masked = {n: swarm.parts[n].mask(x, 1.0, names) for n in names}
    reveals = {v: swarm.reveal(v, names, names) for v in ["b", "d"]}
    with pytest.raises(
        sa.NotEnoughSurvivors, match=r"only 2 participants revealed .*\(b, d\); the threshold is 3"
    ):
        sa.unmask(swarm.setup, swarm.public, names, masked, reveals, sa.layout_of(x))
    # and a leader may not unmask fewer survivors than the threshold
    with pytest.raises(sa.NotEnoughSurvivors, match=r"only 2 of 4 participants sent a masked input \(a, b\)"):
        sa.unmask(swarm.setup, swarm.public, names, {n: masked[n] for n in "ab"}, reveals, sa.layout_of(x))


def test_a_survivor_never_reveals_both_secrets_of_one_node() -> None:
    names = ["a", "b", "c", "d", "e"]
    swarm = Swarm.start(names, threshold=3)
    x = {"w": np.ones(2, dtype=np.float32)}
    for n in ["a", "b", "c", "d"]:
        swarm.parts[n].mask(x, 1.0, names)
    a = swarm.parts["a"]
    received = swarm.received_by("a", names)

    first = a.reveal(received, ["a", "b", "c", "d"], ["e"])
    assert sorted(first) == names and all(len(s) == sa.SHARE_BYTES for s in first.values())
    assert a.reveal(received, ["a", "b", "c", "d"], ["e"]) == first  # asking again is harmless
    with pytest.raises(sa.SecAggError, match=r"a: refusing to reveal for \['d', 'e'\]: the other secret"):
        a.reveal(received, ["a", "b", "c", "e"], ["d"])
    with pytest.raises(
        sa.SecAggError, match=r"refusing to reveal: \['e'\] listed as both survivor and dropped"
    ):
        swarm.parts["b"].reveal(swarm.received_by("b", names), ["a", "b", "c", "d", "e"], ["e"])
    with pytest.raises(sa.SecAggError, match=r"b: refusing to reveal: not listed among the survivors"):
        swarm.parts["b"].reveal(swarm.received_by("b", names), ["a", "c", "d"], ["b", "e"])
    with pytest.raises(sa.SecAggError, match=r"differ from the sharers it masked with"):
        swarm.parts["b"].reveal(swarm.received_by("b", names), ["a", "b", "c"], ["d"])
    with pytest.raises(sa.NotEnoughSurvivors, match=r"only 2 of 5 participants survived"):
        swarm.parts["c"].reveal(swarm.received_by("c", names), ["b", "c"], ["a", "d", "e"])


def test_a_tampered_or_misaddressed_ciphertext_is_rejected_naming_its_sender() -> None:
    names = ["a", "b", "c"]
    swarm = Swarm.start(names)
    x = {"w": np.ones(2, dtype=np.float32)}
    swarm.parts["b"].mask(x, 1.0, names)
    received = swarm.received_by("b", names)
    flipped = bytearray(received["c"])
    flipped[20] ^= 1
    with pytest.raises(sa.SecAggError, match=r"b: the ciphertext from c does not authenticate"):
        swarm.parts["b"].reveal({**received, "c": bytes(flipped)}, names, [])
    with pytest.raises(sa.SecAggError, match=r"b: the ciphertext from a does not authenticate"):
        swarm.parts["b"].reveal({**received, "a": swarm.sent["a"]["c"]}, names, [])  # a's ciphertext for c
    with pytest.raises(sa.SecAggError, match=r"b: no ciphertext received from sharer c"):
        swarm.parts["b"].reveal({k: v for k, v in received.items() if k != "c"}, names, [])
    assert len(swarm.parts["b"].reveal(received, names, [])) == 3  # the refusals revealed nothing


def test_a_wrong_masked_input_or_share_is_rejected_naming_the_node() -> None:
    names = ["a", "b", "c"]
    swarm = Swarm.start(names)
    x = {"w": np.ones((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    masked: dict[str, Tensors] = {n: swarm.parts[n].mask(x, 2.0, names) for n in names}
    reveals = {v: swarm.reveal(v, names, names) for v in names}
    layout = sa.layout_of(x)
    bad_shape = {**masked, "b": {**masked["b"], "w": masked["b"]["w"].reshape(3, 2)}}
    with pytest.raises(
        sa.SecAggError, match=r"masked input of b has tensor 'w' of shape \[3, 2\], expected \[2, 3\]"
    ):
        sa.unmask(swarm.setup, swarm.public, names, bad_shape, reveals, layout)
    missing = {**masked, "c": {k: v for k, v in masked["c"].items() if k != "b"}}
    with pytest.raises(sa.SecAggError, match=r"masked input of c lacks tensors \['b'\]"):
        sa.unmask(swarm.setup, swarm.public, names, missing, reveals, layout)
    floats = {**masked, "a": {**masked["a"], "b": np.zeros(3, dtype=np.float64)}}
    with pytest.raises(sa.SecAggError, match=r"masked input of a has tensor 'b' that is not a uint64 array"):
        sa.unmask(swarm.setup, swarm.public, names, floats, reveals, layout)
    wrong = {**reveals, "a": {**reveals["a"], "c": bytes(sa.SHARE_BYTES - 1) + b"\x01"}}
    with pytest.raises(sa.SecAggError, match=r"shares revealed for c's self-mask seed are inconsistent"):
        sa.unmask(swarm.setup, swarm.public, names, masked, wrong, layout)
    short = {**reveals, "b": {**reveals["b"], "a": b"\x00" * 3}}
    with pytest.raises(sa.SecAggError, match=r"share of a's self-mask seed revealed by b is not 66 bytes"):
        sa.unmask(swarm.setup, swarm.public, names, masked, short, layout)


def test_a_wrong_share_of_a_dropped_nodes_key_is_caught() -> None:
    names = ["a", "b", "c", "d"]
    swarm = Swarm.start(names)  # threshold 3
    x = {"w": np.ones(3, dtype=np.float32)}
    survivors = ["a", "b", "c"]
    masked = {n: swarm.parts[n].mask(x, 1.0, names) for n in survivors}
    reveals = {v: swarm.reveal(v, names, survivors) for v in survivors}
    # shift a's share so the rebuilt key moves by exactly 1 (a's Lagrange weight at x = 1, 2, 3 is 3):
    # still a 32-byte value, so only the published public key tells it is wrong
    honest = int.from_bytes(reveals["a"]["d"], "big")
    shifted = (honest + pow(3, -1, sa.PRIME)) % sa.PRIME
    forged = {**reveals, "a": {**reveals["a"], "d": shifted.to_bytes(sa.SHARE_BYTES, "big")}}
    with pytest.raises(
        sa.SecAggError, match=r"the mask key rebuilt for dropped d does not match its public key"
    ):
        sa.unmask(swarm.setup, swarm.public, names, masked, forged, sa.layout_of(x))


def test_masking_refuses_bad_inputs_and_a_second_input() -> None:
    names = ["a", "b"]
    swarm = Swarm.start(names)
    a = swarm.parts["a"]
    with pytest.raises(
        sa.SecAggError, match=r"tensor 'w' × weight reaches 1e\+12, over the fixed-point range ±2\.7"
    ):
        a.mask({"w": np.array([1e10], dtype=np.float64)}, 100.0, names)
    with pytest.raises(sa.SecAggError, match=r"tensor 'w' has non-finite values"):
        a.mask({"w": np.array([0.0, np.nan], dtype=np.float32)}, 1.0, names)
    with pytest.raises(sa.SecAggError, match=r"weight must be a finite number >= 0, got -1"):
        a.mask({"w": np.zeros(1, dtype=np.float32)}, -1.0, names)
    with pytest.raises(sa.SecAggError, match=r"tensor 'z' has dtype complex128"):
        a.mask({"z": np.zeros(1, dtype=np.complex128)}, 1.0, names)
    with pytest.raises(sa.SecAggError, match=r"a: not among the sharers \['b'\]"):
        a.mask({"w": np.zeros(1, dtype=np.float32)}, 1.0, ["b"])
    a.mask({"w": np.zeros(1, dtype=np.float32)}, 1.0, names)
    with pytest.raises(sa.SecAggError, match=r"a: mask called twice"):
        a.mask({"w": np.ones(1, dtype=np.float32)}, 1.0, names)
    fresh = sa.Participant("b", swarm.setup, sa.RoundKeys.generate())
    with pytest.raises(sa.SecAggError, match=r"b: mask before share_keys"):
        fresh.mask({"w": np.zeros(1, dtype=np.float32)}, 1.0, names)
    with pytest.raises(sa.SecAggError, match=r"must include b's own RoundKeys.public"):
        fresh.share_keys(swarm.public)  # the published key for b is another one


def test_threshold_and_setup_validation_name_the_parameter_and_range() -> None:
    assert [sa.default_threshold(n) for n in (2, 3, 4, 5, 7, 10, 100)] == [2, 2, 3, 4, 5, 7, 67]
    with pytest.raises(sa.SecAggError, match=r"n \(participants\) must be an integer >= 2 .*got 1"):
        sa.default_threshold(1)
    with pytest.raises(
        sa.SecAggError, match=r"threshold must be an integer in 2\.\.4 \(n = 4 participants\), got 1"
    ):
        sa.RoundSetup.of("abcd", b"c|1|0", threshold=1)
    with pytest.raises(sa.SecAggError, match=r"threshold must be an integer in 2\.\.4 .*got 5"):
        sa.RoundSetup.of("abcd", b"c|1|0", threshold=5)
    with pytest.raises(sa.SecAggError, match=r"participants must be sorted and unique"):
        sa.RoundSetup(("b", "a"), 2, b"c|1|0")
    with pytest.raises(sa.SecAggError, match=r"context must be non-empty bytes"):
        sa.RoundSetup(("a", "b"), 2, b"")
    with pytest.raises(sa.SecAggError, match=r"'z' is not a participant of this round \(a, b\)"):
        sa.Participant("z", sa.RoundSetup(("a", "b"), 2, b"c|1|0"), sa.RoundKeys.generate())


def test_too_few_public_keys_to_share_is_not_enough() -> None:
    with pytest.raises(
        sa.NotEnoughSurvivors, match=r"only 2 of 4 participants published a public key \(a, b\)"
    ):
        Swarm.start(["a", "b", "c", "d"], without_key=["c", "d"])


def test_masked_inputs_and_byte_maps_survive_serialisation() -> None:
    names = ["a", "b"]
    swarm = Swarm.start(names)
    masked = swarm.parts["a"].mask({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, 3.0, names)
    data = sa.masked_to_safetensors(masked)
    back = sa.masked_from_safetensors(data, "a")
    assert back.keys() == masked.keys()
    for k in masked:
        assert back[k].dtype == np.uint64 and np.array_equal(back[k], masked[k])
    assert st_load(data)["w"].dtype == np.uint64
    with pytest.raises(sa.SecAggError, match=r"masked input of a is not safetensors"):
        sa.masked_from_safetensors(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage", "a")

    as_json = sa.bytes_map_to_json(swarm.sent["a"])
    assert all(isinstance(v, str) for v in as_json.values())
    assert sa.bytes_map_from_json(as_json, "shares of a") == swarm.sent["a"]
    with pytest.raises(sa.SecAggError, match=r"reveal of b: entry 'a' is not valid base64"):
        sa.bytes_map_from_json({"a": "@@@"}, "reveal of b")
    with pytest.raises(sa.SecAggError, match=r"reveal of b must be a JSON object"):
        sa.bytes_map_from_json(["a"], "reveal of b")


def test_the_context_separates_round_attempts() -> None:
    """Ciphertexts of one attempt do not open in the next, even under the same keys."""
    keys = {n: sa.RoundKeys.generate() for n in "ab"}
    public = {n: k.public for n, k in keys.items()}
    old = sa.Participant("a", sa.RoundSetup(("a", "b"), 2, b"c1|7|0"), keys["a"]).share_keys(public)
    new = sa.Participant("b", sa.RoundSetup(("a", "b"), 2, b"c1|7|1"), keys["b"])
    mine = new.share_keys(public)
    new.mask({"w": np.zeros(1, dtype=np.float32)}, 1.0, "ab")
    with pytest.raises(sa.SecAggError, match=r"b: the ciphertext from a does not authenticate"):
        new.reveal({"a": old["b"], "b": mine["b"]}, "ab", [])
