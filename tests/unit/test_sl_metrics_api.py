"""The SL node's Prometheus metrics (``swarmlearning.sl.metrics``): the API moves the right series, the
rejection texts map to the fixed reason classes, and the HTTP server serves them and stops."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from swarmlearning.sl.metrics import (
    KINDS,
    PHASES,
    REJECT_REASONS,
    MetricsServer,
    SLMetrics,
    peer_error_reason,
    reject_reason,
)

pytestmark = pytest.mark.unit


def value(m: SLMetrics, name: str, **labels: str) -> float | None:
    got = m.registry.get_sample_value(name, labels)
    return got


def test_counters_and_gauges_move_as_the_api_is_called() -> None:
    m = SLMetrics()
    m.contract_seen("c")
    assert value(m, "swarm_sl_rounds_joined_total", contract="c") == 0
    m.round_joined("c")
    m.round_joined("c")
    m.round_led("c")
    assert value(m, "swarm_sl_rounds_joined_total", contract="c") == 2
    assert value(m, "swarm_sl_rounds_led_total", contract="c") == 1
    m.rejected("nonfinite")
    m.rejected("free text is not a label value")
    assert value(m, "swarm_sl_rejected_inputs_total", reason="nonfinite") == 1
    assert value(m, "swarm_sl_rejected_inputs_total", reason="other") == 1
    m.quorum_waited(2.5)
    m.leader_failover()
    assert value(m, "swarm_sl_quorum_waits_total") == 1
    assert value(m, "swarm_sl_quorum_wait_seconds_total") == 2.5
    assert value(m, "swarm_sl_leader_failovers_total") == 1
    m.progress("c", 0.7, None)
    m.progress("c", None, 0.9)
    assert value(m, "swarm_sl_latest_loss", contract="c") == 0.7
    assert value(m, "swarm_sl_latest_metric", contract="c") == 0.9
    m.ledger_seq(9)
    m.ledger_seq(3)  # an older record seen later does not lower the height
    assert value(m, "swarm_sl_ledger_height") == 10
    # A second node object has its own registry.
    assert value(SLMetrics(), "swarm_sl_ledger_height") == 0


def test_phases_and_peer_bytes() -> None:
    m = SLMetrics()
    for phase in PHASES:
        assert value(m, "swarm_sl_round_phase_seconds_count", phase=phase) == 0
    with m.phase("merge"):
        pass
    with pytest.raises(RuntimeError), m.phase("fetch"):
        raise RuntimeError("a failed fetch is not a fetch time")
    assert value(m, "swarm_sl_round_phase_seconds_count", phase="merge") == 1
    assert value(m, "swarm_sl_round_phase_seconds_count", phase="fetch") == 0
    with pytest.raises(ValueError, match="phase 'merging': must be one of barrier, fetch"):
        m.observe_phase("merging", 1)
    # Distribution ends with the last expected download of the merged model.
    m.distribution_started("c", 4, downloads=2)
    m.model_sent("c", 4, "input", 10)
    m.model_sent("c", 4, "merged", 100)
    assert value(m, "swarm_sl_round_phase_seconds_count", phase="distribution") == 0
    m.model_sent("c", 4, "merged", 100)
    m.model_sent("c", 4, "merged", 100)  # a later download of the same round is only bytes
    assert value(m, "swarm_sl_round_phase_seconds_count", phase="distribution") == 1
    m.model_received("merged", 7)
    assert value(m, "swarm_sl_peer_bytes_sent_total", kind="merged") == 300
    assert value(m, "swarm_sl_peer_bytes_sent_total", kind="input") == 10
    assert value(m, "swarm_sl_peer_bytes_received_total", kind="merged") == 7
    assert value(m, "swarm_sl_peer_bytes_received_total", kind="input") == 0
    with pytest.raises(ValueError, match="kind 'weights': must be one of input, merged, manifest"):
        m.model_received("weights", 1)
    assert set(KINDS) == {"input", "merged", "manifest", "input-chunk", "merged-chunk"} | {
        f"sa-{step}" for step in ("keys", "keyset", "shares", "relay", "masked", "unmask", "reveal")
    }
    # Secure-aggregation messages count under their step, whatever the attempt.
    m.model_sent("c", 2, "sa-masked-0", 4)
    m.model_sent("c", 2, "sa-masked-12", 5)
    assert value(m, "swarm_sl_peer_bytes_sent_total", kind="sa-masked") == 9
    # Chunks of the sharded merge count under their family, whatever their index.
    m.model_received("input-chunk-3", 5)
    m.model_received("input-chunk-63", 6)
    assert value(m, "swarm_sl_peer_bytes_received_total", kind="input-chunk") == 11
    with pytest.raises(ValueError, match="kind 'input-chunk-64'"):
        m.model_received("input-chunk-64", 1)


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("tensor 'fc.weight' has 3 non-finite values (NaN or Inf)", "nonfinite"),
        ("tensor 'fc.weight' has shape (10, 64, 3), expected (10, 64)", "shape"),
        ("tensor 'x' has dtype torch.float64, expected torch.float32", "dtype"),
        ("missing tensors: 'a', 'b'", "names"),
        ("unexpected tensors: 'c'", "names"),
        ("unreachable: https://h:1/v1/models/c/2/input: HTTP 404: 'gone'", "unreachable"),
        ("not safetensors: header too large", "other"),
        ("tensor 'b' (bool) has 2 bytes other than 0 and 1", "other"),
    ],
)
def test_rejection_texts_map_to_reason_classes(problem: str, reason: str) -> None:
    assert reject_reason(problem) == reason
    assert reason in REJECT_REASONS


def test_peer_error_kinds_map_to_reason_classes() -> None:
    assert peer_error_reason("bad-digest") == "digest"
    assert peer_error_reason("too-large") == "oversize"
    assert peer_error_reason("bad-header") == "other"
    assert peer_error_reason("") == "unreachable"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_serves_the_exposition_and_stops() -> None:
    async def go() -> None:
        m = SLMetrics()
        m.round_joined("c")
        server = MetricsServer(m, "127.0.0.1", _free_port())
        await server.start()
        try:
            busy = MetricsServer(SLMetrics(), "127.0.0.1", server.port)
            with pytest.raises(OSError, match=f"127.0.0.1:{server.port} is in use.*--metrics-port"):
                await busy.start()
            async with aiohttp.ClientSession() as http, http.get(server.url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
        finally:
            await server.stop()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        joined = families["swarm_sl_rounds_joined"].samples
        assert [(s.labels, s.value) for s in joined if s.name.endswith("_total")] == [({"contract": "c"}, 1)]
        (cpu,) = families["process_cpu_seconds"].samples  # the process collector: what the node costs
        assert cpu.value > 0
        with socket.socket() as s:  # stopped: nothing listens there any more
            assert s.connect_ex(("127.0.0.1", server.port)) != 0

    asyncio.run(go())
    with pytest.raises(ValueError, match="metrics port 0: must be 1-65535"):
        MetricsServer(SLMetrics(), "127.0.0.1", 0)
