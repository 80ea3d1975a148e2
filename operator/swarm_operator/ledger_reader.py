"""The operator's window on the swarm ledger (through `swarmlearning.ledger`, which is torch-free).

Reads ledger height, round progress of a contract and per-node progress; also provisions the etcd
user of each certificate the operator issues (etcd maps a client certificate's CN to a user, so a
new LearningNode's SL node cannot authenticate until someone with root rights creates its user;
`swarmlearning.ledger.access` says the issuer does that).

All ledger I/O runs on one private thread with its own asyncio loop (gRPC's asyncio channels belong
to one loop). Reconcilers never wait for it: `view` and `user` return the last known result at once
and start a refresh in the background when one is due (the next reconcile, at the latest the periodic
resync, picks the answer up). An unreachable SN is the normal case while a network starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from swarmlearning import pki
from swarmlearning.etcd import EtcdClient, EtcdError
from swarmlearning.ledger import Ledger, LedgerError, Record, RecordError
from swarmlearning.ledger.access import provision

from . import names
from .certificates import KeyPair, issue

log = logging.getLogger(__name__)
T = TypeVar("T")

READER_CN = names.LEDGER_READER
"""etcd user of the operator's read-only identity (role `operator` -> swarm-reader)."""
ADMIN_CN = "root"
"""etcd's root user; the operator's admin identity, used only to create users for issued certificates."""


class LedgerUnavailable(Exception):
    """The SN API could not be reached or refused us; the message says which endpoints and why."""


@dataclass(frozen=True)
class NodeRound:
    """Latest progress of one node in a contract: last round it took part in, reported loss/metric."""

    round: int
    loss: float | None = None
    metric: float | None = None


@dataclass(frozen=True)
class RoundResult:
    """The committed result of one round: who merged (the round's leader), whose weights, the digest."""

    round: int
    leader: str
    participants: tuple[str, ...]
    merged_digest: str
    merge_method: str


@dataclass(frozen=True)
class LedgerView:
    """What the ledger says: record count, the contract's latest committed round, per-node progress."""

    height: int
    round: int = 0
    nodes: Mapping[str, NodeRound] = field(default_factory=dict)
    records: tuple[Record, ...] = ()
    last: RoundResult | None = None
    """The latest committed round's result (None before the first)."""


def summarize(records: Sequence[Record], contract: str | None, height: int) -> LedgerView:
    """Pure: fold `round` records of `contract` into the latest round and per-node progress.

    A round record's body lists `participants`; per-node loss/metric are read from
    `body.extra.loss[name]` / `body.extra.metric[name]` when the leader recorded them.
    """
    latest = 0
    last: RoundResult | None = None
    nodes: dict[str, NodeRound] = {}
    mine = [r for r in records if contract is None or r.contract == contract]
    for rec in mine:
        if rec.kind != "round":
            continue
        body = rec.body
        try:
            round_no = int(body.get("round", 0))
        except (TypeError, ValueError):
            continue
        latest = max(latest, round_no)
        if last is None or round_no >= last.round:
            last = RoundResult(
                round=round_no,
                leader=rec.author,
                participants=tuple(str(n) for n in body.get("participants") or ()),
                merged_digest=str(body.get("merged_digest") or ""),
                merge_method=str(body.get("merge_method") or ""),
            )
        extra = body.get("extra") or {}
        losses = extra.get("loss") or {}
        metrics = extra.get("metric") or {}
        for name in body.get("participants") or ():
            prev = nodes.get(name)
            if prev is None or round_no >= prev.round:
                nodes[str(name)] = NodeRound(round_no, _num(losses.get(name)), _num(metrics.get(name)))
    return LedgerView(height=height, round=latest, nodes=nodes, records=tuple(mine), last=last)


