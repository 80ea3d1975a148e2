"""The Byzantine update attacks (tests/chaos/attacks.py) and the poisoned callback that sends them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from swarmlearning.sl.channel import Frame
from swarmlearning.sl.weights import decode_state, encode_state
from torch import nn

from tests.chaos import poison
from tests.chaos.attacks import ATTACKS, DEFAULT_SCALE, Attack, poison_update

pytestmark = pytest.mark.unit


def _pair(seed: int = 0, n: int = 4000) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w0 = {
        "a.weight": torch.randn(n // 40, 40, generator=g),
        "a.bias": torch.randn(n // 40, generator=g),
        "steps": torch.tensor(7),
    }
    w = {
        "a.weight": w0["a.weight"] + 0.01 * torch.randn(n // 40, 40, generator=g),
        "a.bias": w0["a.bias"] + 0.5 * torch.randn(n // 40, generator=g),
        "steps": torch.tensor(11),
    }
    return w0, w


def test_defaults_are_the_documented_ones() -> None:
    assert ATTACKS == ("scaled", "signflip", "random")
    assert Attack("scaled").s == 10.0 and Attack("signflip").s == 4.0
    assert Attack("random").sigma == 3.0
    assert Attack("signflip", scale=2.5).s == 2.5
    assert DEFAULT_SCALE == {"scaled": 10.0, "signflip": 4.0}


@pytest.mark.parametrize(("kind", "factor"), [("scaled", 10.0), ("signflip", -4.0)])
def test_scaled_and_signflip_send_the_update_times_s(kind: str, factor: float) -> None:
    w0, w = _pair()
    sent = poison_update(w0, w, Attack(kind))
    for name in ("a.weight", "a.bias"):
        expected = w0[name] + factor * (w[name] - w0[name])
        torch.testing.assert_close(sent[name], expected, rtol=1e-6, atol=1e-6)
        assert sent[name].dtype == torch.float32
    assert torch.equal(sent["steps"], w["steps"])  # counters are sent as trained


def test_signflip_points_against_the_honest_update() -> None:
    w0, w = _pair()
    sent = poison_update(w0, w, Attack("signflip", scale=1.0))
    honest = (w["a.weight"] - w0["a.weight"]).flatten()
    attack = (sent["a.weight"] - w0["a.weight"]).flatten()
    assert float(torch.nn.functional.cosine_similarity(honest, attack, dim=0)) == pytest.approx(
        -1.0, abs=1e-5
    )


def test_random_noise_has_sigma_times_the_update_std_per_tensor() -> None:
    w0, w = _pair(n=40_000)
    sent = poison_update(w0, w, Attack("random"), torch.Generator().manual_seed(1))
    for name in ("a.weight", "a.bias"):
        honest_std = float((w[name] - w0[name]).std(correction=0))
        noise = sent[name] - w0[name]
        assert float(noise.std()) == pytest.approx(3.0 * honest_std, rel=0.1), name
        assert abs(float(noise.mean())) < 0.1 * 3.0 * honest_std, name
        # No training in it: the noise is unrelated to the honest update.
        cos = torch.nn.functional.cosine_similarity(noise.flatten(), (w[name] - w0[name]).flatten(), dim=0)
        assert abs(float(cos)) < 0.1, name
    # Per tensor: the bias moved 50x more than the weights, so does its noise.
    ratio = float((sent["a.bias"] - w0["a.bias"]).std()) / float((sent["a.weight"] - w0["a.weight"]).std())
    assert 30 < ratio < 80


def test_random_is_reproducible_from_its_generator() -> None:
    w0, w = _pair()
    one = poison_update(w0, w, Attack("random"), torch.Generator().manual_seed(5))
    two = poison_update(w0, w, Attack("random"), torch.Generator().manual_seed(5))
    other = poison_update(w0, w, Attack("random"), torch.Generator().manual_seed(6))
    assert torch.equal(one["a.weight"], two["a.weight"])
    assert not torch.equal(one["a.weight"], other["a.weight"])


@pytest.mark.parametrize("kind", ATTACKS)
def test_no_update_means_nothing_to_amplify(kind: str) -> None:
    w0, _ = _pair()
    sent = poison_update(w0, {k: v.clone() for k, v in w0.items()}, Attack(kind))
    for name, t in w0.items():
        assert torch.equal(sent[name], t), (kind, name)


@pytest.mark.parametrize("kind", ATTACKS)
def test_inputs_untouched_dtype_kept_values_finite(kind: str) -> None:
    w0, w = _pair()
    w0h = {k: (v.half() if v.is_floating_point() else v) for k, v in w0.items()}
    wh = {k: (v.half() if v.is_floating_point() else v) for k, v in w.items()}
    before = {k: v.clone() for k, v in wh.items()}
    sent = poison_update(w0h, wh, Attack(kind))
    assert {k: v.dtype for k, v in sent.items()} == {k: v.dtype for k, v in wh.items()}
    assert all(bool(torch.isfinite(v).all()) for v in sent.values())
    assert all(torch.equal(before[k], wh[k]) for k in wh)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kind": "flip"}, "attack kind must be one of scaled, signflip, random; got 'flip'"),
        ({"kind": "scaled", "scale": 0.0}, "scale must be a number in (0, 1e+06]; got 0.0"),
        ({"kind": "scaled", "scale": -2.0}, "scale must be a number in (0, 1e+06]"),
        ({"kind": "signflip", "scale": math.inf}, "scale must be a number in (0, 1e+06]; got inf"),
        ({"kind": "signflip", "scale": math.nan}, "scale must be a number"),
        ({"kind": "signflip", "scale": 1e7}, "scale must be a number in (0, 1e+06]"),
        ({"kind": "random", "sigma": 0}, "sigma must be a number in (0, 1e+06]; got 0"),
        ({"kind": "random", "sigma": True}, "sigma must be a number in (0, 1e+06]; got True"),
    ],
)
def test_bad_attack_parameters_are_named(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        Attack(**kwargs)
    assert needle in str(err.value)


def test_mismatched_models_are_named() -> None:
    w0, w = _pair()
    with pytest.raises(ValueError, match=r"only in w \['extra'\]"):
        poison_update(w0, {**w, "extra": torch.zeros(1)}, Attack("scaled"))
    with pytest.raises(ValueError, match=r"tensor 'a.bias': w0 has shape \(100,\), w has \(3,\)"):
        poison_update(w0, {**w, "a.bias": torch.zeros(3)}, Attack("scaled"))


# ---------------------------------------------------------------- the poisoned callback


def _callback(monkeypatch: pytest.MonkeyPatch, kind: str, attack: Attack | None) -> tuple[Any, list[Frame]]:
    """A poisoned PyTorch callback whose channel is a stub: it records what would be sent and answers
    every sync with the next 'merged' model."""
    sent: list[Frame] = []
    merged = iter([{"w": torch.full((2, 3), float(i)), "b": torch.zeros(2)} for i in range(10)])

    def fake_call(self: Any, frame: Frame, timeout: float | None = 0.0) -> Frame:
        sent.append(frame)
        return Frame({"ok": True}, encode_state(next(merged)))

    for var in ("SWARM_MERGE_METHOD", "SWARM_SYNC_FREQUENCY", "SWARM_MIN_PEERS"):
        monkeypatch.delenv(var, raising=False)
    cls = poison.poisoned_callback(kind, attack)
    monkeypatch.setattr(poison.pyt.SwarmCallback, "_call", fake_call)
    return cls(syncFrequency=1, minPeers=2, model=nn.Linear(3, 2)), sent


def test_callback_sends_the_attack_relative_to_the_last_merged_model(monkeypatch: pytest.MonkeyPatch) -> None:
    cb, sent = _callback(monkeypatch, "signflip", Attack("signflip"))
    trained = {"w": torch.full((2, 3), 0.5), "b": torch.ones(2)}
    cb._call(Frame({"op": "sync", "kind": "initial"}, encode_state(trained)))
    assert torch.equal(decode_state(sent[0].payload)["w"], trained["w"])  # round 1 is never poisoned
    # The reply to the initial sync was merged model 0 (all zeros): the next sync is relative to it.
    cb._call(Frame({"op": "sync", "kind": "round"}, encode_state(trained)))
    got = decode_state(sent[1].payload)
    torch.testing.assert_close(got["w"], torch.full((2, 3), -2.0))  # 0 - 4 * (0.5 - 0)
    torch.testing.assert_close(got["b"], torch.full((2,), -4.0))
    # ... and then relative to merged model 1 (all ones in w), also for the final check-in.
    cb._call(Frame({"op": "finish", "mode": "snapshot"}, encode_state(trained)))
    torch.testing.assert_close(decode_state(sent[2].payload)["w"], torch.full((2, 3), 3.0))  # 1 - 4*(0.5-1)
    # Requests without weights pass untouched.
    cb._call(Frame({"op": "latest"}))
    assert sent[3].payload == b""


def test_callback_nan_kind_still_poisons_the_first_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    cb, sent = _callback(monkeypatch, "nan", None)
    trained = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    cb._call(Frame({"op": "sync", "kind": "initial"}, encode_state(trained)))
    cb._call(Frame({"op": "sync", "kind": "round"}, encode_state(trained)))
    got = decode_state(sent[1].payload)
    assert bool(torch.isnan(got["b"]).all()) and torch.equal(got["w"], trained["w"])


def test_attack_kind_needs_its_attack() -> None:
    with pytest.raises(ValueError, match="kind 'scaled' needs an Attack of that kind"):
        poison.poisoned_callback("scaled", Attack("signflip"))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--kind", "nan", "--scale", "2", "train.py"], "--scale applies to --kind scaled or signflip only"),
        (["--kind", "scaled", "--sigma", "2", "train.py"], "--sigma applies to --kind random only"),
        (["--kind", "signflip", "--scale", "-1", "train.py"], "scale must be a number in (0, 1e+06]"),
        (["--kind", "flip", "train.py"], "invalid choice: 'flip'"),
    ],
)
def test_poison_cli_refuses_bad_flags(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    monkeypatch.setattr("sys.argv", ["poison.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        poison.main()
    assert exit_.value.code == 2
    assert needle in capsys.readouterr().err
