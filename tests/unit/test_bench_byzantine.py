"""bench/byzantine.py's simulated rounds: which input is poisoned, finished sites' snapshots, what is
measured about the poisoned input, and the plot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.byzantine import PoisonedMerge
from bench.plots import plot_part
from bench.results import PartResult, Row, Value
from tests.chaos.attacks import Attack

pytestmark = pytest.mark.unit

START = {"w": torch.zeros(4, 5), "b": torch.zeros(5)}


def _honest(i: int, step: float = 1.0) -> dict[str, torch.Tensor]:
    """Site i's honest weights: all near ``step``, a little apart per site."""
    g = torch.Generator().manual_seed(i)
    return {k: step + 0.01 * torch.randn(v.shape, generator=g) for k, v in START.items()}


def _merge(method: str, schedule: list[list[int]], **options: object) -> PoisonedMerge:
    return PoisonedMerge(method, schedule, [100] * 5, START, Attack("signflip"), options)


def test_krum_round_poisons_site_0_relative_to_the_last_merge_and_records_the_exclusion() -> None:
    agg = _merge("krum", [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]], byzantine=1)
    first = agg([_honest(i) for i in range(5)], [100] * 5)
    # site 0 sent 0 - 4 * (w - 0): far from the others, never picked; the merge is one honest input
    assert torch.equal(agg.last[0]["w"], -4 * _honest(0)["w"])
    assert any(torch.equal(first["w"], _honest(i)["w"]) for i in range(1, 5))
    second = agg([_honest(i, 2.0) for i in range(5)], [100] * 5)
    torch.testing.assert_close(agg.last[0]["b"], first["b"] - 4 * (_honest(0, 2.0)["b"] - first["b"]))
    assert agg.excluded_rounds == [True, True] and agg.rounds == 2
    assert any(torch.equal(second["b"], _honest(i, 2.0)["b"]) for i in range(1, 5))


def test_a_finished_site_keeps_contributing_its_last_input() -> None:
    agg = _merge("mean", [[0, 1, 2, 3, 4], [1, 2, 3, 4]])
    agg([_honest(i) for i in range(5)], [100] * 5)
    poisoned = agg.last[0]
    agg([_honest(i, 2.0) for i in range(1, 5)], [100] * 4)
    assert agg.last[0] is poisoned  # its snapshot, merged again
    assert agg.poison_weight == [pytest.approx(0.2), pytest.approx(0.2)]


def test_coordinate_methods_record_the_share_of_coordinates_kept_out() -> None:
    for method, options in (("coordmedian", {}), ("trimmedmean", {"trim_fraction": 0.2})):
        agg = _merge(method, [[0, 1, 2, 3, 4]], **options)
        agg([_honest(i) for i in range(5)], [100] * 5)
        # -4 is below every honest value in every coordinate: trimmed / never the median
        assert agg.excluded_coords == [1.0], method


def test_geomedian_gives_a_far_input_little_weight() -> None:
    agg = _merge("geomedian", [[0, 1, 2, 3, 4]])
    agg([_honest(i) for i in range(5)], [100] * 5)
    assert agg.poison_weight[0] < 0.05  # an honest site has about 1/4 of the rest


def test_a_changed_schedule_is_named() -> None:
    agg = _merge("mean", [[0, 1, 2]])
    with pytest.raises(RuntimeError, match=r"merged 2 models in call 1; its round schedule says \[0, 1, 2\]"):
        agg([_honest(0), _honest(1)], [100, 100])


def test_plot_has_a_panel_per_case(tmp_path: Path) -> None:
    def row(mode: str, n: int, attack: str, method: str, acc: float) -> Row:
        metrics: dict[str, Value] = {"acc_%": acc, "honest_only_%": 96.0, "clean_%": 97.0}
        params: dict[str, Value] = {"mode": mode, "N": n, "split": "iid", "attack": attack, "method": method}
        return Row("byzantine", f"{mode} {n} {attack} {method}", params, metrics)

    rows = (
        row("sim", 8, "signflip", "mean", 50.0),
        row("sim", 8, "signflip", "krum", 92.0),
        row("real", 5, "signflip", "krum", 94.0),
        row("real", 5, "none", "mean", 95.0),
    )
    path = plot_part(PartResult("byzantine", rows), tmp_path)
    assert path is not None and path.stat().st_size > 10_000
    assert plot_part(PartResult("byzantine", ()), tmp_path) is None