def _num(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


class LedgerReader:
    """Thread-safe, rate-limited ledger access for the reconcilers.

    `timeout_s`: bound of one ledger operation (default 3 s). `min_interval_s`: per-key minimum time
    between reads; in between, `cached` answers (default 15 s).
    """

    def __init__(self, timeout_s: float = 3.0, min_interval_s: float = 15.0) -> None:
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ledger-reader", daemon=True)
        self._thread.start()
        self._dir = Path(tempfile.mkdtemp(prefix="swarm-operator-ids-"))
        self._lock = threading.Lock()
        self._identities: dict[str, pki.NodeCert] = {}
        self._last: dict[str, tuple[float, LedgerView | None, str | None]] = {}
        self._inflight: set[str] = set()
        self._provisioned: set[tuple[str, str]] = set()
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}
        self._user_jobs: set[tuple[str, str]] = set()

    def close(self) -> None:
        """Stop the ledger thread and delete the identities written to disk."""

        async def drain() -> None:
            # Queued reads and user jobs run after earlier callbacks; cancel them instead of leaving
            # never-started coroutines behind when the loop stops.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(drain(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    # --------------------------------------------------------------------------- identities

    def identity(self, ca: KeyPair, cn: str, role: str) -> pki.NodeCert:
        """A client certificate `cn`/`role` from `ca`, issued once per CA and kept in a private dir."""
        fp = hashlib.sha256(ca.cert).hexdigest()[:16]
        key = f"{fp}-{cn}"
        with self._lock:
            nc = self._identities.get(key)
            if nc is None:
                pair = issue(ca, cn, "swarm-operator", role, hosts=())
                d = self._dir / key
                d.mkdir(mode=0o700)
                (d / pki.NODE_CERT).write_bytes(pair.cert)
                (d / pki.NODE_KEY).write_bytes(pair.key)
                (d / pki.NODE_KEY).chmod(0o600)
                (d / pki.CA_CERT).write_bytes(pair.ca)
                nc = self._identities[key] = pki.NodeCert.load(d)
            return nc

    # ------------------------------------------------------------------------------- I/O

    def _run(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(make(), self.timeout_s)

        fut = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return fut.result(timeout=self.timeout_s + 2)
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            fut.cancel()
            raise LedgerUnavailable(f"{what}: no answer within {self.timeout_s:g}s") from e
        except (EtcdError, LedgerError, RecordError, OSError) as e:
            raise LedgerUnavailable(f"{what}: {e}") from e

    def view(
        self,
        key: str,
        endpoints: Sequence[str],
        ca: KeyPair,
        contract: str | None = None,
    ) -> tuple[LedgerView | None, str | None]:
        """Non-blocking: (last view, last error) for `key`; starts a background refresh when due.

        A refresh first creates the operator's read-only etcd user (with the admin identity, once per
        endpoint set), then reads. Both are `None` until the first refresh finished.
        """
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            due = last is None or now - last[0] >= self.min_interval_s
            start = due and key not in self._inflight
            if start:
                self._inflight.add(key)
                # Stamp now so a slow or failing SN is asked at most once per interval.
                self._last[key] = (now, last[1] if last else None, last[2] if last else None)
        if start:
            admin = self.identity(ca, ADMIN_CN, "admin")
            reader = self.identity(ca, READER_CN, "operator")

            async def refresh() -> None:
                try:
                    await asyncio.wait_for(
                        self._ensure_user(endpoints, admin, READER_CN, "operator"), self.timeout_s
                    )
                    view = await asyncio.wait_for(self._read(endpoints, reader, contract), self.timeout_s)
                    result: tuple[LedgerView | None, str | None] = (view, None)
                except (TimeoutError, EtcdError, LedgerError, RecordError, OSError) as e:
                    msg = f"reading the ledger at {','.join(endpoints)}: {e or 'timed out'}"
                    log.info("%s", msg)
                    result = (None, msg)
                with self._lock:
                    prev_view = self._last.get(key, (0.0, None, None))[1]
                    # Keep the last good view when the SN is unreachable: status keeps its last values.
                    self._last[key] = (now, result[0] or prev_view, result[1])
                    self._inflight.discard(key)

            asyncio.run_coroutine_threadsafe(refresh(), self._loop)
        with self._lock:
            entry = self._last.get(key)
        return (entry[1], entry[2]) if entry else (None, None)

    async def _read(self, endpoints: Sequence[str], tls: pki.NodeCert, contract: str | None) -> LedgerView:
        ledger = await Ledger.connect(endpoints, tls, timeout=self.timeout_s)
        try:
            head = await ledger.head()
            records = await ledger.records(contract)
        finally:
            await ledger.close()
        return summarize(records, contract, head.seq + 1)

    async def _ensure_user(self, endpoints: Sequence[str], admin: pki.NodeCert, name: str, role: str) -> None:
        key = (",".join(endpoints), name)
        with self._lock:
            if key in self._provisioned:
                return
        client = await EtcdClient.connect(endpoints, admin, timeout=self.timeout_s)
        try:
            await provision(client, name, role)
        finally:
            await client.close()
        with self._lock:
            self._provisioned.add(key)

    def read(self, endpoints: Sequence[str], ca: KeyPair, contract: str | None = None) -> LedgerView:
        """Blocking read now (creating the reader user first). Raises LedgerUnavailable."""
        admin = self.identity(ca, ADMIN_CN, "admin")
        reader = self.identity(ca, READER_CN, "operator")

        async def go() -> LedgerView:
            await self._ensure_user(endpoints, admin, READER_CN, "operator")
            return await self._read(endpoints, reader, contract)

        return self._run(f"reading the ledger at {','.join(endpoints)}", go)

    def user(self, endpoints: Sequence[str], ca: KeyPair, name: str, role: str) -> tuple[bool | None, str]:
        """Non-blocking: make sure etcd user `name` (certificate role `role`) exists.

        Returns (True, msg) once created, (False, error) after a failed attempt, (None, msg) while
        the first attempt runs. Failed attempts are retried at most every `min_interval_s`.
        """
        key = (",".join(endpoints), name)
        now = time.monotonic()
        with self._lock:
            if key in self._provisioned:
                return True, f"etcd user {name} exists"
            failed = self._failed.get(key)
            running = key in self._user_jobs
            start = not running and (failed is None or now - failed[0] >= self.min_interval_s)
            if start:
                self._user_jobs.add(key)
        if start:
            admin = self.identity(ca, ADMIN_CN, "admin")

            async def job() -> None:
                try:
                    await asyncio.wait_for(self._ensure_user(endpoints, admin, name, role), self.timeout_s)
                    with self._lock:
                        self._failed.pop(key, None)
                except (TimeoutError, EtcdError, LedgerError, OSError) as e:
                    with self._lock:
                        self._failed[key] = (now, f"creating etcd user {name!r}: {e or 'timed out'}")
                finally:
                    with self._lock:
                        self._user_jobs.discard(key)

            asyncio.run_coroutine_threadsafe(job(), self._loop)
        with self._lock:
            if key in self._provisioned:
                return True, f"etcd user {name} exists"
            failed = self._failed.get(key)
        if failed is not None:
            return False, failed[1]
        return None, f"creating etcd user {name}"
