"""Prometheus metrics of live SL nodes: a real local swarm (SN, 2 SL and 2 ML processes on loopback),
``/metrics`` scraped over HTTP while it trains, and the chart's Grafana dashboard checked against what
the nodes really export.

node-2 runs the poisoned training program (``tests/chaos/poison.py --kind nan``): every input after
round 1 is NaN, so the leaders reject it and ``swarm_sl_rejected_inputs_total{reason="nonfinite"}``
moves. Each site keeps its own model archive, so merged models travel over the peer link (a shared one
would hand them over on disk).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from swarmlearning.local.runner import LocalSwarm, tail
from swarmlearning.sl.metrics import REJECT_REASONS

from tests.integration.test_swarm import (
    DIGITS,
    POISON,
    ROOT,
    close_records,
    round_records,
    sl_log,
    small_config,
    wait_for,
)

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "charts" / "swarm-learning" / "dashboards" / "swarm-training.json"
SCRAPE_TIMEOUT_SECONDS = 2.0
RUN_TIMEOUT_SECONDS = 240.0
"""The whole run: a few rounds of the digits example on a loaded 2-core machine."""
SL_SERVED_SECONDS = 60.0
"""After the ML processes ended: until the SL nodes served the final model (linger <= 30 s)."""
METRIC_NAME = re.compile(r"\bswarm_sl_[A-Za-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def scrape(url: str) -> str | None:
    """The exposition text at ``url``, None when the node is not (or no longer) serving."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples(text).items() if n == name and labels.items() <= dict(ls).items())


def family_types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def exprs(node: Any) -> Iterable[str]:
    """Every PromQL text in a dashboard: panel targets' ``expr`` and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from ([value] if isinstance(value, str) else exprs(value))
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {m for e in exprs(dashboard) for m in METRIC_NAME.findall(e)}


def family_of(name: str, histograms: set[str]) -> str:
    """The metric family a queried name belongs to: ``x_bucket``/``x_sum``/``x_count`` of histogram
    ``x`` is ``x``; anything else (``y_total`` of counter ``y`` included) is compared as a sample name."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def test_dashboard_metric_names_are_extracted_per_family() -> None:
    """The helper itself: histogram suffixes are stripped only for histograms, counters keep _total."""
    histograms = {"swarm_sl_round_phase_seconds"}
    assert family_of("swarm_sl_round_phase_seconds_bucket", histograms) == "swarm_sl_round_phase_seconds"
    assert family_of("swarm_sl_round_phase_seconds_count", histograms) == "swarm_sl_round_phase_seconds"
    assert family_of("swarm_sl_quorum_waits_total", histograms) == "swarm_sl_quorum_waits_total"
    assert family_of("swarm_sl_other_count", histograms) == "swarm_sl_other_count"
    names = dashboard_metrics(json.loads(DASHBOARD.read_text()))
    assert {"swarm_sl_round_phase_seconds_bucket", "swarm_sl_rounds_joined_total"} <= names, names


