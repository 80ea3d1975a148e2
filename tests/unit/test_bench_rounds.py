"""The round benchmark's pure parts: bytes per node per round from the SL counters, cell prediction,
the grid's checks, the summary lines and the ML programs' Prometheus parsing."""

from __future__ import annotations

import pytest

from bench.results import Row
from bench.rounds import RoundConfig, headline, predict_cell_s, round_bytes_stats
from bench.swarm_roundapp.roundclock import parse_counters

pytestmark = pytest.mark.unit

MB = 1e6


def _node(counters: list[tuple[float | None, float | None]]) -> list[dict[str, object]]:
    """Records of one node: round -1 then 0, 1, ... with cumulative (received, sent) bytes."""
    return [
        {"round": r - 1, "start": 0.0, "end": 0.0, "received": rec, "sent": sent}
        for r, (rec, sent) in enumerate(counters)
    ]


def test_bytes_per_round_are_differences_of_the_counters() -> None:
    # leader receives 3 MB and serves 3 MB a round; each of three others sends 1 MB and receives 1 MB.
    leader = _node([(0, 0), (3 * MB, 3 * MB), (6 * MB, 6 * MB)])
    others = [_node([(5, 7), (5 + MB, 7 + MB), (5 + 2 * MB, 7 + 2 * MB)]) for _ in range(3)]
    stats = round_bytes_stats([leader, *others])
    assert [s["round"] for s in stats] == [0.0, 1.0]
    for s in stats:
        assert s["in_max"] == pytest.approx(3 * MB)
        assert s["out_max"] == pytest.approx(3 * MB)
        assert s["in_mean"] == pytest.approx(1.5 * MB)
        assert s["out_mean"] == pytest.approx(1.5 * MB)
        assert s["total_max"] == pytest.approx(6 * MB)


def test_rounds_without_counters_at_some_node_are_dropped() -> None:
    a = _node([(0, 0), (1, 1), (2, 2), (3, 3)])
    b = _node([(0, 0), (None, None), (2, 2), (3, 3)])  # its /metrics did not answer after round 0
    stats = round_bytes_stats([a, b])
    assert [s["round"] for s in stats] == [2.0]  # round 0 lacks b's value, round 1 lacks its previous
    assert round_bytes_stats([]) == []


def test_total_max_is_the_busiest_single_node_not_the_sum_of_maxima() -> None:
    a = _node([(0, 0), (10, 0)])  # receives only
    b = _node([(0, 0), (0, 10)])  # sends only
    (s,) = round_bytes_stats([a, b])
    assert s["in_max"] == s["out_max"] == s["total_max"] == 10


def test_prometheus_counters_are_summed_over_kinds() -> None:
    text = "\n".join(
        [
            "# HELP swarm_sl_peer_bytes_sent_total Model bytes served to other SL nodes",
            "# TYPE swarm_sl_peer_bytes_sent_total counter",
            'swarm_sl_peer_bytes_sent_total{kind="input"} 4.0e+06',
            'swarm_sl_peer_bytes_sent_total{kind="merged-chunk"} 1000.0',
            'swarm_sl_peer_bytes_sent_created{kind="input"} 1.7e+09',
            'swarm_sl_peer_bytes_received_total{kind="merged"} 4000000.0',
            "swarm_sl_rounds_joined_total 3.0",
        ]
    )
    assert parse_counters(text) == {"sent": 4_001_000.0, "received": 4_000_000.0, "cpu": None}
    assert parse_counters("") == {"sent": 0.0, "received": 0.0, "cpu": None}
    cpu = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n"
    assert parse_counters(cpu)["cpu"] == 12.5


def test_cpu_per_round_is_reported_only_when_every_node_has_it() -> None:
    def node(cpus: list[float | None]) -> list[dict[str, object]]:
        return [
            {"round": r - 1, "start": 0.0, "end": 0.0, "received": 0.0, "sent": 0.0, "cpu": c}
            for r, c in enumerate(cpus)
        ]

    stats = round_bytes_stats([node([1.0, 1.5, 2.5]), node([0.0, 0.25, None])])
    assert stats[0]["cpu_max"] == pytest.approx(0.5) and stats[0]["cpu_sum"] == pytest.approx(0.75)
    assert "cpu_max" not in stats[1]  # the second node's CPU time is missing in round 1


def test_prediction_grows_with_n_and_the_bound() -> None:
    assert predict_cell_s(4, 1.0, 3, 10.0) == pytest.approx(4 * 3.0 + 4 * 10.0)
    assert predict_cell_s(32, 1.0, 3, 10.0) > predict_cell_s(16, 1.0, 3, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modes": ("single", "ring")}, "modes must be a non-empty subset of single, sharded"),
        ({"modes": ()}, "modes must be a non-empty subset"),
        ({"rounds": 1}, "rounds must be >= 2"),
        ({"ns": (1, 4)}, "ns must all be >= 2"),
    ],
)
def test_round_config_rejects_bad_grids_naming_the_field(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RoundConfig(**kwargs)  # type: ignore[arg-type]


def _row(mode: str, n: int, p: str, swarm_s: float, node_mb: float, x_bound: float) -> Row:
    return Row(
        "scaling",
        f"{mode} N={n} P={p}",
        {"mode": mode, "N": n, "P": p},
        {"swarm_s": swarm_s, "node_max_MB": node_mb, "swarm_x_bound": x_bound},
    )


def test_headline_reports_flatness_speed_up_and_bound_at_the_largest_p() -> None:
    rows = [
        _row("single", 4, "10M", 2.0, 240.0, 5.0),
        _row("single", 16, "10M", 8.0, 1200.0, 4.0),
        _row("sharded", 4, "10M", 1.5, 120.0, 3.0),
        _row("sharded", 16, "10M", 2.0, 150.0, 2.5),
        _row("sharded", 16, "1M", 0.5, 15.0, 9.0),
    ]
    lines = headline(rows)
    assert (
        "sharded P=10M: busiest node 120.0-150.0 MB/round over N=4..16, spread 25% (goal within 10%); "
        "the bytes that must move spread 25%" in lines
    )
    assert "P=10M: sharded round time / single's: N=4 0.75x, N=16 0.25x" in lines
    assert "N=16 P=10M: sharded 2.00 s vs single 8.00 s: 4.00x faster (goal >= 2x)" in lines
    assert "sharded P=10M: round / TLS loopback bound N=4 3.0x, N=16 2.5x (goal <= 2x at P=10M)" in lines
    assert not any("P=1M: busiest" in x for x in lines)  # one N only: no spread


def test_memory_prediction_grows_with_n_and_p_and_counts_the_single_leaders_inputs() -> None:
    from bench.rounds import predict_cell_bytes

    small, big = (
        predict_cell_bytes("sharded", 4, 10**6, "torch"),
        predict_cell_bytes("sharded", 32, 10**6, "torch"),
    )
    assert big == pytest.approx(8 * small)
    assert predict_cell_bytes("sharded", 4, 10**7, "torch") > small
    model = 4 * 10**7
    single, sharded = (
        predict_cell_bytes("single", 16, 10**7, "torch"),
        predict_cell_bytes("sharded", 16, 10**7, "torch"),
    )
    assert single - sharded == pytest.approx(2 * 15 * model)
    assert predict_cell_bytes("sharded", 32, 10**7, "weights") < predict_cell_bytes(
        "sharded", 32, 10**7, "torch"
    )
