"""Part privacy's pure pieces: its summary lines and its plot from rows (the runs are `make bench`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.plots import plot_part
from bench.privacy import PrivacyConfig, summary
from bench.results import PartResult, Row

pytestmark = pytest.mark.unit


def _acc(dp: str, sigma: float | None, eps: float | None, acc: float) -> Row:
    metrics = {"epsilon": eps, "swarm_acc": acc, "local_only_acc": 0.8, "central_acc": 0.97, "rounds": 30}
    return Row("privacy", f"{dp} {sigma}", {"dp": dp, "sigma": sigma, "N": 4, "epochs": 10}, metrics)


def _round(mode: str, n: int, s: float, mb: float, **ratios: float) -> Row:
    params = {"mode": mode, "N": n, "P": "1M"}
    return Row("privacy", f"{mode} N={n}", params, {"swarm_s": s, "node_max_MB": mb, **ratios})


ROWS = (
    _acc("none", None, None, 0.96),
    _acc("dp-sgd", 2.0, 1.5, 0.81),
    _acc("dp-sgd", 0.5, 40.0, 0.93),
    _acc("site", 0.3, 900.0, 0.42),
    _round("single", 3, 0.5, 16.0),
    _round("secagg", 3, 1.5, 24.0, x_plain_time=3.0, x_plain_bytes=1.5),
)


def test_summary_orders_each_dp_kind_by_epsilon_and_gives_secaggs_ratios() -> None:
    lines = summary(ROWS)
    assert lines[0] == "digits, 4 sites: swarm without DP 0.960, mean local-only 0.800, central 0.970"
    assert lines[1] == "DP-SGD (per node): ε 1.5 -> 0.810, ε 40 -> 0.930"
    assert lines[2] == "site-level DP: ε 900 -> 0.420"
    assert lines[3] == (
        "secure aggregation N=3 P=1M: round 3.00x the plain mean's time, busiest node 1.50x its bytes"
    )


def test_the_plot_has_the_accuracy_curves_and_the_round_times(tmp_path: Path) -> None:
    path = plot_part(PartResult("privacy", ROWS), tmp_path)
    assert path is not None and path.stat().st_size > 10_000
    assert plot_part(PartResult("privacy", ()), tmp_path) is None


def test_site_noise_out_of_the_contracts_range_is_refused() -> None:
    with pytest.raises(ValueError, match="site_sigmas must be 0.1-100"):
        PrivacyConfig(site_sigmas=(0.05,))
