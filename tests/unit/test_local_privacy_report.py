"""What `swarmctl run` says a run's privacy options spent, from its round records (pure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from swarmlearning.local.report import PrivacySpent

pytestmark = pytest.mark.unit


def _round(n: int, extra: dict[str, Any], kind: str = "round") -> Any:
    return SimpleNamespace(kind=kind, body={"round": n, "extra": extra})


def test_the_last_rounds_figures_count_and_every_secure_round_and_dropout_is_summed() -> None:
    site = {"clipNorm": 1.0, "noiseMultiplier": 0.5, "delta": 1e-5}
    records = [
        _round(3, {"privacy": {"siteDp": site | {"epsilon": 9.0}, "secureAggregation": {"dropped": ["c"]}},
                   "epsilon": {"a": 2.0, "b": 2.5}}),
        _round(1, {}),
        _round(2, {"privacy": {"siteDp": site | {"epsilon": 6.0}, "secureAggregation": {"dropped": []}},
                   "epsilon": {"a": 1.0, "b": 1.5, "c": 1.2}}),
        _round(4, {}, kind="close"),
    ]  # fmt: skip
    spent = PrivacySpent.of(records)
    assert (spent.site_epsilon, spent.site_delta) == (9.0, 1e-5)
    assert spent.dp_sgd_epsilon == {"a": 2.0, "b": 2.5, "c": 1.2}  # c's last input was in round 2
    assert (spent.secure_rounds, spent.dropouts_recovered) == (2, 1)
    assert spent.line() == (
        "privacy: site-level DP epsilon 9 (delta 1e-05); DP-SGD epsilon per node a 2, b 2.5, c 1.2; "
        "secure aggregation in 2 rounds (1 dropouts recovered)"
    )


def test_a_run_without_privacy_says_nothing() -> None:
    spent = PrivacySpent.of([_round(1, {}), _round(2, {"loss": {"a": 0.3}})])
    assert spent.line() is None and spent.dp_sgd_epsilon == {} and spent.site_epsilon is None