def test_live_sl_nodes_export_training_metrics_the_dashboard_queries(tmp_path: Path) -> None:
    cfg = small_config(2, train={"epochs": 2})
    ml = {"node-2": [sys.executable, str(POISON), "--kind", "nan", str(DIGITS / "train.py")]}
    # The SL nodes stay up after serving the final model (as a pod's sidecar does), so the last scrape
    # sees every round; the swarm's teardown stops them.
    stay = {n: {"SWARM_SL_STAY_UNTIL_STOPPED": "true"} for n in cfg.node_names()}
    during: dict[str, str] = {}
    with LocalSwarm(cfg, tmp_path / "run", ml_command=ml, node_env=stay, shared_model_archive=False) as swarm:
        swarm.prepare()
        swarm.start_all()
        urls = json.loads(swarm.metrics_urls_path.read_text())
        assert sorted(urls) == ["node-1", "node-2"], urls
        assert all(u.startswith("http://127.0.0.1:") and u.endswith("/metrics") for u in urls.values())

        def scrape_while_training() -> None:
            for name, url in urls.items():
                if name not in during and (text := scrape(url)) is not None:
                    during[name] = text

        codes = swarm.wait_ml(timeout=RUN_TIMEOUT_SECONDS, on_tick=scrape_while_training)
        assert codes == {"node-1": 0, "node-2": 0}, {
            n: tail(swarm.nodes[n].ml.log_path, 15)  # type: ignore[union-attr]
            for n in codes
        }

        def served() -> bool:
            return all("waiting for the pod to stop this sidecar" in sl_log(swarm, n) for n in urls)

        wait_for("both SL nodes to have served the final model", served, SL_SERVED_SECONDS, swarm)
        last = {name: scrape(url) for name, url in urls.items()}
        rounds = round_records(swarm)
        closes = close_records(swarm)
    assert sorted(during) == ["node-1", "node-2"], f"/metrics not served during training: {sorted(during)}"
    assert all("swarm_sl_ledger_height" in t for t in during.values())
    assert all(last.values()), f"/metrics not served after training: {last}"
    final = {n: t for n, t in last.items() if t is not None}
    assert len(rounds) >= 3, sorted(rounds)
    contract = rounds[max(rounds)].contract
    for name, text in final.items():
        joined = sum(1 for rec in closes.values() if name in {p["name"] for p in rec.body["participants"]})
        led = sum(1 for rec in rounds.values() if rec.author == name)
        assert total(text, "swarm_sl_rounds_joined_total", contract=contract) == joined > 0, name
        assert total(text, "swarm_sl_rounds_led_total", contract=contract) == led, name
        assert total(text, "swarm_sl_round_phase_seconds_count", phase="barrier") == joined, name
        assert total(text, "swarm_sl_round_phase_seconds_count", phase="fetch") > 0, name
        for phase in ("merge", "commit"):
            assert total(text, "swarm_sl_round_phase_seconds_count", phase=phase) == led, (name, phase)
        assert total(text, "swarm_sl_peer_bytes_sent_total") > 0, name
        assert total(text, "swarm_sl_peer_bytes_received_total") > 0, name
        # At least its own member record, the contract, every close and round record.
        assert total(text, "swarm_sl_ledger_height") >= 2 + len(closes) + len(rounds), name
        assert total(text, "swarm_sl_latest_loss", contract=contract) > 0, name
        assert total(text, "swarm_sl_latest_metric", contract=contract) > 0, name
    assert sum(total(t, "swarm_sl_rounds_led_total") for t in final.values()) == len(rounds)
    # Each site has its own archive: merged models went over the peer link, timed as distribution.
    assert sum(total(t, "swarm_sl_peer_bytes_received_total", kind="merged") for t in final.values()) > 0
    assert (
        sum(total(t, "swarm_sl_round_phase_seconds_count", phase="distribution") for t in final.values()) > 0
    )
    # node-2's NaN inputs were rejected by the leaders as non-finite, never for another reason.
    rejected = {
        reason: sum(total(t, "swarm_sl_rejected_inputs_total", reason=reason) for t in final.values())
        for reason in REJECT_REASONS
    }
    n_rejected = sum(1 for rec in rounds.values() if "node-2" in rec.body.get("rejected", {}))
    assert n_rejected > 0, "node-2's poisoned inputs were never rejected"
    assert rejected == {r: (n_rejected if r == "nonfinite" else 0) for r in REJECT_REASONS}, rejected

    # The dashboard: every metric any panel queries is in each live node's exposition.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = dashboard_metrics(dashboard)
    assert len(queried) >= 9, queried
    for name, text in final.items():
        types = family_types(text)
        histograms = {f for f, t in types.items() if t == "histogram"}
        present = {n for n, _ in samples(text)}
        for metric in sorted(queried):
            assert metric in present, f"dashboard queries {metric}, which {name} does not export"
            family = family_of(metric, histograms)
            if family != metric:
                assert types[family] == "histogram", (metric, types[family])
