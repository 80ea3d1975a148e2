"""The bench's lower-bound arithmetic and synthetic layer layouts (pure logic)."""

from __future__ import annotations

import math

import pytest

from bench.limits import Bandwidth, bound_seconds, copy_size_for, merge_bytes, node_bytes, round_bytes
from bench.shapes import human, layer_shapes

pytestmark = pytest.mark.unit


def test_merge_bytes_reads_every_input_once_and_writes_the_result_once() -> None:
    assert merge_bytes(4, 1_000_000) == 5 * 4_000_000
    assert merge_bytes(16, 100_000_000) == 17 * 400_000_000
    assert merge_bytes(2, 10, dtype_bytes=2) == 60


def test_round_bytes_counts_n_minus_one_uploads_and_downloads() -> None:
    assert round_bytes(4, 1_000_000) == 2 * 3 * 4_000_000
    assert round_bytes(1, 1000) == 0  # a lone peer moves nothing


def test_single_leader_moves_n_minus_one_models_in_and_out() -> None:
    assert node_bytes("single", 4, 1_000_000) == round_bytes(4, 1_000_000) == 24_000_000
    assert node_bytes("single", 32, 10_000_000) == 2 * 31 * 40_000_000


def test_sharded_node_moves_about_four_model_sizes_whatever_n() -> None:
    assert node_bytes("sharded", 4, 1_000_000) == 12_000_000  # 4 * 3/4 * 4 MB
    assert node_bytes("sharded", 2, 1_000_000) == node_bytes("single", 2, 1_000_000)  # same at N = 2
    assert node_bytes("sharded", 32, 10_000_000) == 4 * 31 * 40_000_000 // 32
    sizes = [node_bytes("sharded", n, 10_000_000) for n in (4, 8, 16, 32)]
    assert max(sizes) / min(sizes) < 4 / 3  # flat in N: 3/4 .. 31/32 of 4 P b
    assert node_bytes("sharded", 1, 1000) == 0
    # Secure aggregation: masked inputs in (8 bytes a value), the float32 merged model out.
    assert node_bytes("secagg", 4, 1_000_000) == 3 * 1_000_000 * 12
    assert node_bytes("secagg", 4, 1_000_000) == 1.5 * node_bytes("single", 4, 1_000_000)


def test_node_bytes_rejects_an_unknown_mode_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="mode must be one of single, sharded, secagg; got 'auto'"):
        node_bytes("auto", 4, 1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_peers": 0, "n_params": 1},
        {"n_peers": 2, "n_params": 0},
        {"n_peers": True, "n_params": 5},
        {"n_peers": 2, "n_params": 1.5},
    ],
)
def test_byte_counts_reject_bad_sizes_naming_the_parameter(kwargs: dict[str, object]) -> None:
    bad = next(
        k for k, v in kwargs.items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    )
    with pytest.raises(ValueError, match=bad):
        merge_bytes(**kwargs)  # type: ignore[arg-type]


def test_bound_seconds_divides_bytes_by_bandwidth() -> None:
    bw = Bandwidth(bytes_per_second=10e9, how="test")
    assert bound_seconds(merge_bytes(4, 10_000_000), bw) == pytest.approx(0.02)
    assert bound_seconds(0, bw) == 0.0


def test_bound_seconds_rejects_zero_bandwidth_and_negative_bytes() -> None:
    with pytest.raises(ValueError, match="bytes_per_second"):
        bound_seconds(10, Bandwidth(0.0, "broken"))
    with pytest.raises(ValueError, match="n_bytes"):
        bound_seconds(-1, Bandwidth(1.0, "x"))


def test_copy_size_matches_the_kernel_footprint_within_limits() -> None:
    assert copy_size_for(merge_bytes(4, 1_000_000)) == 10_000_000  # half of 20 MB: fits the caches too
    assert copy_size_for(1000) == 8 << 20
    assert copy_size_for(merge_bytes(16, 100_000_000)) == 512 << 20


@pytest.mark.parametrize("p", [16384, 1_000_000, 10_000_000, 100_000_000, 1_234_567])
def test_layer_shapes_add_up_exactly_with_big_matrices_first(p: int) -> None:
    shapes = layer_shapes(p)
    assert sum(math.prod(s) for s in shapes) == p
    matrices = [s for s in shapes if len(s) == 2]
    assert len(matrices) == 4
    assert matrices[0][0] >= matrices[-1][0]
    assert sum(math.prod(s) for s in matrices) > 0.85 * p


def test_layer_shapes_rejects_tiny_models() -> None:
    with pytest.raises(ValueError, match="n_params must be an integer >= 16384"):
        layer_shapes(100)


def test_human_sizes() -> None:
    assert [human(x) for x in (10**6, 10**7, 10**8, 1500, 2000)] == ["1M", "10M", "100M", "1500", "2k"]
