"""The bench's result rows, table writer, JSON round trip and round-timing arithmetic (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import PartResult, Row, fmt, from_json, markdown_table, merge_parts, to_json, write_results
from bench.rounds import round_latencies, steady

pytestmark = pytest.mark.unit


def test_row_rejects_unknown_part() -> None:
    with pytest.raises(ValueError, match="part must be one of"):
        Row("speed", "x")


def test_fmt_three_significant_digits_and_dash_for_missing() -> None:
    assert fmt(None) == "-"
    assert fmt(1.23456) == "1.23"
    assert fmt(123.456) == "123"
    assert fmt(0.000123) == "0.000123"
    assert fmt(12345.0) == "1.23e+04"
    assert fmt(0.0) == "0"
    assert fmt(7) == "7"


def test_markdown_table_has_union_of_columns_in_first_seen_order() -> None:
    rows = [
        Row("merge", "a", {"N": 4}, {"seconds": 1.5}),
        Row("merge", "b", {"N": 8, "P": "1M"}, {"seconds": 2.0, "x_bound": 3.0}, "skipped: x|y"),
    ]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| case | N | P | seconds | x_bound | note |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| a | 4 | - | 1.5 | - |  |"
    assert lines[3] == "| b | 8 | 1M | 2 | 3 | skipped: x/y |"  # a '|' in a note would break the table


def test_json_round_trip_keeps_everything() -> None:
    part = PartResult(
        "round",
        (Row("round", "N=4", {"N": 4}, {"swarm_s": 0.5, "flower_s": None}, "n"),),
        {"TLS MB/s": 400.0},
        "now",
        ("line",),
    )
    parts, meta = from_json(to_json([part], {"mode": "quick"}))
    assert parts == [part]
    assert meta == {"mode": "quick"}


def test_rerunning_one_part_keeps_the_others(tmp_path: Path) -> None:
    merge = PartResult("merge", (Row("merge", "old"),))
    quality = PartResult("quality", (Row("quality", "q"),))
    write_results(tmp_path, [merge, quality], {})
    new_merge = PartResult("merge", (Row("merge", "new"),))
    merged = write_results(tmp_path, [new_merge], {"mode": "full"})
    assert [p.part for p in merged] == ["merge", "quality"]
    assert merged[0].rows[0].case == "new"
    text = (tmp_path / "latest.md").read_text()
    assert "| new |" in text and "| q |" in text and "| old |" not in text
    assert from_json((tmp_path / "latest.json").read_text())[0] == merged


def test_merge_parts_orders_by_part_list() -> None:
    out = merge_parts([PartResult("operator", ())], [PartResult("merge", ())])
    assert [p.part for p in out] == ["merge", "operator"]


def test_round_latency_is_last_end_minus_last_start() -> None:
    a = [{"round": 0, "start": 10.0, "end": 12.0}, {"round": 1, "start": 12.5, "end": 13.0}]
    b = [{"round": 0, "start": 11.0, "end": 12.2}, {"round": 1, "start": 12.4, "end": 13.1}]
    assert round_latencies([a, b]) == pytest.approx([1.2, 0.6])


def test_round_latency_ignores_the_counters_only_line() -> None:
    a = [{"round": -1, "start": 5.0, "end": 5.0}, {"round": 0, "start": 10.0, "end": 12.0}]
    b = [{"round": -1, "start": 9.0, "end": 9.0}, {"round": 0, "start": 11.0, "end": 12.2}]
    assert round_latencies([a, b]) == pytest.approx([1.2])


def test_round_latency_drops_rounds_some_node_did_not_record() -> None:
    a = [{"round": 0, "start": 0.0, "end": 1.0}, {"round": 1, "start": 1.0, "end": 2.0}]
    b = [{"round": 0, "start": 0.0, "end": 1.5}]
    assert round_latencies([a, b]) == [1.5]
    assert round_latencies([]) == []


def test_steady_median_skips_the_warm_up_round() -> None:
    assert steady([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert steady([9.0]) is None
