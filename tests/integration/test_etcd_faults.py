"""The etcd client under member faults, on real 3-member mTLS+auth clusters with real signals.

- a frozen member (SIGSTOP: its sockets stay open, nothing answers): a watch opened on it moves to a
  live member, and an open watch whose member freezes is re-opened elsewhere without losing events;
- the raft leader SIGKILLed: writes stall about an election (etcd's default election timeout is 1 s),
  not the whole per-call timeout (5 s), and guarded appends retried meanwhile apply exactly once;
- users provisioned while SL identities write ("revision of auth store is old" is retried), and
  re-provisioning existing users leaves the auth store untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from swarmlearning.etcd import (
    Compare,
    EtcdClient,
    EtcdUnavailable,
    Get,
    Put,
    Watch,
)
from swarmlearning.ledger import access, keys
from swarmlearning.sn import SNNode

pytestmark = pytest.mark.integration

CALL_TIMEOUT_S = 5.0  # EtcdClient's default per-call deadline


@pytest.fixture
def freeze() -> Iterator[Callable[[SNNode], None]]:
    """``freeze(node)`` SIGSTOPs an etcd member; teardown SIGCONTs every frozen one, also when the test
    fails (tests list this fixture after ``sn_cluster``, so it is torn down before the cluster)."""
    frozen: list[int] = []

    def stop(node: SNNode) -> None:
        os.kill(node.pid, signal.SIGSTOP)
        frozen.append(node.pid)

    yield stop
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def _collect(
    w: Watch, n: int, timeout_s: float, between: Callable[[], Awaitable[object]] | None = None
) -> list[tuple[str, bytes]]:
    """Events of ``w`` until ``n`` arrived or ``timeout_s`` passed, polling like the Ledger does
    (``get(0.5)`` in a loop, re-reading state through ``between`` each time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    out: list[tuple[str, bytes]] = []
    while len(out) < n and loop.time() < deadline:
        out += [(e.kv.key, e.kv.value) for e in await w.get(0.5)]
        if between is not None:
            await between()
    return out


# ------------------------------------------------------------------------------------ frozen member


def test_a_watch_opened_on_a_frozen_member_moves_to_a_live_one(sn_cluster, freeze) -> None:
    cluster = sn_cluster(3)
    eps = cluster.endpoints

    async def scenario() -> tuple[float, list[tuple[str, bytes]], str, float, str]:
        async with (
            await EtcdClient.connect(eps, cluster.admin, timeout=15) as c,
            await EtcdClient.connect([eps[0]], cluster.admin, timeout=3) as only_frozen,
            await EtcdClient.connect(eps[1:], cluster.admin) as writer,
        ):
            assert c.endpoint == eps[0]
            freeze(cluster.nodes[0])
            t0 = time.monotonic()
            async with c.watch("/t/", prefix=True) as w:
                opened_s = time.monotonic() - t0
                await writer.put("/t/k", b"v")
                events = await _collect(w, 1, timeout_s=10)
            # With no live endpoint the watch fails with the client's error type, naming the member.
            t1 = time.monotonic()
            with pytest.raises(EtcdUnavailable) as err:
                async with only_frozen.watch("/t/", prefix=True):
                    pass
            return opened_s, events, c.endpoint, time.monotonic() - t1, str(err.value)

    opened_s, events, now_on, failed_after_s, message = asyncio.run(scenario())
    print(f"watch opened {opened_s:.2f}s after its first member was frozen; on {now_on}")
    print(f"with only the frozen member: {failed_after_s:.2f}s, then: {message}")
    assert events == [("/t/k", b"v")]
    assert now_on != eps[0]
    assert eps[0] in message and "watch" in message
    assert failed_after_s < 3 + CALL_TIMEOUT_S, "the watch on the frozen member outlived the client timeout"


def test_an_open_watch_whose_member_freezes_is_reopened_on_a_live_member(sn_cluster, freeze) -> None:
    cluster = sn_cluster(3)
    eps = cluster.endpoints

    async def scenario() -> tuple[float, int, str]:
        async with (
            await EtcdClient.connect(eps, cluster.admin, timeout=15) as c,
            await EtcdClient.connect(eps[1:], cluster.admin) as writer,
            c.watch("/t/", prefix=True) as w,
        ):
            await writer.put("/t/a", b"1")
            assert await _collect(w, 1, timeout_s=10) == [("/t/a", b"1")]  # works, on eps[0]
            freeze(cluster.nodes[0])
            t0 = time.monotonic()
            await writer.put("/t/b", b"2")
            await writer.put("/t/c", b"3")
            during = await _collect(w, 2, timeout_s=25, between=lambda: c.get("/t/c"))
            assert during == [("/t/b", b"2"), ("/t/c", b"3")], (
                f"after its member froze the watch delivered {during} within 25s"
            )
            return time.monotonic() - t0, w.reopened, c.endpoint

    resumed_s, reopened, now_on = asyncio.run(scenario())
    print(
        f"events resumed {resumed_s:.2f}s after the watch's member froze; re-opened {reopened}x, on {now_on}"
    )
    assert reopened >= 1 and now_on != eps[0]


# ------------------------------------------------------------------------------------ leader loss


async def _append_loop(
    c: EtcdClient, name: str, stop: asyncio.Event, done_at: list[float], mine: list[str]
) -> None:
    """Append ``name-i`` records to a shared chain the way the ledger does: a txn guarded by the head's
    mod revision; on a failed compare, a record at our seq with our payload means an earlier attempt
    (whose reply was lost) did apply."""
    i = 0
    while not stop.is_set():
        head = await c.get("/t/head")
        seq = int(head.value) + 1 if head else 0
        payload = f"{name}-{i}".encode()
        rec = f"/t/rec/{seq:06d}"
        res = await c.txn(
            [Compare("/t/head", "mod", "=", head.mod_revision if head else 0)],
            [Put("/t/head", str(seq).encode()), Put(rec, payload)],
            [Get(rec)],
        )
        if res.succeeded or (res.gets and res.gets[0] and res.gets[0][0].value == payload):
            mine.append(payload.decode())
            i += 1
        done_at.append(time.monotonic())


def test_writes_resume_about_an_election_after_the_leader_is_killed(sn_cluster) -> None:
    cluster = sn_cluster(3)
    eps = cluster.endpoints
    leader = cluster.leader_index()
    on_leader = [eps[leader]] + [e for i, e in enumerate(eps) if i != leader]
    on_follower = [e for i, e in enumerate(eps) if i != leader] + [eps[leader]]

    async def scenario() -> tuple[dict[str, float], dict[str, list[str]], list[str], float]:
        async with (
            await EtcdClient.connect(on_leader, cluster.admin, timeout=20) as a,
            await EtcdClient.connect(on_follower, cluster.admin, timeout=20) as b,
        ):
            assert a.call_timeout == CALL_TIMEOUT_S
            stop = asyncio.Event()
            done: dict[str, list[float]] = {"on-leader": [], "on-follower": []}
            mine: dict[str, list[str]] = {"on-leader": [], "on-follower": []}
            tasks = [
                asyncio.create_task(_append_loop(a, "on-leader", stop, done["on-leader"], mine["on-leader"])),
                asyncio.create_task(
                    _append_loop(b, "on-follower", stop, done["on-follower"], mine["on-follower"])
                ),
            ]
            try:
                await asyncio.sleep(1.0)
                kill_at = time.monotonic()
                cluster.kill(leader)
                killed_s = time.monotonic() - kill_at
                await asyncio.sleep(CALL_TIMEOUT_S + 3)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            stall = {}
            for name, ts in done.items():
                after = [t for t in ts if t > kill_at]
                assert after, f"{name}: no write completed after the leader was killed"
                stall[name] = max(t2 - t1 for t1, t2 in zip([kill_at, *after], after, strict=False))
            chain = [kv.value.decode() for kv in await b.get_prefix("/t/rec/")]
            return stall, mine, chain, killed_s

    stall, mine, chain, killed_s = asyncio.run(scenario())
    for name, s in stall.items():
        print(
            f"{name}: longest write stall after SIGKILL of the leader: {s:.2f}s ({len(mine[name])} appends)"
        )
    # kill() waits for the process to be gone; that wait is not the client's stall.
    assert all(s - killed_s < CALL_TIMEOUT_S for s in stall.values()), (
        f"writes stalled {stall} after the leader died: the whole per-call timeout ({CALL_TIMEOUT_S:g}s)"
    )
    # Every append the writers counted is in the chain exactly once, and nothing else is.
    assert sorted(chain) == sorted(mine["on-leader"] + mine["on-follower"])
    assert len(set(chain)) == len(chain)


# ------------------------------------------------------------------------------------ auth changes


async def _sl_writes(c: EtcdClient, name: str, stop: asyncio.Event, count: list[int]) -> None:
    """What an SL node writes: keys under its own prefix and in the shared rounds range."""
    own = keys.node_prefix(name)
    i = 0
    while not stop.is_set():
        await c.put(f"{own}ready/x/{i % 5:08d}", b"{}")
        await c.txn([], [Put(f"{keys.ROUNDS}faults/{name}", str(i).encode())])
        await c.get(f"{own}ready/x/{i % 5:08d}")
        i += 1
    count.append(i)


def test_sl_writers_see_no_error_while_users_are_provisioned(sn_cluster) -> None:
    cluster = sn_cluster(1)
    writers = [f"sl-{i}" for i in range(3)]
    for name in writers:
        cluster.provision(name, "sl")
    cluster.provision("swarm-reader", "operator")

    async def scenario() -> tuple[list[int], int, int]:
        loop = asyncio.get_running_loop()
        clients = [await EtcdClient.connect(cluster.endpoints, cluster.ca.issue(n)) for n in writers]
        try:
            async with await EtcdClient.connect(cluster.endpoints, cluster.admin) as root:
                stop = asyncio.Event()
                counts: list[int] = []
                tasks = [
                    asyncio.create_task(_sl_writes(c, n, stop, counts))
                    for c, n in zip(clients, writers, strict=True)
                ]
                # An operator coming back: new sites' users appear while the others write.
                provisioned = 0
                deadline = loop.time() + 6
                try:
                    while loop.time() < deadline and not any(t.done() for t in tasks):
                        await access.provision(root, f"sl-new-{provisioned}", "sl")
                        provisioned += 1
                finally:
                    stop.set()
                    results = await asyncio.gather(*tasks, return_exceptions=True)
                errors = [f"{n}: {r!r}" for n, r in zip(writers, results, strict=True) if r is not None]
                assert not errors, f"SL writers failed while {provisioned} users were provisioned: {errors}"
                # The restarted operator provisions every existing identity again: no change at all.
                rev = await root.auth_revision()
                for name in [*writers, *(f"sl-new-{i}" for i in range(provisioned))]:
                    await access.provision(root, name, "sl")
                await access.provision(root, "swarm-reader", "operator")
                await access.provision(root, "root", "admin")
                return counts, provisioned, await root.auth_revision() - rev
        finally:
            for c in clients:
                await c.close()

    counts, provisioned, rebumps = asyncio.run(scenario())
    print(
        f"{sum(counts)} SL write rounds ({counts}) while {provisioned} users were provisioned; "
        f"re-provisioning all {provisioned + 5} identities bumped the auth revision {rebumps}x"
    )
    assert provisioned >= 3, f"only {provisioned} users were provisioned in 6s"
    assert all(n > 0 for n in counts)
    assert rebumps == 0, f"re-provisioning existing users changed the auth store {rebumps}x"
