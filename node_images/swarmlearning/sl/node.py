"""The SL node: pairs with one ML process, joins round barriers in the ledger, merges when it leads.

One sync, seen from this node (round numbers come from the ledger, starting at 1):

1. the ML process sends its weights (safetensors) over the local channel;
2. the node stores them as its round input (served to the leader over mTLS), marks itself ready with
   their digest, nodeWeightage and sample count, and waits for the round to close (quorum, then up to
   ``fullQuorumWaitSeconds`` for more peers, at most ``maxPeers``); below quorum it tells the ML process
   what it waits for and fails after ``quorumTimeoutSeconds``;
3. the round's mode (``swarmlearning.sl.modes``, chosen from the contract's ``mergeMode`` and the close
   record) completes it: ``single``, one leader fetches every input, validates and merges; ``sharded``,
   every slice of the model has its own leader and nobody receives another's whole model. Either way
   every input is checked against the digest its node declared, malformed or non-finite inputs are
   rejected and recorded, a failed leader is replaced, and the signed round record names the merged
   model's digest;
4. the node checks the merged model against that record and hands it to the ML process.

Round 1 is the initial sync (always single-leader): the leader's own weights become everyone's starting
point (averaging random initialisations would shrink them). After ``on_train_end`` a node keeps
contributing (snapshot, merged or weight 0, per ``checkinModelOnTrainEnd``) until a round in which every
participant has finished; that round's merged model is the final model of every node.

End of training: every participant of that final round that holds its merged model records so in the
ledger (``Ledger.mark_has_model``), and so does a late joiner that fetched the latest model (announced
first with ``Ledger.mark_fetching_model``). After its ML process finished, an SL node keeps serving
until every live participant of the final round, and every live announced fetcher, has the model
(``Ledger.model_delivery``); participants whose membership lease expired are not waited for. The
linger time (``--linger``) is only the upper bound, so a slow fetcher is not stranded and a normal run
ends as soon as everyone has the model.

There are no fault hooks in here: tests inject faults from outside (signals, restarts, network faults
between namespaces: ``tests/chaos``; a poisoned input: a misbehaving training program,
``tests/chaos/poison.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from swarmlearning import pki
from swarmlearning.etcd import EtcdError
from swarmlearning.ledger import (
    Ledger,
    LedgerError,
    ModelDelivery,
    QuorumTimeout,
    Record,
    RoundClose,
)
from swarmlearning.sl import modes, privacy, server_optimizer
from swarmlearning.sl.archive import ModelArchive
from swarmlearning.sl.channel import ChannelError, Frame, encode_frame, read_frame, write_frame
from swarmlearning.sl.metrics import MetricsServer, SLMetrics
from swarmlearning.sl.modes import RoundAbandoned, RoundContext, RoundFailed
from swarmlearning.sl.modes.base import FETCH_TIMEOUT_SECONDS, INITIAL_ROUND
from swarmlearning.sl.peers import ModelKey, ModelStore, PeerClient, PeerError, PeerServer
from swarmlearning.sl.progress import Progress
from swarmlearning.sl.weights import WeightsError, digest

log = logging.getLogger("swarmlearning.sl")

__all__ = ["FinalRound", "LingerStatus", "RoundFailed", "SLConfig", "SLNode", "linger_status"]

CONTRACT_PARAMS = (
    "mergeMethod",
    "mergeMode",
    "mergeFallback",
    "minPeers",
    "maxPeers",
    "trimFraction",
    "byzantine",
    "siteDpClipNorm",
    "siteDpNoiseMultiplier",
    "siteDpDelta",
    "siteDpEpsilonBudget",
    "siteDpOnBudgetSpent",
    "secureAggregation",
    "secaggThreshold",
    "serverOptimizer",
    "serverLearningRate",
    "serverMomentum",
)
"""The ML side's settings that are the contract's: the first node's are recorded and everyone uses
them (how rounds merge, and what protects their inputs)."""
RESULT_FETCH_SECONDS = 60.0
"""How long a non-leader keeps trying to download a committed merged model."""
DEFAULT_LINGER_SECONDS = 60.0
"""Default upper bound of serving the final model after the ML process finished."""
_LINGER_POLL_SECONDS = 0.5
_LINGER_SAY_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class SLConfig:
    """Settings of one SL node (``python -m swarmlearning.sl --help`` lists the flags)."""

    name: str
    cert_dir: Path
    sn_endpoints: tuple[str, ...]
    socket_path: Path
    listen_host: str = "0.0.0.0"
    listen_port: int = 30305
    """0 = pick a free port (local runs)."""
    advertise_host: str = "127.0.0.1"
    """Host peers use to reach this node's SL server; must be a SAN of the node certificate."""
    leader_eligible: bool = True
    linger_seconds: float = DEFAULT_LINGER_SECONDS
    """After the ML process finished, keep serving the final model until every live participant of the
    final round (and every announced late fetcher) recorded having it, but at most this many seconds
    (>= 0; 0 = exit at once)."""
    stay_until_stopped: bool = False
    """A pod's native sidecar: after serving the final model, keep running until stopped (SIGTERM).
    A sidecar that exits on its own is restarted by the kubelet while its ML container still finishes
    (writes the model, evaluates), and the restarted one would join the swarm again."""
    model_dir: Path | None = None
    """Where merged models are kept on disk (the site's volume; a local run's shared folder): written
    every round (the newest replaces the previous unless ``keep_round_models``) and loaded back on start,
    so a restarted node rejoins, serves and hands over the final model even when every other SL node has
    exited. None = memory only."""
    keep_round_models: bool = False
    """With ``model_dir``: keep every round's merged model, not only the newest."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    """Plain HTTP port of Prometheus ``/metrics`` (1-65535; 0 = no metrics server, the default here;
    the command line's default is 9464)."""


@dataclass
class _Session:
    """State of the current ML connection."""

    contract: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """The ML side's contract settings (timeouts are per node)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The contract's recorded parameters (merge method etc.; the first writer's)."""
    last_merged: bytes = b""


@dataclass(frozen=True)
class FinalRound:
    """The round whose merged model this node's ML process finished with (what it serves at the end)."""

    contract: str
    round_no: int
    participants: tuple[str, ...]
    """Who must get the model before this node may exit (every node in the round's close)."""
    digest: str


class SLNode:
    """One SL node process: channel server, SL peer server, ledger client."""

    def __init__(self, config: SLConfig) -> None:
        if config.linger_seconds < 0:
            raise ValueError(f"linger_seconds={config.linger_seconds}: must be >= 0 seconds")
        if not 0 <= config.metrics_port <= 65535:
            raise ValueError(f"metrics_port={config.metrics_port}: must be 0 (off) or 1-65535")
        self.config = config
        self.cert = pki.NodeCert.load(config.cert_dir)
        if self.cert.name != config.name:
            raise ValueError(f"--name {config.name!r} differs from the certificate CN {self.cert.name!r}")
        self.store = ModelStore()
        self.archive = (
            ModelArchive(config.model_dir, config.keep_round_models) if config.model_dir is not None else None
        )
        self.metrics = SLMetrics()
        self.metrics_server = (
            MetricsServer(self.metrics, config.metrics_host, config.metrics_port)
            if config.metrics_port
            else None
        )
        self.peers = PeerClient(self.cert, metrics=self.metrics)
        self.server = PeerServer(
            self.cert, self.store, config.listen_host, config.listen_port, metrics=self.metrics
        )
        self.ledger: Ledger | None = None
        self.endpoint = ""
        self._done = asyncio.Event()
        self._busy = asyncio.Lock()
        self._channel: asyncio.AbstractServer | None = None
        self._final: FinalRound | None = None
        self._stop_deferred = False
        self._served = False
        """The final model has been served to everyone who needs it: a stop signal stops at once."""

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until the ML process finished and everyone has the final model (at most
        ``linger_seconds`` more), or until ``stop`` is set."""
        self._load_archive()
        port = await self.server.start()
        self.endpoint = f"{self.config.advertise_host}:{port}"
        try:
            if self.metrics_server is not None:
                await self.metrics_server.start()
                log.info("Prometheus metrics on %s", self.metrics_server.url)
            self.ledger = await Ledger.connect(list(self.config.sn_endpoints), self.cert)
            member = await self.ledger.register_member(
                self.endpoint, leader_eligible=self.config.leader_eligible
            )
            self.metrics.ledger_seq(member.seq)
            sock = self.config.socket_path
            sock.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            self._channel = await asyncio.start_unix_server(self._serve_ml, path=str(sock), limit=1 << 20)
            log.info(
                "SL node %s ready: peers reach it at %s, ML channel %s, SN %s",
                self.cert.name,
                self.endpoint,
                sock,
                ",".join(self.config.sn_endpoints),
            )
            waiters = [asyncio.ensure_future(self._done.wait())]
            if stop is not None:
                waiters.append(asyncio.ensure_future(stop.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self._done.is_set() and not (stop and stop.is_set()):
                await self._serve_final_model(stop)
                self._served = True
                if self.config.stay_until_stopped and stop is not None and not self._stop_deferred:
                    log.info("final model served; waiting for the pod to stop this sidecar")
                    await stop.wait()
        finally:
            await self.close()

    def signal_stop(self, stop: asyncio.Event) -> None:
        """Handle SIGTERM/SIGINT by setting ``stop``, except the first one after the ML process
        finished: Kubernetes sends it to the SL sidecar as soon as the ML container exits, while slower
        participants may still need the final model from here. That one is deferred (the node stops
        when everyone has the model, at most ``linger_seconds``, and the pod's termination grace
        period bounds it too); a second signal stops at once."""
        if self._done.is_set() and not self._served and not self._stop_deferred and not stop.is_set():
            self._stop_deferred = True
            log.info(
                "stop signal while serving the final model: stopping once every participant has it "
                "(at most %gs); signal again to stop now",
                self.config.linger_seconds,
            )
            return
        stop.set()

    async def _serve_final_model(self, stop: asyncio.Event | None) -> None:
        """Keep serving until every live node that needs the final model recorded having it in the
        ledger (see the module docstring), at most ``linger_seconds``; logs whom it waits for."""
        final = self._final
        if final is None:
            log.info("training finished without a final round to serve; SL node exiting")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.linger_seconds
        said = ""
        said_at = -_LINGER_SAY_EVERY_SECONDS
        while True:
            try:
                delivery: ModelDelivery | str = await self._ledger().model_delivery(
                    final.contract, final.round_no, final.participants
                )
            except (EtcdError, LedgerError) as exc:
                delivery = str(exc)
            now = loop.time()
            status = linger_status(final, delivery, deadline - now, self.config.linger_seconds)
            if status.done:
                (log.info if status.complete else log.warning)("%s", status.message)
                return
            # Say it when whom we wait for changes, and every few seconds.
            if status.waiting_for != said or now - said_at >= _LINGER_SAY_EVERY_SECONDS:
                log.info("%s", status.message)
                said, said_at = status.waiting_for, now
            pause = min(_LINGER_POLL_SECONDS, deadline - now)
            if stop is None:
                await asyncio.sleep(pause)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return

    def _load_archive(self) -> None:
        if self.archive is None:
            return
        for m in self.archive.latest():
            self.store.put(ModelKey(m.contract, m.round_no, "merged"), m.data)
            log.info(
                "model archive: serving the merged model of round %d of %r (%s) from %s",
                m.round_no,
                m.contract,
                m.digest[:12],
                self.archive.root,
            )

    async def _archive(self, contract: str, round_no: int, data: bytes, digest_hex: str) -> None:
        """Keep a merged model on disk; a full disk is logged, not fatal (the model is still in memory
        and with every other participant)."""
        if self.archive is None:
            return
        try:
            await asyncio.to_thread(self.archive.save, contract, round_no, data, digest_hex)
        except OSError as exc:
            log.warning(
                "round %d: could not keep the merged model in %s: %s", round_no, self.archive.root, exc
            )

    async def _record_model(self, contract: str, round_no: int, digest_hex: str) -> None:
        """Tell the ledger this node holds the round's merged model. Advisory: a failure only makes
        the nodes serving it wait until their linger maximum, so it is logged, not raised."""
        try:
            await self._ledger().mark_has_model(contract, round_no, digest=digest_hex)
        except (EtcdError, LedgerError) as exc:
            log.warning("round %d: could not record holding the merged model: %s", round_no, exc)

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path.unlink()
        await self.peers.close()
        await self.server.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.ledger is not None:
            await self.ledger.close()
            self.ledger = None

    # ------------------------------------------------------------------ ML channel

    async def _serve_ml(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session()
        finished = False
        training = ""
        try:
            while (frame := await read_frame(reader)) is not None:

                def note(message: str) -> None:
                    log.info("%s", message)
                    if not writer.is_closing():
                        writer.write(_encode_interim(message))

                async with self._busy:
                    try:
                        reply = await self._handle(session, frame, note)
                    except (RoundFailed, LedgerError, EtcdError, PeerError, ValueError) as exc:
                        log.error("%s", exc)
                        reply = Frame({"ok": False, "error": str(exc)})
                if session.contract and not training and reply.header.get("ok"):
                    training = session.contract
                    await self._ledger().mark_session(training, training=True)
                await write_frame(writer, reply)
                if frame.header.get("op") == "finish" and reply.header.get("ok"):
                    finished = True
        except (ConnectionError, asyncio.IncompleteReadError, ChannelError) as exc:
            log.warning("ML channel closed: %s", exc)
        except Exception:
            log.exception("ML channel handler failed")
        finally:
            writer.close()
            if training:
                # Rounds stop waiting for this node at once (a dead ML process contributes nothing).
                if not finished:
                    log.warning("ML process of contract %r disconnected before finishing", training)
                with contextlib.suppress(EtcdError, LedgerError, RoundFailed):
                    await self._ledger().mark_session(training, training=False)
            if finished:
                self._done.set()

    async def _handle(self, s: _Session, frame: Frame, note: Callable[[str], None]) -> Frame:
        op = frame.header.get("op")
        ledger = self._ledger()
        if op == "hello":
            settings = dict(frame.header.get("settings") or {})
            s.settings = settings
            s.contract = str(settings.get("contract", ""))
            wanted = {k: settings[k] for k in CONTRACT_PARAMS if k in settings}
            s.params = await ledger.ensure_contract(s.contract, wanted)
            self.metrics.contract_seen(s.contract)
            differ = {k: (v, s.params.get(k)) for k, v in wanted.items() if s.params.get(k) != v}
            if differ:
                log.warning(
                    "contract %s was recorded with other parameters %s; using the recorded ones",
                    s.contract,
                    differ,
                )
            latest = await ledger.latest_round(s.contract)
            if latest is not None:
                self.metrics.ledger_seq(latest.seq)
            return Frame(
                {
                    "ok": True,
                    "latest_round": None if latest is None else latest.body["round"],
                    # Training of this contract is over: a node (re)started now only takes the final model.
                    "ended": latest is not None and _all_final(latest.body),
                    "contract_params": dict(s.params),
                }
            )
        if not s.contract:
            raise RoundFailed(f"op {op!r} before hello: the callback must call on_train_begin() first")
        if op == "latest":
            round_no, data = await self._latest_merged(s, note)
            s.last_merged = server_optimizer.strip(data)
            return Frame({"ok": True, "round": round_no, "digest": digest(data)}, s.last_merged)
        if op == "sync":
            kind = str(frame.header.get("kind", "round"))
            if kind == "initial" and await ledger.current_round(s.contract) > INITIAL_ROUND:
                # Round 1 closed without us: take the swarm's start (or newer) model instead.
                round_no, data = await self._latest_merged(s, note)
                s.last_merged = server_optimizer.strip(data)
                return Frame(
                    {"ok": True, "round": round_no, "late": True, "digest": digest(data)}, s.last_merged
                )
            result = await self._sync(s, frame.payload, frame.header, final=False, note=note)
            return result.reply()
        if op == "finish":
            return await self._finish(s, frame, note)
        raise RoundFailed(f"unknown channel op {op!r}; expected hello, sync, latest or finish")

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RoundFailed("the SL node is not connected to the ledger")
        return self.ledger

    # ------------------------------------------------------------------ rounds

    async def _finish(self, s: _Session, frame: Frame, note: Callable[[str], None]) -> Frame:
        """Contribute the final model round after round until every participant has finished.

        If the peers vanish after at least one final round (quorum timeout), the last merged model is
        returned with a ``warning``: training here is over and the model is good, only the common final
        model could not be agreed on.
        """
        mode = str(frame.header.get("mode", "snapshot"))
        final_local = frame.payload
        header = dict(frame.header)
        last: _RoundResult | None = None
        while True:
            contribution = s.last_merged if mode == "active" and s.last_merged else final_local
            if mode == "inactive":
                header["weight"] = 0
            try:
                result = await self._sync(s, contribution, header, final=True, note=note)
            except RoundFailed as exc:
                if last is None:
                    raise
                warning = (
                    f"stopped waiting for the other peers to finish ({exc}); keeping round {last.round_no}"
                )
                note(warning)
                # No common final round: serve the last model only to nodes announced as fetching it.
                self._final = FinalRound(s.contract, last.round_no, (), last.digest)
                reply = last.reply()
                return Frame(reply.header | {"warning": warning}, reply.payload)
            last = result
            if result.all_final:
                self._final = FinalRound(s.contract, result.round_no, result.closed, result.digest)
                note(
                    f"round {result.round_no}: every participant has finished; final model "
                    f"{result.digest[:12]}"
                )
                return result.reply()
            note(
                f"round {result.round_no}: finished here, still contributing ({mode}) until all peers finish"
            )

    async def _sync(
        self,
        s: _Session,
        payload: bytes,
        header: Mapping[str, Any],
        *,
        final: bool,
        note: Callable[[str], None],
    ) -> _RoundResult:
        ledger = self._ledger()
        settings = s.settings
        weight = float(header.get("weight", 1))
        samples = int(header.get("samples", 1))
        progress = Progress.from_header(header)
        self.metrics.progress(s.contract, progress.loss, progress.metric)
        quorum_timeout = float(settings.get("quorumTimeoutSeconds", 1800))
        min_peers = int(s.params.get("minPeers", settings.get("minPeers", 1)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + quorum_timeout
        remaining = quorum_timeout
        site_dp = privacy.SiteDP.of(s.params)
        private = b""  # this sync's input after site-level DP: noised once, whichever round takes it
        while True:
            if (ended := await self._ended(s, note)) is not None:
                return ended
            round_no = await ledger.current_round(s.contract)
            data = payload
            if site_dp.enabled and round_no > INITIAL_ROUND:
                privacy.check_budget(site_dp, round_no, note)
                if not private:
                    if not s.last_merged:  # a restarted SL node: the round started from the latest model
                        s.last_merged = server_optimizer.strip((await self._latest_merged(s, note))[1])
                    private = await asyncio.to_thread(privacy.privatise, s.params, payload, s.last_merged)
                data = private
            key = ModelKey(s.contract, round_no, "input")
            d = self.store.put(key, data, final=final, progress=progress)
            manifest = ""
            if round_no > INITIAL_ROUND and modes.may_shard(s.params):
                try:
                    manifest = await asyncio.to_thread(
                        modes.prepare_input,
                        self.store,
                        s.contract,
                        round_no,
                        data,
                        final=final,
                        progress=progress,
                    )
                except WeightsError as exc:
                    raise RoundFailed(
                        f"round {round_no}: the ML process sent weights that are not safetensors: {exc}"
                    ) from exc
            await ledger.mark_ready(
                s.contract,
                round_no,
                digest=d,
                weight=weight,
                samples=samples,
                manifest=manifest,
                size=len(data),
            )
            ready_at = loop.time()
            try:
                close = await ledger.close_round(
                    s.contract,
                    round_no,
                    min_peers=min_peers,
                    max_peers=int(s.params.get("maxPeers", 0)),
                    full_quorum_wait_s=float(settings.get("fullQuorumWaitSeconds", 30)),
                    timeout_s=remaining,
                    progress=note,
                    on_quorum_wait=self.metrics.quorum_waited,
                )
            except QuorumTimeout as exc:
                raise RoundFailed(f"{exc} (quorumTimeoutSeconds={quorum_timeout:g})") from exc
            self.metrics.ledger_seq(close.record.seq)
            if self.cert.name not in close.names:
                note(f"round {round_no} closed without {self.cert.name} (too late); joining the next one")
                remaining = max(1.0, deadline - loop.time())
                continue
            self.metrics.observe_phase("barrier", loop.time() - ready_at)
            self.metrics.round_joined(s.contract)
            try:
                result = await self._complete_round(s, close, note)
                break
            except RoundAbandoned:
                note(f"round {round_no} was recorded as abandoned meanwhile; joining the current round")
                remaining = max(1.0, deadline - loop.time())
        s.last_merged = result.model
        await self._archive(s.contract, result.round_no, result.data, result.digest)
        if result.all_final:
            # Finished nodes serve this model until every participant recorded having it.
            await self._record_model(s.contract, result.round_no, result.digest)
        return result

    async def _ended(self, s: _Session, note: Callable[[str], None]) -> _RoundResult | None:
        """The contract's final round if its training already ended without this node (it was away
        longer than its membership lease, e.g. frozen or cut off): there is nobody left to sync with, so
        it takes the final model instead of waiting out the quorum timeout alone."""
        ledger = self._ledger()
        latest = await ledger.latest_round(s.contract)
        if latest is None or not _all_final(latest.body):
            return None
        round_no = int(latest.body["round"])
        close = await ledger.round_close(s.contract, round_no)
        if close is None:
            return None
        note(
            f"training of contract {s.contract!r} ended in round {round_no} while this node was away; "
            "taking its final model"
        )
        data = await self._fetch_result(s, close, latest)
        await self._archive(s.contract, round_no, data, str(latest.body["merged_digest"]))
        await self._record_model(s.contract, round_no, str(latest.body["merged_digest"]))
        return _RoundResult.of(close, latest, data)

    async def _complete_round(
        self, s: _Session, close: RoundClose, note: Callable[[str], None]
    ) -> _RoundResult:
        mode = modes.mode_for(close, s.params)
        ctx = RoundContext(
            name=self.cert.name,
            ledger=self._ledger(),
            peers=self.peers,
            store=self.store,
            metrics=self.metrics,
            settings=s.settings,
            params=s.params,
            note=note,
            archive=self._archive,
            fetch_merged=lambda c, r: self._fetch_result(s, c, r),
            cert=self.cert,
        )
        record, data = await mode.complete(ctx, close)
        return _RoundResult.of(close, record, data)

    async def _fetch_result(self, s: _Session, close: RoundClose | None, record: Record) -> bytes:
        """Download the merged model of ``record`` (leader first, then anyone who has it)."""
        round_no = int(record.body["round"])
        key = ModelKey(record.contract, round_no, "merged")
        expected = str(record.body["merged_digest"])
        held = self.store.get(key)
        if held is not None and held.digest == expected:
            return held.data
        kept = None if self.archive is None else self.archive.find(record.contract, round_no, expected)
        if kept is not None:  # a shared or the site's own model archive (the peers may have exited)
            log.info("round %d: merged model %s taken from the model archive", round_no, expected[:12])
            self.store.put(key, kept)
            return kept
        endpoints = [str(record.body.get("leader_endpoint") or "")]
        if close is not None:
            endpoints += [p.endpoint for p in close.participants if p.name != self.cert.name]
        endpoints += [m.endpoint for m in await self._ledger().members() if m.name != self.cert.name]
        endpoints = [e for e in dict.fromkeys(endpoints) if e and e != self.endpoint]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RESULT_FETCH_SECONDS
        errors: list[str] = []
        while loop.time() < deadline:
            for ep in endpoints:
                try:
                    data = (
                        await self.peers.fetch(
                            ep,
                            record.contract,
                            round_no,
                            "merged",
                            timeout=FETCH_TIMEOUT_SECONDS,
                            expected_digest=expected,
                        )
                    ).data
                except PeerError as exc:
                    errors.append(str(exc))
                    continue
                self.store.put(key, data)
                return data
            await asyncio.sleep(0.5)
        raise RoundFailed(
            f"round {round_no}: could not download the merged model {expected[:12]} from "
            f"{', '.join(endpoints) or 'anyone'} within {RESULT_FETCH_SECONDS:g}s: {errors[-3:]}"
        )

    async def _latest_merged(self, s: _Session, note: Callable[[str], None]) -> tuple[int, bytes]:
        """The newest committed model (waits for round 1's result when none is committed yet)."""
        ledger = self._ledger()
        timeout = float(s.settings.get("quorumTimeoutSeconds", 1800)) + float(
            s.settings.get("leaderFailureTimeoutSeconds", 600)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        said = False
        while (record := await ledger.latest_round(s.contract)) is None:
            if loop.time() >= deadline:
                raise RoundFailed(
                    f"contract {s.contract!r}: no merged model was committed within {timeout:g}s"
                )
            if not said:
                note(f"contract {s.contract!r}: waiting for the first merged model to join from")
                said = True
            await asyncio.sleep(0.5)
        round_no = int(record.body["round"])
        close = await ledger.round_close(s.contract, round_no)
        note(f"joining from the merged model of round {round_no}")
        held = self.store.get(ModelKey(s.contract, round_no, "merged"))
        if held is None or held.digest != record.body["merged_digest"]:
            # Nodes that finished keep serving this model while we are announced as fetching it.
            try:
                await ledger.mark_fetching_model(s.contract, round_no)
            except (EtcdError, LedgerError) as exc:
                log.warning("round %d: could not announce fetching the merged model: %s", round_no, exc)
        data = await self._fetch_result(s, close, record)
        await self._archive(s.contract, round_no, data, str(record.body["merged_digest"]))
        await self._record_model(s.contract, round_no, str(record.body["merged_digest"]))
        return round_no, data


@dataclass(frozen=True)
class _RoundResult:
    round_no: int
    data: bytes
    digest: str
    participants: tuple[str, ...]
    """Whose inputs were merged."""
    leader: str
    rejected: Mapping[str, str]
    all_final: bool
    closed: tuple[str, ...] = ()
    """Everyone in the round's close (merged or rejected): who receives the merged model."""

    @classmethod
    def of(cls, close: RoundClose, record: Record, data: bytes) -> _RoundResult:
        body = record.body
        return cls(
            round_no=close.round_no,
            data=data,
            digest=str(body["merged_digest"]),
            participants=tuple(body.get("participants", ())),
            leader=record.author,
            rejected=dict(body.get("rejected") or {}),
            all_final=_all_final(body),
            closed=close.names,
        )

    @cached_property
    def model(self) -> bytes:
        """The merged model as the ML process gets it: without the server optimiser's state (stripped
        once, for the reply and the next round's starting point)."""
        return server_optimizer.strip(self.data)

    def reply(self) -> Frame:
        return Frame(
            {
                "ok": True,
                "round": self.round_no,
                "participants": list(self.participants),
                "leader": self.leader,
                "rejected": dict(self.rejected),
                "digest": self.digest,
                "all_final": self.all_final,
            },
            self.model,
        )


@dataclass(frozen=True)
class LingerStatus:
    """One check of a finished SL node: may it exit, and what to log."""

    done: bool
    complete: bool
    """Everyone who needs the final model has it (else ``done`` means the linger maximum ran out)."""
    waiting_for: str
    """Comma-separated names still fetching ("" when complete)."""
    message: str


def linger_status(
    final: FinalRound, delivery: ModelDelivery | str, left_s: float, limit_s: float
) -> LingerStatus:
    """Decide whether a node serving ``final`` may exit: when ``delivery`` is complete, or when
    ``left_s`` (seconds of the ``limit_s`` maximum) ran out. ``delivery`` is the ledger's answer,
    or the error text when it could not be read (then the node keeps serving)."""
    what = f"round {final.round_no} of {final.contract!r}"
    if isinstance(delivery, ModelDelivery) and delivery.complete:
        gone = f"; not waiting for {', '.join(delivery.left)} (left the swarm)" if delivery.left else ""
        return LingerStatus(
            True,
            True,
            "",
            f"{what}: every node that needs the final model {final.digest[:12]} has it "
            f"({', '.join(delivery.has) or 'none'}){gone}; SL node exiting",
        )
    if isinstance(delivery, ModelDelivery):
        waiting = ", ".join(delivery.waiting_for)
        doing = f"{len(delivery.waiting_for)} of {delivery.needed_by} still fetching"
    else:
        waiting = "unknown"
        doing = f"cannot read who has it: {delivery}"
    if left_s <= 0:
        return LingerStatus(
            True,
            False,
            waiting,
            f"{what}: linger maximum of {limit_s:g}s reached while serving the final model for "
            f"{waiting} ({doing}); SL node exiting (raise --linger / SWARM_SL_LINGER_SECONDS "
            "on slow machines)",
        )
    return LingerStatus(
        False,
        False,
        waiting,
        f"serving final model of {what} for {waiting} ({doing}), up to {left_s:.0f}s more",
    )


def _all_final(body: Mapping[str, Any]) -> bool:
    """Whether a round record is a final round: every merged participant had finished training and
    nobody is listed in ``training`` (a rejected or unreachable participant, or a live node with an ML
    process connected that missed the round)."""
    extra = body.get("extra") or {}
    merged = set(body.get("participants", ()))
    return bool(merged) and merged <= set(extra.get("final", ())) and not extra.get("training")


def _encode_interim(message: str) -> bytes:
    return encode_frame(Frame({"interim": True, "message": message}))
