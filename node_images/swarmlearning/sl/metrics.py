"""Prometheus metrics of one SL node, served on plain HTTP ``/metrics`` (port 9464 named ``metrics`` in
pods; ``--metrics-port`` / ``SWARM_SL_METRICS_PORT``, 0 = off).

Every :class:`SLMetrics` has its own ``CollectorRegistry`` (tests run several SL nodes in one process);
there is no ``node`` label: Prometheus adds the pod's labels. Exported (``contract``, ``phase``, ``kind``,
``reason`` are labels; phases, kinds and reasons are fixed sets, pre-set to 0 so that every series exists
before its first event):

- ``swarm_sl_rounds_joined_total{contract}``: rounds whose close included this node;
- ``swarm_sl_rounds_led_total{contract}``: rounds this node merged and committed as leader;
- ``swarm_sl_round_phase_seconds{phase}`` (histogram, seconds): ``barrier`` (ready mark until the round
  closed), ``fetch`` (leader: downloading every input; others: downloading the merged model),
  ``merge`` (leader: validating and merging), ``distribution`` (leader: merged model stored until every
  other participant of the close downloaded it from here; not observed when one got it elsewhere),
  ``commit`` (leader: appending the round record);
- ``swarm_sl_peer_bytes_sent_total{kind}`` / ``swarm_sl_peer_bytes_received_total{kind}``: model bytes
  over the peer link, ``kind`` = input | merged;
- ``swarm_sl_rejected_inputs_total{reason}``: inputs this node rejected as leader, by
  :data:`REJECT_REASONS`;
- ``swarm_sl_quorum_waits_total``, ``swarm_sl_quorum_wait_seconds_total``: rounds in which this node
  waited below quorum, and the seconds it waited;
- ``swarm_sl_leader_failovers_total``: moves to the next leader attempt (the leader failed);
- ``swarm_sl_latest_loss{contract}`` / ``swarm_sl_latest_metric{contract}``: the latest validation
  loss / metric its ML process reported;
- ``swarm_sl_ledger_height``: highest ledger record sequence number seen, plus one (records in the chain).
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from swarmlearning.sl.kinds import FAMILIES, family_of

PHASES = ("barrier", "fetch", "merge", "distribution", "commit")
KINDS = FAMILIES
REJECT_REASONS = ("digest", "shape", "dtype", "names", "nonfinite", "unreachable", "oversize", "other")
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
"""Seconds: a merge of a small model takes milliseconds, a barrier up to ``quorumTimeoutSeconds``."""
DEFAULT_PORT = 9464
"""Port of ``/metrics`` in pods (the container port named ``metrics``)."""
_PENDING_DISTRIBUTIONS = 8
"""Merged models whose distribution is still timed; older ones are dropped (someone got them elsewhere)."""


def reject_reason(problem: str) -> str:
    """The :data:`REJECT_REASONS` class of a rejection text of the leader (``validate_peer_model``'s
    problems, ``unreachable: ...``, ``not safetensors: ...``); unknown texts are ``other``."""
    if problem.startswith("unreachable"):
        return "unreachable"
    if "non-finite" in problem:
        return "nonfinite"
    if problem.startswith(("missing tensors", "unexpected tensors")):
        return "names"
    if " has shape " in problem:
        return "shape"
    if " has dtype " in problem:
        return "dtype"
    return "other"


def peer_error_reason(kind: str) -> str:
    """The reason class of an input the leader could not download, from ``PeerError.kind`` (the peer
    client's rejection kind; "" = the peer was unreachable, refused or had no such model)."""
    return {"bad-digest": "digest", "too-large": "oversize", "bad-header": "other"}.get(kind, "unreachable")


@dataclass
class _Distribution:
    started: float
    waiting: int
    """Downloads of the merged model still expected."""


class SLMetrics:
    """The metrics of one SL node and the calls that move them (all cheap, safe from the event loop)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: what a node costs its host.
        ProcessCollector(registry=r)
        self._joined = Counter(
            "swarm_sl_rounds_joined", "Rounds whose close included this node", ["contract"], registry=r
        )
        self._led = Counter(
            "swarm_sl_rounds_led", "Rounds this node merged and committed as leader", ["contract"], registry=r
        )
        self._phase = Histogram(
            "swarm_sl_round_phase_seconds",
            "Seconds per round phase (barrier, fetch, merge, distribution, commit)",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self._sent = Counter(
            "swarm_sl_peer_bytes_sent", "Model bytes served to other SL nodes", ["kind"], registry=r
        )
        self._received = Counter(
            "swarm_sl_peer_bytes_received", "Model bytes downloaded from other SL nodes", ["kind"], registry=r
        )
        self._rejected = Counter(
            "swarm_sl_rejected_inputs", "Round inputs rejected by this node as leader", ["reason"], registry=r
        )
        self._quorum_waits = Counter(
            "swarm_sl_quorum_waits", "Rounds in which this node waited below quorum", registry=r
        )
        self._quorum_seconds = Counter(
            "swarm_sl_quorum_wait_seconds", "Seconds this node waited below quorum", registry=r
        )
        self._failovers = Counter(
            "swarm_sl_leader_failovers", "Moves to the next leader attempt after a leader failed", registry=r
        )
        self._loss = Gauge(
            "swarm_sl_latest_loss",
            "Latest validation loss reported by the ML process",
            ["contract"],
            registry=r,
        )
        self._metric = Gauge(
            "swarm_sl_latest_metric",
            "Latest validation metric reported by the ML process",
            ["contract"],
            registry=r,
        )
        self._height = Gauge(
            "swarm_sl_ledger_height", "Ledger records seen (highest sequence number + 1)", registry=r
        )
        for phase in PHASES:
            self._phase.labels(phase=phase)
        for kind in KINDS:
            self._sent.labels(kind=kind)
            self._received.labels(kind=kind)
        for reason in REJECT_REASONS:
            self._rejected.labels(reason=reason)
        self._height_seen = 0
        self._distributions: OrderedDict[tuple[str, int], _Distribution] = OrderedDict()

    # ------------------------------------------------------------------ rounds

    def contract_seen(self, contract: str) -> None:
        """Create the contract's round counters at 0, so they exist before its first round."""
        self._joined.labels(contract=contract)
        self._led.labels(contract=contract)

    def round_joined(self, contract: str) -> None:
        self._joined.labels(contract=contract).inc()

    def round_led(self, contract: str) -> None:
        self._led.labels(contract=contract).inc()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (one of :data:`PHASES`); observed only when the block
        completes (a timeout or failure is not a phase duration)."""
        self.check_phase(name)
        start = time.monotonic()
        yield
        self._phase.labels(phase=name).observe(time.monotonic() - start)

    def observe_phase(self, name: str, seconds: float) -> None:
        self.check_phase(name)
        self._phase.labels(phase=name).observe(max(0.0, seconds))

    @staticmethod
    def check_phase(name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"phase {name!r}: must be one of {', '.join(PHASES)}")

    def rejected(self, reason: str) -> None:
        """Count a rejected input; ``reason`` outside :data:`REJECT_REASONS` counts as ``other``."""
        self._rejected.labels(reason=reason if reason in REJECT_REASONS else "other").inc()

    def quorum_waited(self, seconds: float) -> None:
        """One round in which this node waited ``seconds`` below quorum."""
        self._quorum_waits.inc()
        self._quorum_seconds.inc(max(0.0, seconds))

    def leader_failover(self) -> None:
        self._failovers.inc()

    def progress(self, contract: str, loss: float | None, metric: float | None) -> None:
        """The ML process's latest validation loss/metric (None = not reported: the gauge keeps its value)."""
        if loss is not None:
            self._loss.labels(contract=contract).set(loss)
        if metric is not None:
            self._metric.labels(contract=contract).set(metric)

    def ledger_seq(self, seq: int) -> None:
        """A ledger record with sequence number ``seq`` (>= 0) was seen; the height only grows."""
        if seq + 1 > self._height_seen:
            self._height_seen = seq + 1
            self._height.set(self._height_seen)

    # ------------------------------------------------------------------ peer link

    def model_received(self, kind: str, n_bytes: int) -> None:
        self._received.labels(kind=_kind(kind)).inc(n_bytes)

    def distribution_started(self, contract: str, round_no: int, downloads: int) -> None:
        """The leader holds the merged model of ``round_no``; ``downloads`` other participants will fetch
        it. With 0 the phase is not observed (nobody to hand it to)."""
        if downloads <= 0:
            return
        self._distributions[(contract, round_no)] = _Distribution(time.monotonic(), downloads)
        while len(self._distributions) > _PENDING_DISTRIBUTIONS:
            self._distributions.popitem(last=False)

    def model_sent(self, contract: str, round_no: int, kind: str, n_bytes: int) -> None:
        """A model was served to a peer; the last expected download of a merged model ends its
        distribution phase."""
        self._sent.labels(kind=_kind(kind)).inc(n_bytes)
        if kind != "merged":
            return
        pending = self._distributions.get((contract, round_no))
        if pending is None:
            return
        pending.waiting -= 1
        if pending.waiting <= 0:
            del self._distributions[(contract, round_no)]
            self.observe_phase("distribution", time.monotonic() - pending.started)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def _kind(kind: str) -> str:
    family = family_of(kind)
    if family is None:
        raise ValueError(f"kind {kind!r}: must be one of {', '.join(KINDS)} (chunks with their index)")
    return family


class MetricsServer:
    """Plain HTTP ``GET /metrics`` for one :class:`SLMetrics`, in the SL node's event loop."""

    def __init__(self, metrics: SLMetrics, host: str, port: int) -> None:
        if not 0 < port <= 65535:
            raise ValueError(f"metrics port {port}: must be 1-65535 (0 = no metrics server, not started)")
        self.metrics, self.host, self.port = metrics, host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen; raises OSError naming the address when it is in use or not local."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
            raise OSError(
                exc.errno,
                f"metrics address {self.host}:{self.port} {what}: pick another --metrics-port "
                "(SWARM_SL_METRICS_PORT), or 0 for none",
            ) from exc
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
