"""The ledger as one SL node (or an admin/operator) sees it: membership, contracts, round coordination.

Typical SL node flow for round ``r`` of ``contract``::

    ledger = await Ledger.connect(endpoints, node_cert)
    await ledger.register_member("10.0.0.5:30305", leader_eligible=True)
    await ledger.ensure_contract(contract, {"min_peers": 2, ...})
    r = await ledger.current_round(contract)                  # late joiners start here
    await ledger.mark_ready(contract, r, digest=d, weight=1.0, samples=640)
    close = await ledger.close_round(contract, r, min_peers=2, max_peers=0,
                                     full_quorum_wait_s=30, timeout_s=1800)
    attempt = 0
    while True:
        leader = ledger.leader_for(close, attempt)
        if leader == ledger.name:
            async with ledger.hold_leadership(contract, r, attempt, ttl_s=10):
                ...pull weights from close.participants, merge...
                rec = await ledger.commit_round(contract, r, attempt, participants=..., ...)
            break
        try:
            rec = await ledger.wait_round_result(close, attempt, leader_timeout_s=600)
            break                                             # fetch the merged model from rec.author
        except LeaderFailed:
            attempt += 1

A node that is not in ``close.names`` (it marked ready too late) waits for the result and adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from swarmlearning import pki
from swarmlearning.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    Get,
    KeyValue,
    Put,
)
from swarmlearning.ledger import keys
from swarmlearning.ledger.records import (
    GENESIS_HASH,
    ChainReport,
    Record,
    canonical_json,
    make_record,
    verify_chain,
)
from swarmlearning.ledger.rounds import (
    FETCHING_MODEL,
    HAS_MODEL,
    Member,
    ModelDelivery,
    Participant,
    RoundClose,
    leader_for,
    model_delivery,
    slice_leader_for,
)

log = logging.getLogger(__name__)

_CONTRACT_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_PROGRESS_EVERY_S = 5.0
_POLL_S = 0.5


class LedgerError(Exception):
    """A ledger operation failed; the message says which and why."""


class NotRegistered(LedgerError):
    """The operation needs :meth:`Ledger.register_member` first."""


class QuorumTimeout(LedgerError):
    """Too few peers marked ready within the quorum timeout."""


class LeaderFailed(LedgerError):
    """The round leader lost its lease, or did not commit within the timeout."""


class RoundAlreadyCommitted(LedgerError):
    """Another leader committed this round already; ``record`` is that result."""

    def __init__(self, message: str, record: Record) -> None:
        super().__init__(message)
        self.record = record


class ChainContention(LedgerError):
    """Appending kept losing the race for the chain head."""


@dataclass(frozen=True)
class Head:
    seq: int
    """-1 for an empty ledger."""
    hash: str
    mod_revision: int


@dataclass(frozen=True)
class LedgerSnapshot:
    """Everything needed to audit the chain offline (what ``swarmctl ledger export`` writes)."""

    records: tuple[Record, ...]
    certificates: Mapping[str, bytes]
    """fingerprint -> certificate PEM"""
    head: tuple[int, str] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "records": [r.to_dict() for r in self.records],
            "certificates": {fp: pem.decode() for fp, pem in sorted(self.certificates.items())},
            "head": {"seq": self.head[0], "hash": self.head[1]} if self.head else None,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LedgerSnapshot:
        head = d.get("head")
        return cls(
            records=tuple(Record.from_dict(r) for r in d["records"]),
            certificates={fp: pem.encode() for fp, pem in d["certificates"].items()},
            head=(int(head["seq"]), str(head["hash"])) if head else None,
        )

    def verify(self, ca_pem: bytes | None) -> ChainReport:
        return verify_chain(self.records, self.certificates, ca_pem=ca_pem, head=self.head)


def check_contract_name(contract: str) -> None:
    if not _CONTRACT_RE.match(contract):
        raise ValueError(
            f"contract={contract!r} is not allowed: use 1-63 lowercase letters, digits, "
            "'.', '_' or '-', starting and ending with a letter or digit"
        )


def _check_round(round_no: int) -> None:
    if not 1 <= round_no <= 99_999_999:
        raise ValueError(f"round_no={round_no}: must be 1-99999999")


class Leadership:
    """Lease-backed leadership key of one round attempt; see :meth:`Ledger.hold_leadership`."""

    def __init__(self, ledger: Ledger, key: str, ttl_s: int) -> None:
        self._ledger = ledger
        self.key = key
        self.ttl_s = ttl_s
        self.lease_id = 0
        self._keepalive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Leadership:
        etcd = self._ledger.etcd
        self.lease_id = await etcd.lease_grant(self.ttl_s)
        await etcd.put(self.key, canonical_json({"leader": self._ledger.name}), lease=self.lease_id)
        self._keepalive = etcd.keep_alive(self.lease_id, self.ttl_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        with contextlib.suppress(EtcdError):
            await self._ledger.etcd.lease_revoke(self.lease_id)


class Ledger:
    """One connection to the swarm ledger, acting as the identity of ``tls`` (its CN = ``name``)."""

    def __init__(self, etcd: EtcdClient, tls: pki.NodeCert) -> None:
        self.etcd = etcd
        self.tls = tls
        self.name = tls.name
        self._cert_published = False
        self._member_lease = 0
        self._member_value = b""
        self._rejoin: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._sessions: dict[str, bool] = {}
        """Per contract: is this node's ML process connected (re-marked when the lease is renewed)."""

    @classmethod
    async def connect(cls, endpoints: Sequence[str], tls: pki.NodeCert, *, timeout: float = 10) -> Ledger:
        """Connect to the SN API (etcd client endpoints ``host:port``) with mTLS.

        ``timeout`` (seconds, default 10) bounds each etcd operation including failover.
        """
        return cls(await EtcdClient.connect(endpoints, tls, timeout=timeout), tls)

    async def close(self) -> None:
        """Leave: stop the membership keepalive, revoke its lease (ready marks vanish), disconnect."""
        if self._rejoin is not None:
            self._rejoin.cancel()
            with contextlib.suppress(asyncio.CancelledError, EtcdError):
                await self._rejoin
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if self._member_lease:
            with contextlib.suppress(EtcdError):
                await self.etcd.lease_revoke(self._member_lease)
            self._member_lease = 0
        await self.etcd.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------ chain append

    async def head(self) -> Head:
        kv = await self.etcd.get(keys.HEAD)
        if kv is None:
            return Head(-1, GENESIS_HASH, 0)
        try:
            d = json.loads(kv.value)
            return Head(int(d["seq"]), str(d["hash"]), kv.mod_revision)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise LedgerError(f"{keys.HEAD} is malformed ({exc!r}); the SN's data is damaged") from exc

    async def _publish_cert(self) -> None:
        if not self._cert_published:
            await self.etcd.put(keys.cert_key(self.name, self.tls.fingerprint), self.tls.cert_pem())
            self._cert_published = True

    async def _append(
        self,
        contract: str,
        kind: str,
        body: Mapping[str, Any],
        *,
        guard: str | None = None,
        pointers: Sequence[str] = (),
    ) -> Record | None:
        """Append a signed record at the chain head, atomically with ``pointers`` (keys set to its seq).

        With ``guard``, the append only happens while that key is absent (and sets it to the seq);
        returns None when the guard key exists. Concurrent appenders race on the head's revision;
        losers rebuild their record on the new head and retry.
        """
        await self._publish_cert()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.etcd.timeout * 3
        while True:
            head = await self.head()
            rec = make_record(
                seq=head.seq + 1,
                contract=contract,
                kind=kind,
                body=body,
                prev_hash=head.hash,
                signer=self.tls,
            )
            seq_bytes = str(rec.seq).encode()
            cmp = [Compare(keys.HEAD, "mod", "=", head.mod_revision)]
            if guard:
                cmp.append(Compare(guard, "version", "=", 0))
            ops: list[Put | Delete | Get] = [
                Put(keys.record_key(rec.seq), rec.to_json()),
                Put(keys.HEAD, canonical_json({"seq": rec.seq, "hash": rec.hash})),
                *[Put(p, seq_bytes) for p in [*([guard] if guard else []), *pointers]],
            ]
            res = await self.etcd.txn(cmp, ops, [Get(guard)] if guard else [])
            if res.succeeded:
                return rec
            if guard and res.gets and res.gets[0]:
                return None
            # A retried txn that did apply shows up as a head carrying our hash.
            now_head = await self.head()
            if now_head.seq == rec.seq and now_head.hash == rec.hash:
                return rec
            if loop.time() > deadline:
                raise ChainContention(
                    f"could not append a {kind} record: the chain head kept moving for "
                    f"{self.etcd.timeout * 3:g}s"
                )
            await asyncio.sleep(0.01)

    async def record(self, seq: int) -> Record:
        kv = await self.etcd.get(keys.record_key(seq))
        if kv is None:
            raise LedgerError(f"ledger record {seq} is missing")
        return Record.from_json(kv.value)

    async def _pointed(self, key: str) -> Record | None:
        kv = await self.etcd.get(key)
        return None if kv is None else await self.record(int(kv.value))

    async def records(self, contract: str | None = None) -> list[Record]:
        """All records in chain order, or only those of ``contract``."""
        recs = [Record.from_json(kv.value) for kv in await self.etcd.get_prefix(keys.RECORDS)]
        return [r for r in recs if contract is None or r.contract == contract]

    async def certificates(self) -> dict[str, bytes]:
        """fingerprint -> PEM of every certificate published by a node."""
        out: dict[str, bytes] = {}
        for kv in await self.etcd.get_prefix(keys.NODES):
            parts = kv.key[len(keys.NODES) :].split("/")
            if len(parts) == 3 and parts[1] == "certs":
                out[parts[2]] = kv.value
        return out

    async def snapshot(self) -> LedgerSnapshot:
        head = await self.head()
        return LedgerSnapshot(
            records=tuple(await self.records()),
            certificates=await self.certificates(),
            head=(head.seq, head.hash) if head.seq >= 0 else None,
        )

    async def verify(self) -> ChainReport:
        """Verify the stored chain against the swarm CA of this identity."""
        return (await self.snapshot()).verify(self.tls.ca_pem())

    # ------------------------------------------------------------------------------ membership

    async def register_member(self, endpoint: str, *, leader_eligible: bool, ttl_s: int = 10) -> Record:
        """Announce this node: a leased membership key (kept alive in the background; it vanishes
        ``ttl_s`` seconds after the node dies) and a signed ``member`` record. Returns the record.

        ``endpoint``: ``host:port`` of this node's SL server. ``ttl_s``: lease TTL, >= 2 seconds.
        """
        if ttl_s < 2:
            raise ValueError(f"ttl_s={ttl_s}: must be >= 2 seconds")
        await self._publish_cert()
        self._member_value = canonical_json(
            {
                "name": self.name,
                "organisation": self.tls.organisation,
                "endpoint": endpoint,
                "leader_eligible": leader_eligible,
                "fingerprint": self.tls.fingerprint,
            }
        )
        await self._put_member(ttl_s)
        rec = await self._append("", "member", json.loads(self._member_value))
        assert rec is not None
        return rec

    async def _put_member(self, ttl_s: int) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._member_lease = await self.etcd.lease_grant(ttl_s)
        await self.etcd.put(keys.member_key(self.name), self._member_value, lease=self._member_lease)
        for contract, training in self._sessions.items():
            await self.etcd.put(
                keys.session_key(self.name, contract), _session_value(training), lease=self._member_lease
            )

        def lost(err: Exception) -> None:
            log.warning("membership of %s lost (%s); registering again", self.name, err)
            self._rejoin = asyncio.get_running_loop().create_task(self._put_member(ttl_s))

        self._keepalive = self.etcd.keep_alive(self._member_lease, ttl_s, on_lost=lost)

    async def members(self) -> list[Member]:
        """Live members (their membership lease is alive), by name."""
        out = []
        for kv in await self.etcd.get_prefix(keys.NODES):
            name = kv.key[len(keys.NODES) :].split("/", 1)[0]
            if kv.key == keys.member_key(name) and (m := _node_value(kv, functools.partial(_member, name))):
                out.append(m)
        return sorted(out, key=lambda m: m.name)

    async def mark_session(self, contract: str, *, training: bool) -> None:
        """Say whether this node's ML process for ``contract`` is connected (``training=True``, on hello)
        or gone (finished or died). Rounds stop waiting for a node whose ML process is gone (without
        this, a node whose ML process died would hold every round to its full-quorum wait), and a round
        is not final while a node that is training missed it. On the membership lease, so a dead node's
        mark goes with it; a node that never connected an ML process is waited for as before."""
        check_contract_name(contract)
        if not self._member_lease:
            raise NotRegistered("mark_session needs register_member() first (the mark is leased)")
        self._sessions[contract] = training
        await self.etcd.put(
            keys.session_key(self.name, contract), _session_value(training), lease=self._member_lease
        )

    async def sessions(self, contract: str) -> tuple[list[str], list[str]]:
        """Live members (membership lease alive) that may still contribute to ``contract`` (no ML
        process gone), and those with an ML process connected for it, by name."""
        live: set[str] = set()
        training: set[str] = set()
        gone: set[str] = set()
        for kv in await self.etcd.get_prefix(keys.NODES):
            name, _, rest = kv.key[len(keys.NODES) :].partition("/")
            if rest == "member":
                live.add(name)
            elif rest == f"session/{contract}":
                (training if kv.value == _session_value(True) else gone).add(name)
        return sorted(live - gone), sorted(live & training)

    # ------------------------------------------------------------------------------ contracts

    async def ensure_contract(self, contract: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """Record ``contract`` with ``params`` unless it exists; returns the recorded parameters
        (the first writer's, which the caller should compare with its own)."""
        check_contract_name(contract)
        rec = await self._append(
            contract, "contract", {"params": dict(params)}, guard=keys.contract_key(contract)
        )
        if rec is None:
            rec = await self._pointed(keys.contract_key(contract))
            assert rec is not None
        return dict(rec.body["params"])

    async def contract(self, contract: str) -> Mapping[str, Any] | None:
        rec = await self._pointed(keys.contract_key(contract))
        return None if rec is None else dict(rec.body["params"])

    # ------------------------------------------------------------------------------ rounds

    async def current_round(self, contract: str) -> int:
        """The first round a node can still join: one past the highest closed round (1 if none)."""
        check_contract_name(contract)
        highest = 0
        for kv in await self.etcd.get_prefix(f"{keys.ROUNDS}{contract}/"):
            parts = kv.key[len(keys.ROUNDS) + len(contract) + 1 :].split("/")
            if len(parts) == 2 and parts[1] == "close":
                highest = max(highest, int(parts[0]))
        return highest + 1

    async def mark_ready(
        self,
        contract: str,
        round_no: int,
        *,
        digest: str,
        weight: float,
        samples: int,
        manifest: str = "",
        size: int = 0,
    ) -> None:
        """Declare this node ready for ``round_no`` with its model ``digest``, merge ``weight`` (> 0 or
        0 for "contribute nothing") and ``samples`` trained since the last round (>= 0); ``manifest``:
        the digest of its input's chunk manifest when the round may be merged sharded, with ``size``,
        the input's bytes.

        The mark uses the membership lease, so a dead node's mark disappears; older marks of this
        node for the contract are removed in the same transaction.
        """
        check_contract_name(contract)
        _check_round(round_no)
        if weight < 0 or samples < 0:
            raise ValueError(f"weight={weight}, samples={samples}: must be >= 0")
        if not self._member_lease:
            raise NotRegistered(
                "mark_ready needs register_member() first (the mark lives on the membership lease)"
            )
        value = canonical_json(
            {
                "digest": digest,
                "weight": weight,
                "samples": samples,
                **({"manifest": manifest} if manifest else {}),
            }
        )
        await self.etcd.txn(
            [],
            [
                Delete(keys.ready_prefix(self.name, contract), keys.ready_key(self.name, contract, round_no)),
                Put(keys.ready_key(self.name, contract, round_no), value, lease=self._member_lease),
            ],
        )

    async def ready_peers(self, contract: str, round_no: int) -> list[tuple[Participant, int]]:
        """Live nodes ready for the round, with the revision of their mark, earliest first."""
        members: dict[str, Member] = {}
        marks: dict[str, KeyValue] = {}
        for kv in await self.etcd.get_prefix(keys.NODES):
            name = kv.key[len(keys.NODES) :].split("/", 1)[0]
            if kv.key == keys.member_key(name):
                if (m := _node_value(kv, functools.partial(_member, name))) is not None:
                    members[name] = m
            elif kv.key == keys.ready_key(name, contract, round_no):
                marks[name] = kv
        out = []
        for name, kv in marks.items():
            m = members.get(name)
            if m is None:
                continue
            p = _node_value(kv, functools.partial(_participant, m))
            if p is not None:
                out.append((p, kv.mod_revision))
        return sorted(out, key=lambda pr: (pr[1], pr[0].name))

    async def round_close(self, contract: str, round_no: int) -> RoundClose | None:
        rec = await self._pointed(keys.close_key(contract, round_no))
        return None if rec is None else RoundClose.from_record(rec)

    async def close_round(
        self,
        contract: str,
        round_no: int,
        *,
        min_peers: int,
        max_peers: int = 0,
        full_quorum_wait_s: float = 30,
        timeout_s: float = 1800,
        progress: Callable[[str], None] | None = None,
        on_quorum_wait: Callable[[float], None] | None = None,
    ) -> RoundClose:
        """Wait for the round's quorum, then fix its participant set (or return the one already fixed).

        Waits until ``min_peers`` (>= 1) live nodes are ready, then up to ``full_quorum_wait_s``
        seconds more for further peers; closes early when ``max_peers`` (0 = no limit) are ready or
        every live member that may still contribute (its ML process not gone, see :meth:`mark_session`)
        is. The first node to close wins a guarded append of the ``close`` record;
        everyone gets the same :class:`RoundClose`. If more than ``max_peers`` are ready the earliest
        ones are taken. ``progress`` gets a line every few seconds saying what is awaited. Raises
        :class:`QuorumTimeout` after ``timeout_s`` seconds below quorum. If the round was below quorum
        when first looked at, ``on_quorum_wait`` gets, once, the seconds until quorum was seen (or until
        the call ended: closed by another node, timed out).
        """
        check_contract_name(contract)
        _check_round(round_no)
        if min_peers < 1:
            raise ValueError(f"min_peers={min_peers}: must be >= 1")
        if max_peers and max_peers < min_peers:
            raise ValueError(f"max_peers={max_peers}: must be 0 (no limit) or >= min_peers ({min_peers})")
        if full_quorum_wait_s < 0 or timeout_s <= 0:
            raise ValueError(
                f"full_quorum_wait_s={full_quorum_wait_s} must be >= 0 and timeout_s={timeout_s} > 0"
            )
        say = progress or (lambda msg: log.info("%s", msg))
        loop = asyncio.get_running_loop()
        start = loop.time()
        quorum_since: float | None = None
        last_said = -_PROGRESS_EVERY_S
        what = f"round {round_no} of contract {contract!r}"
        below_quorum_at_first: bool | None = None
        first_quorum: float | None = None
        try:
            async with self.etcd.watch(keys.NODES, prefix=True) as changes:
                while True:
                    existing = await self.round_close(contract, round_no)
                    if existing is not None:
                        return existing
                    ready = await self.ready_peers(contract, round_no)
                    n = len(ready)
                    now = loop.time()
                    names = ", ".join(p.name for p, _ in ready) or "none"
                    # Someone must be able to lead the merge: without an eligible peer, keep waiting.
                    can_lead = any(p.leader_eligible for p, _ in ready)
                    has_quorum = n >= min_peers and can_lead
                    if below_quorum_at_first is None:
                        below_quorum_at_first = not has_quorum
                    if has_quorum and first_quorum is None:
                        first_quorum = now
                    if has_quorum:
                        quorum_since = now if quorum_since is None else quorum_since
                        live = len((await self.sessions(contract))[0])
                        if (
                            (max_peers and n >= max_peers)
                            or n >= live
                            or now - quorum_since >= full_quorum_wait_s
                        ):
                            chosen = [p for p, _ in ready][: max_peers or None]
                            body = {
                                "round": round_no,
                                "participants": [p.to_dict() for p in sorted(chosen, key=lambda p: p.name)],
                            }
                            rec = await self._append(
                                contract, "close", body, guard=keys.close_key(contract, round_no)
                            )
                            if rec is not None:
                                close = RoundClose.from_record(rec)
                                say(
                                    f"{what} closed with {len(chosen)} peers ({', '.join(close.names)}); "
                                    f"leader of attempt 0: {close.leader}"
                                )
                                return close
                            continue
                        if now - last_said >= _PROGRESS_EVERY_S:
                            left = full_quorum_wait_s - (now - quorum_since)
                            say(
                                f"{what}: quorum reached ({n} ready: {names}); "
                                f"waiting up to {left:.0f}s more "
                                f"for {'up to ' + str(max_peers) if max_peers else 'more'} peers "
                                f"({live} live members)"
                            )
                            last_said = now
                    else:
                        quorum_since = None
                        no_leader = "" if can_lead or not n else "; none leader-eligible"
                        if now - start >= timeout_s:
                            raise QuorumTimeout(
                                f"{what}: only {n} of the {min_peers} peers needed were ready after "
                                f"{timeout_s:g}s (ready: {names}{no_leader})"
                                "; check that the other nodes are running and reach the SN"
                            )
                        if now - last_said >= _PROGRESS_EVERY_S:
                            say(
                                f"{what}: waiting for peers, {n} of {min_peers} needed ready "
                                f"({names}{no_leader}); giving up in {timeout_s - (now - start):.0f}s"
                            )
                            last_said = now
                    await changes.get(timeout=_POLL_S)
        finally:
            if below_quorum_at_first and on_quorum_wait is not None:
                on_quorum_wait((first_quorum if first_quorum is not None else loop.time()) - start)

    def leader_for(self, close: RoundClose, attempt: int) -> str:
        """Leader of ``attempt`` (0, 1, ...) of a closed round; see :mod:`swarmlearning.ledger.rounds`."""
        return leader_for(close, attempt)

    def hold_leadership(self, contract: str, round_no: int, attempt: int, *, ttl_s: int = 10) -> Leadership:
        """``async with ledger.hold_leadership(...)``: a leadership key on a lease of ``ttl_s`` seconds
        (>= 1), kept alive while the block runs and revoked at its end. If this process dies the key
        vanishes after ``ttl_s`` and waiting peers get :class:`LeaderFailed`."""
        check_contract_name(contract)
        _check_round(round_no)
        if ttl_s < 1:
            raise ValueError(f"ttl_s={ttl_s}: must be >= 1 second")
        return Leadership(self, keys.leader_key(self.name, contract, round_no, attempt), ttl_s)

    async def commit_round(
        self,
        contract: str,
        round_no: int,
        attempt: int,
        *,
        participants: Sequence[str],
        weights: Mapping[str, float],
        input_digests: Mapping[str, str],
        merged_digest: str,
        merge_method: str,
        rejected: Mapping[str, str],
        extra: Mapping[str, Any] | None = None,
        slices: Sequence[Mapping[str, Any]] = (),
    ) -> Record:
        """Commit the merge result of the round as its leader: a signed ``round`` record.

        ``participants``: names merged; ``weights``/``input_digests``: per participant;
        ``rejected``: name -> reason for inputs refused; ``slices``: in a sharded round, per slice its
        record's seq, leader and merged digest. Raises :class:`RoundAlreadyCommitted` if the round has
        a result already.
        """
        check_contract_name(contract)
        _check_round(round_no)
        close = await self.round_close(contract, round_no)
        if close is None:
            raise LedgerError(f"round {round_no} of {contract!r} is not closed; cannot commit it")
        body = {
            "round": round_no,
            "attempt": attempt,
            "close_seq": close.record.seq,
            "participants": list(participants),
            "weights": dict(weights),
            "input_digests": dict(input_digests),
            "merged_digest": merged_digest,
            "merge_method": merge_method,
            "rejected": dict(rejected),
            "leader_endpoint": close.participant(self.name).endpoint if self.name in close.names else "",
            **({"extra": dict(extra)} if extra else {}),
            **({"slices": [dict(x) for x in slices]} if slices else {}),
        }
        rec = await self._append(
            contract,
            "round",
            body,
            guard=keys.result_key(contract, round_no),
            pointers=[keys.latest_key(contract)],
        )
        if rec is None:
            existing = await self._pointed(keys.result_key(contract, round_no))
            assert existing is not None
            raise RoundAlreadyCommitted(
                f"round {round_no} of {contract!r} was already committed by "
                f"{existing.author} (attempt {existing.body.get('attempt')})",
                existing,
            )
        return rec

    async def fail_round(self, contract: str, round_no: int, body: Mapping[str, Any]) -> Record | None:
        """Record that closed round ``round_no`` ends without a merge: an ``abandon`` record carrying
        ``body`` (``round``, ``close_seq``, ``participants``, ``reason`` ...), its one result, guarded like
        every other, so the participants stop waiting for it. None when the round already had a result."""
        return await self._append(contract, "abandon", body, guard=keys.result_key(contract, round_no))

    async def abandon_stale_rounds(self, contract: str, below: int) -> list[Record]:
        """Record as abandoned every round before ``below`` that closed but has no result and that
        nobody works on any more: no leadership key for it and no live participant still ready for it
        (a participant waiting for its leader keeps its ready mark; one that moved on, restarted or
        died does not). Without this, a round whose participants all died would stay open forever.
        A participant that comes back later to such a round finds it abandoned and joins the current
        one. Returns the ``abandon`` records written."""
        check_contract_name(contract)
        open_rounds: list[int] = []
        resolved: set[int] = set()
        prefix = f"{keys.ROUNDS}{contract}/"
        for kv in await self.etcd.get_prefix(prefix):
            parts = kv.key[len(prefix) :].split("/")
            if len(parts) == 2 and parts[0].isdigit():
                if parts[1] == "close":
                    open_rounds.append(int(parts[0]))
                elif parts[1] == "result":
                    resolved.add(int(parts[0]))
        candidates = sorted(r for r in open_rounds if r not in resolved and r < below)
        if not candidates:
            return []
        busy: set[int] = set()
        live: set[str] = set()
        ready: dict[str, int] = {}
        for kv in await self.etcd.get_prefix(keys.NODES):
            name, _, rest = kv.key[len(keys.NODES) :].partition("/")
            bits = rest.split("/")
            if rest == "member":
                live.add(name)
            elif len(bits) == 3 and bits[0] == "ready" and bits[1] == contract and bits[2].isdigit():
                ready[name] = int(bits[2])
            elif len(bits) == 4 and bits[0] == "leader" and bits[1] == contract and bits[2].isdigit():
                busy.add(int(bits[2]))
        out = []
        for r in candidates:
            close = await self.round_close(contract, r)
            if close is None or r in busy:
                continue
            if any(n in live and ready.get(n) == r for n in close.names):
                continue
            rec = await self._append(
                contract,
                "abandon",
                {
                    "round": r,
                    "close_seq": close.record.seq,
                    "participants": sorted(close.names),
                    "reason": "every participant left the round without a merge (died, restarted or gave up)",
                },
                guard=keys.result_key(contract, r),
            )
            if rec is not None:
                log.warning("round %d of %r: every participant left; recorded it as abandoned", r, contract)
                out.append(rec)
        return out

    async def round_result(self, contract: str, round_no: int) -> Record | None:
        return await self._pointed(keys.result_key(contract, round_no))

    async def wait_round_result(self, close: RoundClose, attempt: int, *, leader_timeout_s: float) -> Record:
        """Wait for the round's result record. Raises :class:`LeaderFailed` when the leader of
        ``attempt`` held its leadership key and lost it without committing, left the round (its ready
        mark for it is gone: dead for a membership lease TTL, or restarted), or when nothing was
        committed within ``leader_timeout_s`` seconds (> 0)."""
        if leader_timeout_s <= 0:
            raise ValueError(f"leader_timeout_s={leader_timeout_s}: must be > 0 seconds")
        async with self.watch_round(close) as rw:
            return await rw.wait_round(attempt, leader_timeout_s=leader_timeout_s)

    def hold_slice_leadership(
        self, contract: str, round_no: int, slice_no: int, attempt: int, *, ttl_s: int = 10
    ) -> Leadership:
        """Like :meth:`hold_leadership`, for one slice of a sharded round."""
        check_contract_name(contract)
        _check_round(round_no)
        if ttl_s < 1:
            raise ValueError(f"ttl_s={ttl_s}: must be >= 1 second")
        return Leadership(
            self, keys.slice_leader_key(self.name, contract, round_no, slice_no, attempt), ttl_s
        )

    async def commit_slice(
        self, contract: str, round_no: int, slice_no: int, attempt: int, body: Mapping[str, Any]
    ) -> Record:
        """Commit slice ``slice_no``'s merge of a sharded round as its leader: a signed ``slice``
        record with ``body`` (participants, rejected, digests; see ``swarmlearning.sl.modes.sharded``)
        plus round, slice, attempt and the close's seq. Raises :class:`RoundAlreadyCommitted` with the
        existing record if the slice has one already."""
        check_contract_name(contract)
        _check_round(round_no)
        close = await self.round_close(contract, round_no)
        if close is None:
            raise LedgerError(
                f"round {round_no} of {contract!r} is not closed; cannot commit slice {slice_no}"
            )
        full = {
            **dict(body),
            "round": round_no,
            "slice": slice_no,
            "attempt": attempt,
            "close_seq": close.record.seq,
            "leader_endpoint": close.participant(self.name).endpoint if self.name in close.names else "",
        }
        guard = keys.slice_key(contract, round_no, slice_no)
        rec = await self._append(contract, "slice", full, guard=guard)
        if rec is None:
            existing = await self._pointed(guard)
            assert existing is not None
            raise RoundAlreadyCommitted(
                f"slice {slice_no} of round {round_no} of {contract!r} was already committed by "
                f"{existing.author} (attempt {existing.body.get('attempt')})",
                existing,
            )
        return rec

    async def slice_result(self, contract: str, round_no: int, slice_no: int) -> Record | None:
        return await self._pointed(keys.slice_key(contract, round_no, slice_no))

    def watch_round(self, close: RoundClose) -> RoundWatch:
        """``async with ledger.watch_round(close) as rw:`` the keys a node waits on while a round
        completes (result pointers, leadership keys, ready marks), followed by two watches however many
        slices the round has; see :class:`RoundWatch`."""
        return RoundWatch(self, close)

    async def latest_round(self, contract: str) -> Record | None:
        """The latest committed ``round`` record of ``contract`` (late joiners fetch this model)."""
        check_contract_name(contract)
        return await self._pointed(keys.latest_key(contract))

    # ------------------------------------------------------------------------------ model delivery

    async def mark_has_model(self, contract: str, round_no: int, *, digest: str) -> None:
        """Record that this node holds the merged model of ``round_no`` (``digest``: its sha256).

        Nodes serving a final model read these marks (:meth:`model_delivery`) to know when every
        participant has it. The mark is not leased (it stays true after this node leaves); older
        marks of this node for the contract are removed in the same transaction.
        """
        check_contract_name(contract)
        _check_round(round_no)
        value = canonical_json({"state": HAS_MODEL, "digest": digest})
        await self._put_model_mark(contract, round_no, value, lease=0)

    async def mark_fetching_model(self, contract: str, round_no: int) -> None:
        """Announce that this node is about to download the merged model of ``round_no`` (a late
        joiner), so nodes that finished keep serving it. The mark lives on the membership lease (a
        dead fetcher holds nobody up) until :meth:`mark_has_model` replaces it."""
        check_contract_name(contract)
        _check_round(round_no)
        if not self._member_lease:
            raise NotRegistered(
                "mark_fetching_model needs register_member() first (the mark lives on the membership lease)"
            )
        value = canonical_json({"state": FETCHING_MODEL})
        await self._put_model_mark(contract, round_no, value, lease=self._member_lease)

    async def _put_model_mark(self, contract: str, round_no: int, value: bytes, *, lease: int) -> None:
        key = keys.model_key(self.name, contract, round_no)
        await self.etcd.txn(
            [], [Delete(keys.model_prefix(self.name, contract), key), Put(key, value, lease=lease)]
        )

    async def _model_marks(self, contract: str, round_no: int) -> tuple[frozenset[str], dict[str, str]]:
        """Live member names and node -> mark state for the round, from one consistent read."""
        live: set[str] = set()
        marks: dict[str, str] = {}
        for kv in await self.etcd.get_prefix(keys.NODES):
            name = kv.key[len(keys.NODES) :].split("/", 1)[0]
            if kv.key == keys.member_key(name):
                live.add(name)
            elif kv.key == keys.model_key(name, contract, round_no):
                state = _node_value(kv, lambda d: str(d.get("state", "")))
                if state is not None:
                    marks[name] = state
        return frozenset(live), marks

    async def who_has_model(self, contract: str, round_no: int) -> list[str]:
        """Names of the nodes that recorded holding the merged model of ``round_no``, sorted."""
        check_contract_name(contract)
        _check_round(round_no)
        _, marks = await self._model_marks(contract, round_no)
        return sorted(n for n, state in marks.items() if state == HAS_MODEL)

    async def model_delivery(
        self, contract: str, round_no: int, participants: Sequence[str]
    ) -> ModelDelivery:
        """Which of ``participants`` (and of the live nodes announced as fetching) still need the
        merged model of ``round_no``; participants whose membership lease expired are not waited for.
        See :class:`swarmlearning.ledger.ModelDelivery`."""
        check_contract_name(contract)
        _check_round(round_no)
        live, marks = await self._model_marks(contract, round_no)
        return model_delivery(round_no, tuple(participants), live, marks)


T = TypeVar("T")
MAX_NODE_VALUE_BYTES = 64 * 1024
"""Largest value read from another node's own keys (its member, ready and model marks)."""
_warned: dict[str, int] = {}


class RoundWatch:
    """A local, watch-fed copy of the keys that decide one round's waits: the round's pointers (slice
    records, result) and the participants' leadership keys and ready marks for the round. One watch on
    the round's prefix and one on the nodes' keep it current, so S slices cost two watches per node,
    not 2 S (at N = 16 per-slice watches overloaded etcd). Every wait for a round's or a slice's result
    goes through it (:meth:`Ledger.wait_round_result` too)."""

    def __init__(self, ledger: Ledger, close: RoundClose) -> None:
        self.ledger, self.close = ledger, close
        self._present: set[str] = set()
        self._changed = asyncio.Event()
        self._error: BaseException | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._leaders = f"/leader/{close.contract}/{close.round_no:08d}/"
        self._ready = f"/ready/{close.contract}/{close.round_no:08d}"

    def _relevant(self, key: str) -> bool:
        return key.startswith(keys.round_prefix(self.close.contract, self.close.round_no)) or (
            key.startswith(keys.NODES) and (self._leaders in key or key.endswith(self._ready))
        )

    async def __aenter__(self) -> RoundWatch:
        etcd = self.ledger.etcd
        try:
            # Watches first, then the snapshot: an event older than the snapshot is applied after it, in
            # order, so the copy ends up right either way.
            watches = [
                await self._stack.enter_async_context(
                    etcd.watch(keys.round_prefix(self.close.contract, self.close.round_no), prefix=True)
                ),
                await self._stack.enter_async_context(etcd.watch(keys.NODES, prefix=True)),
            ]
            for prefix in (keys.round_prefix(self.close.contract, self.close.round_no), keys.NODES):
                self._present |= {kv.key for kv in await etcd.get_prefix(prefix) if self._relevant(kv.key)}
        except BaseException:
            await self._stack.aclose()
            raise
        self._tasks = [asyncio.ensure_future(self._follow(w)) for w in watches]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # The flag too: Python 3.11's wait_for (inside Watch.get) can swallow a cancellation that
        # arrives with an event, and the loop would go on.
        self._closed = True
        for t in self._tasks:
            t.cancel()
        await asyncio.wait(self._tasks, timeout=2 * _POLL_S + 1)
        await self._stack.aclose()

    async def _follow(self, watch: Any) -> None:
        try:
            while not self._closed:
                events = await watch.get(timeout=_POLL_S)
                for e in events:
                    if self._relevant(e.kv.key):
                        (self._present.add if e.type == "put" else self._present.discard)(e.kv.key)
                if events:
                    self._notify()
        except EtcdError as exc:
            self._error = exc
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_slice(self, slice_no: int, attempt: int, *, leader_timeout_s: float) -> Record:
        """Slice ``slice_no``'s record; :class:`LeaderFailed` as :meth:`Ledger.wait_round_result` says,
        for the slice's leader of ``attempt``."""
        c = self.close
        leader = slice_leader_for(c, slice_no, attempt)
        return await self._wait(
            keys.slice_key(c.contract, c.round_no, slice_no),
            leader,
            keys.slice_leader_key(leader, c.contract, c.round_no, slice_no, attempt),
            f"slice {slice_no} of round {c.round_no} of {c.contract!r}, attempt {attempt}, leader {leader}",
            leader_timeout_s,
        )

    async def wait_round(self, attempt: int, *, leader_timeout_s: float) -> Record:
        """The round's result record, as :meth:`Ledger.wait_round_result`."""
        c = self.close
        leader = leader_for(c, attempt)
        return await self._wait(
            keys.result_key(c.contract, c.round_no),
            leader,
            keys.leader_key(leader, c.contract, c.round_no, attempt),
            f"round {c.round_no} of {c.contract!r}, attempt {attempt}, leader {leader}",
            leader_timeout_s,
        )

    async def _wait(self, result: str, leader: str, lk: str, what: str, leader_timeout_s: float) -> Record:
        if leader_timeout_s <= 0:
            raise ValueError(f"leader_timeout_s={leader_timeout_s}: must be > 0 seconds")
        ready = keys.ready_key(leader, self.close.contract, self.close.round_no)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + leader_timeout_s
        seen = False
        while True:
            changed = self._changed
            if self._error is not None:
                raise LedgerError(f"{what}: lost the watch on the ledger: {self._error}")
            if result in self._present and (rec := await self.ledger._pointed(result)) is not None:
                return rec
            alive = lk in self._present
            seen = seen or alive
            if (seen and not alive) or (not alive and ready not in self._present):
                if (rec := await self.ledger._pointed(result)) is not None:
                    return rec
                raise LeaderFailed(
                    f"{what}: the leader's lease expired before it committed"
                    if seen
                    else f"{what}: the leader left the round before it committed"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LeaderFailed(f"{what}: no result within {leader_timeout_s:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 5.0))


def _node_value(kv: KeyValue, build: Callable[[Any], T]) -> T | None:
    """``build(json of kv.value)``, or None with a warning (once per key revision) when another node wrote
    garbage under its own prefix (it may): one bad node must not crash every other one."""
    try:
        if len(kv.value) > MAX_NODE_VALUE_BYTES:
            raise ValueError(f"{len(kv.value)} bytes, over {MAX_NODE_VALUE_BYTES}")
        return build(json.loads(kv.value))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        if _warned.get(kv.key) != kv.mod_revision:
            _warned[kv.key] = kv.mod_revision
            log.warning("ignoring malformed %s (revision %d): %r", kv.key, kv.mod_revision, exc)
        return None


def _member(name: str, d: Mapping[str, Any]) -> Member:
    """A member from its key's value; the name is the key's (a node writes only under its own)."""
    return Member(
        name=name,
        organisation=str(d["organisation"]),
        endpoint=str(d["endpoint"]),
        leader_eligible=bool(d["leader_eligible"]),
        fingerprint=str(d["fingerprint"]),
    )


def _participant(m: Member, d: Mapping[str, Any]) -> Participant:
    return Participant(
        name=m.name,
        endpoint=m.endpoint,
        leader_eligible=m.leader_eligible,
        digest=str(d["digest"]),
        weight=float(d["weight"]),
        samples=int(d["samples"]),
        manifest=str(d.get("manifest") or ""),
        size=int(d.get("size") or 0),
    )


def _session_value(training: bool) -> bytes:
    return canonical_json({"ml": "connected" if training else "gone"})


@contextlib.asynccontextmanager
async def connected(
    endpoints: Sequence[str], tls: pki.NodeCert, *, timeout: float = 10
) -> AsyncIterator[Ledger]:
    """``async with connected(endpoints, cert) as ledger:`` — connect and always close."""
    ledger = await Ledger.connect(endpoints, tls, timeout=timeout)
    try:
        yield ledger
    finally:
        await ledger.close()
