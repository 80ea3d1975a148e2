"""The console's one window on the swarm: the ledger, read as a read-only etcd user, and the merged
models, fetched from the SL nodes that hold them. Nothing here writes to the swarm.

Records are cached in memory in chain order and followed by polling the chain head (one small read a
second); every new record is handed to the subscribers of the live event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from swarmlearning import pki
from swarmlearning.etcd import EtcdError
from swarmlearning.ledger import ChainReport, Ledger, LedgerError, LedgerSnapshot, Member, Record, RecordError
from swarmlearning.sl.peers import PeerClient, PeerError

from . import views
from .models import LedgerHead, Network, Round, SNMember

log = logging.getLogger("swarmlearning.console.source")
T = TypeVar("T")
BATCH_READ_FROM = 32
"""Above this many new records (a console starting on a long ledger), read them all at once."""


class Unavailable(Exception):
    """The SN could not be read; the message names the endpoints and why (answered as 503)."""


class ModelUnavailable(Exception):
    """No reachable SL node holds the model asked for; the message says whom we asked (answered as 404)."""


@dataclass(frozen=True)
class Model:
    data: bytes
    digest: str
    served_by: str


class SwarmSource:
    """``endpoints``: SN API addresses (``host:port``); ``identity``: the console's certificate (role
    ``operator``: the read-only ``swarm-reader`` etcd user); ``poll_s``: seconds between head reads
    (default 1); ``timeout_s``: bound on each etcd or peer operation (default 10)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        identity: pki.NodeCert,
        *,
        network: str = "swarm",
        namespace: str | None = None,
        poll_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoints = list(endpoints)
        self.identity = identity
        self.network_name = network
        self.namespace = namespace
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.records: list[Record] = []
        self._ledger: Ledger | None = None
        self._peers = PeerClient(identity)
        self._lock = asyncio.Lock()
        self._subscribers: set[asyncio.Queue[Record]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.last_error = ""

    async def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._peers.close()
        if self._ledger is not None:
            with contextlib.suppress(EtcdError, LedgerError):
                await self._ledger.etcd.close()
            self._ledger = None

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Unavailable as exc:
                if str(exc) != self.last_error:
                    log.warning("%s", exc)
                self.last_error = str(exc)
            await asyncio.sleep(self.poll_s)

    async def _connected(self) -> Ledger:
        if self._ledger is None:
            try:
                self._ledger = await asyncio.wait_for(
                    Ledger.connect(self.endpoints, self.identity, timeout=self.timeout_s), self.timeout_s * 2
                )
            except (EtcdError, LedgerError, OSError, TimeoutError) as exc:
                raise Unavailable(f"the SN at {', '.join(self.endpoints)} cannot be reached: {exc}") from exc
        return self._ledger

    async def refresh(self) -> list[Record]:
        """Read records past the cached ones; returns (and publishes) the new ones."""
        async with self._lock:
            ledger = await self._connected()
            try:
                head = await ledger.head()
                missing = range(len(self.records), head.seq + 1)
                if len(missing) > BATCH_READ_FROM:  # one range read rather than many single ones
                    new = [r for r in await ledger.records() if r.seq in missing]
                else:
                    new = [await ledger.record(seq) for seq in missing]
            except (EtcdError, LedgerError, RecordError, TimeoutError) as exc:
                raise Unavailable(f"reading the ledger at {', '.join(self.endpoints)} failed: {exc}") from exc
            if [r.seq for r in new] != list(missing):  # the views index records by seq
                raise Unavailable(
                    f"ledger records {missing.start}..{missing.stop - 1} are not all stored: "
                    "the chain is damaged (GET /api/v1/ledger/verify names the record)"
                )
            self.records.extend(new)
            self.last_error = ""
        for rec in new:
            for q in list(self._subscribers):
                q.put_nowait(rec)
        return new

    async def current(self) -> list[Record]:
        """Every record, up to date; fails at once while the poller cannot read the SN (rather than
        each request waiting out the timeout)."""
        if self.last_error:
            raise Unavailable(self.last_error)
        await self.refresh()
        return self.records

    def subscribe(self) -> asyncio.Queue[Record]:
        q: asyncio.Queue[Record] = asyncio.Queue(maxsize=0)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Record]) -> None:
        self._subscribers.discard(q)

    async def _read(self, what: str, coro_fn: Callable[[Ledger], Awaitable[T]]) -> T:
        if self.last_error:
            raise Unavailable(self.last_error)
        ledger = await self._connected()
        try:
            return await coro_fn(ledger)
        except (EtcdError, LedgerError, RecordError, TimeoutError) as exc:
            raise Unavailable(
                f"reading {what} from the SN at {', '.join(self.endpoints)} failed: {exc}"
            ) from exc

    async def live_members(self) -> list[Member]:
        return await self._read("the membership", lambda led: led.members())

    async def network(self) -> Network:
        await self.current()
        etcd_members = await self._read("the SN members", lambda led: led.etcd.member_list())
        live = await self.live_members()
        head = self.records[-1].hash if self.records else ""
        return Network(
            name=self.network_name,
            namespace=self.namespace,
            sn_members=[
                SNMember(
                    name=m.name,
                    peer_urls=list(m.peer_urls),
                    client_urls=list(m.client_urls),
                    learner=m.is_learner,
                )
                for m in sorted(etcd_members, key=lambda m: m.name)
            ],
            ledger=LedgerHead(height=len(self.records), head_hash=head),
            live_nodes=len(live),
        )

    async def snapshot(self) -> LedgerSnapshot:
        return await self._read("the ledger", lambda led: led.snapshot())

    async def verify(self) -> ChainReport:
        """The audit of ``swarmctl ledger verify``: signatures against the swarm CA, chain, round rules."""
        return (await self.snapshot()).verify(self.identity.ca_pem())

    async def model(self, rnd: Round) -> Model:
        """The merged model of a committed round, from its leader or any participant that fetched it,
        checked against the digest the ledger records."""
        if rnd.result != "round" or not rnd.merged_digest:
            raise ModelUnavailable(
                f"round {rnd.round} of {rnd.contract!r} has no merged model ({rnd.result})"
            )
        close = next(
            (
                r
                for r in self.records
                if r.kind == "close" and r.contract == rnd.contract and r.body.get("round") == rnd.round
            ),
            None,
        )
        result = self.records[rnd.seq]  # records are held by seq (refresh checks they are contiguous)
        candidates: list[tuple[str, str]] = []
        leader_endpoint = result.body.get("leader_endpoint")
        if isinstance(leader_endpoint, str):
            candidates.append((result.author, leader_endpoint))
        live = {m.name: m.endpoint for m in await self.live_members()}
        for p in close.body.get("participants", []) if close else []:
            if isinstance(p, dict) and isinstance(p.get("endpoint"), str):
                name = str(p.get("name"))
                candidates.append((name, live.get(name) or str(p["endpoint"])))
        tried = []
        for name, endpoint in dict.fromkeys(candidates):
            try:
                held = await self._peers.fetch(
                    endpoint,
                    rnd.contract,
                    rnd.round,
                    "merged",
                    timeout=self.timeout_s,
                    expected_digest=rnd.merged_digest,
                )
            except PeerError as exc:
                tried.append(f"{name}: {exc}")
                continue
            return Model(held.data, held.digest, name)
        raise ModelUnavailable(
            f"no SL node serves the merged model of round {rnd.round} of {rnd.contract!r} "
            f"(asked {len(tried)}: {'; '.join(t[:160] for t in tried) or 'no known endpoint'})"
        )

    def rounds(self, contract: str) -> list[Round]:
        return views.rounds(self.records, contract)
