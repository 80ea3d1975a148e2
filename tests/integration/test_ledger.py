"""The ledger on a real TLS etcd: permissions, watches, round barrier, leader failure, audit CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from swarmlearning import pki
from swarmlearning.etcd import EtcdClient, EtcdPermissionDenied, Put, WatchCompacted
from swarmlearning.ledger import (
    LeaderFailed,
    Ledger,
    NotRegistered,
    QuorumTimeout,
    Record,
    RoundAlreadyCommitted,
    RoundClose,
    keys,
    make_record,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _nodes(endpoints: list[str], certs: list[pki.NodeCert], *, register: bool = True) -> list[Ledger]:
    """One Ledger per certificate, spread over the endpoints, registered as members."""
    out = []
    for i, cert in enumerate(certs):
        eps = endpoints[i % len(endpoints) :] + endpoints[: i % len(endpoints)]
        ledger = await Ledger.connect(eps, cert, timeout=10)
        if register:
            await ledger.register_member(f"127.0.0.1:{40000 + i}", leader_eligible=True, ttl_s=5)
        out.append(ledger)
    return out


async def _close_all(ledgers: list[Ledger]) -> None:
    await asyncio.gather(*(lg.close() for lg in ledgers), return_exceptions=True)


async def _with_nodes(
    endpoints: list[str], certs: list[pki.NodeCert], body: Callable[[list[Ledger]], Awaitable[T]]
) -> T:
    ledgers = await _nodes(endpoints, certs)
    try:
        return await body(ledgers)
    finally:
        await _close_all(ledgers)


# ------------------------------------------------------------------------------------ permissions


def test_an_sl_node_writes_only_its_own_keys(sn_cluster) -> None:
    cluster = sn_cluster(1)
    alice, bob = cluster.provision("alice"), cluster.provision("bob")

    async def scenario() -> None:
        a, b = await _nodes(cluster.endpoints, [alice, bob])
        try:
            await a.etcd.put(keys.node_prefix("alice") + "scratch", b"mine")  # own prefix: allowed
            assert (await a.etcd.get(keys.member_key("bob"))) is not None  # reading others: allowed
            for attempt in (
                a.etcd.put(keys.member_key("bob"), b"forged"),
                a.etcd.delete(keys.member_key("bob")),
                a.etcd.put("/elsewhere", b"x"),
            ):
                with pytest.raises(EtcdPermissionDenied, match="permission denied"):
                    await attempt
            with pytest.raises(EtcdPermissionDenied, match="permission denied for user 'alice'"):
                async with a.etcd.watch("/elsewhere/", prefix=True):
                    pass
            with pytest.raises(EtcdPermissionDenied):
                await a.etcd.member_add(["https://127.0.0.1:1"], learner=True)
            assert [m.name for m in await b.members()] == ["alice", "bob"]
        finally:
            await _close_all([a, b])

    run(scenario())


def test_garbage_under_a_nodes_own_keys_is_ignored_by_the_others(sn_cluster, caplog) -> None:
    """A node may write anything under its own prefix: malformed member, ready and model marks are
    skipped with a warning naming the key, and the rest of the swarm goes on (a round still closes)."""
    cluster = sn_cluster(1)
    alice, bob, carol = (cluster.provision(n) for n in ("alice", "bob", "carol"))

    async def scenario() -> None:
        a, b, c = await _nodes(cluster.endpoints, [alice, bob, carol])
        try:
            await c.etcd.put(keys.member_key("carol"), b"{not json", lease=c._member_lease)
            await c.etcd.put(keys.ready_key("carol", "k", 1), b'{"digest": []}', lease=c._member_lease)
            await c.etcd.put(keys.model_key("carol", "k", 1), b"[" * 100_000)
            await a.etcd.put(
                keys.ready_key("alice", "k", 1), b'{"digest": 1, "weight": "x"}', lease=a._member_lease
            )
            assert [m.name for m in await b.members()] == ["alice", "bob"]
            await b.mark_ready("k", 1, digest="d" * 64, weight=1, samples=3)
            assert [p.name for p, _ in await b.ready_peers("k", 1)] == ["bob"]
            assert await b.who_has_model("k", 1) == []
            close = await b.close_round("k", 1, min_peers=1, full_quorum_wait_s=0, timeout_s=10)
            assert close.names == ("bob",)
        finally:
            await _close_all([a, b, c])

    run(scenario())
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for key in (keys.member_key("carol"), keys.ready_key("alice", "k", 1), keys.model_key("carol", "k", 1)):
        assert f"ignoring malformed {key}" in warned, warned


def test_a_round_every_participant_left_is_recorded_as_abandoned(sn_cluster) -> None:
    """Both participants of round 1 die before a merge: a later leader records the round as abandoned
    (one result per round, the chain verifies), but not while a participant is still ready for it."""
    cluster = sn_cluster(1)
    alice, bob, carol = (cluster.provision(n) for n in ("alice", "bob", "carol"))

    async def scenario() -> None:
        a, b, c = await _nodes(cluster.endpoints, [alice, bob, carol])
        try:
            for lg in (a, b):
                await lg.mark_ready("k", 1, digest="d" * 64, weight=1, samples=1)
            close = await a.close_round("k", 1, min_peers=2, full_quorum_wait_s=0, timeout_s=10)
            assert sorted(close.names) == ["alice", "bob"]
            await b.close()
            assert await c.abandon_stale_rounds("k", below=2) == []  # alice is still ready for it
            await a.close()
            (rec,) = await c.abandon_stale_rounds("k", below=2)
            assert rec.kind == "abandon" and rec.body["participants"] == ["alice", "bob"]
            assert await c.abandon_stale_rounds("k", below=2) == []
            assert (await c.round_result("k", 1)).kind == "abandon"  # type: ignore[union-attr]
            report = await c.verify()
            assert report.ok, report.message()
        finally:
            await _close_all([a, b, c])

    run(scenario())


def test_a_forged_record_in_the_shared_range_is_detected(sn_cluster) -> None:
    """alice may write the shared ledger range, but cannot sign as bob: verification names the record."""
    cluster = sn_cluster(1)
    alice, bob = cluster.provision("alice"), cluster.provision("bob")

    async def scenario() -> str:
        a, b = await _nodes(cluster.endpoints, [alice, bob])
        try:
            head = await a.head()
            good = make_record(
                seq=head.seq + 1,
                contract="c",
                kind="contract",
                body={"params": {}},
                prev_hash=head.hash,
                signer=alice,
            )
            forged = Record(**{**good.__dict__, "author": "bob", "author_fingerprint": bob.fingerprint})
            forged = Record(**{**forged.__dict__, "hash": forged.compute_hash()})
            await a.etcd.put(keys.record_key(forged.seq), forged.to_json())
            await a.etcd.put(keys.HEAD, json.dumps({"seq": forged.seq, "hash": forged.hash}).encode())
            report = await b.verify()
            assert not report.ok and report.bad_seq == forged.seq
            return report.reason
        finally:
            await _close_all([a, b])

    assert "invalid" in run(scenario())


# ------------------------------------------------------------------------------------ watches


def test_a_watch_cancelled_by_the_server_raises(sn_cluster) -> None:
    cluster = sn_cluster(1)

    async def scenario() -> None:
        async with await EtcdClient.connect(cluster.endpoints, cluster.admin) as c:
            first = await c.put("/t/w", b"0")
            for i in range(5):
                rev = await c.put("/t/w", str(i).encode())
            await c.compact(rev)
            # etcd confirms the watch first and cancels it in a later message: the next read raises.
            with pytest.raises(WatchCompacted) as err:
                async with c.watch("/t/w", start_revision=first) as w:
                    await w.get(timeout=5)
            assert err.value.compact_revision == rev
            # A live watch delivers events (the happy path of the same code).
            async with c.watch("/t/", prefix=True) as w:
                await c.put("/t/new", b"1")
                events = await w.get(timeout=5)
            assert [(e.type, e.kv.key, e.kv.value) for e in events] == [("put", "/t/new", b"1")]

    run(scenario())


# ------------------------------------------------------------------------------------ rounds


def test_barrier_gives_every_node_the_same_participants_and_leader(sn_cluster) -> None:
    cluster = sn_cluster(3)
    certs = [cluster.provision(n) for n in ("alice", "bob", "carol")]

    async def body(nodes: list[Ledger]) -> list[RoundClose]:
        assert await nodes[0].ensure_contract("mnist", {"min_peers": 3}) == {"min_peers": 3}
        assert await nodes[1].ensure_contract("mnist", {"min_peers": 9}) == {"min_peers": 3}  # first one wins
        r = await nodes[0].current_round("mnist")
        assert r == 1
        for i, n in enumerate(nodes):
            await n.mark_ready("mnist", r, digest=f"d{i}", weight=1.0 + i, samples=100 * (i + 1))
        return list(
            await asyncio.gather(
                *(n.close_round("mnist", r, min_peers=3, full_quorum_wait_s=5, timeout_s=20) for n in nodes)
            )
        )

    closes = run(_with_nodes(cluster.endpoints, certs, body))
    assert all(c == closes[0] for c in closes)
    c = closes[0]
    assert c.names == ("alice", "bob", "carol")
    assert c.participant("bob").digest == "d1" and c.participant("carol").samples == 300
    assert c.leader in c.names and c.leader == closes[1].leader == closes[2].leader


def test_full_quorum_wait_admits_a_late_but_in_time_peer(sn_cluster) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob", "carol", "dave")]
    said: list[str] = []

    async def body(nodes: list[Ledger]) -> RoundClose:
        a, b, c, _dave = nodes  # dave is a live member that never gets ready: no early close
        await a.mark_ready("job", 1, digest="a", weight=1, samples=1)
        await b.mark_ready("job", 1, digest="b", weight=1, samples=1)

        async def late() -> None:
            await asyncio.sleep(1.0)
            await c.mark_ready("job", 1, digest="c", weight=1, samples=1)

        close, _ = await asyncio.gather(
            a.close_round("job", 1, min_peers=2, full_quorum_wait_s=3, timeout_s=10, progress=said.append),
            late(),
        )
        return close

    close = run(_with_nodes(cluster.endpoints, certs, body))
    assert close.names == ("alice", "bob", "carol")
    assert any("quorum reached (2 ready" in s for s in said), said


def test_below_quorum_raises_quorum_timeout_naming_the_counts(sn_cluster) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob")]
    said: list[str] = []

    async def body(nodes: list[Ledger]) -> None:
        for n in nodes:
            await n.mark_ready("job", 1, digest="x", weight=1, samples=1)
        await nodes[0].close_round(
            "job", 1, min_peers=3, full_quorum_wait_s=0, timeout_s=1.5, progress=said.append
        )

    with pytest.raises(
        QuorumTimeout, match=r"only 2 of the 3 peers needed were ready after 1.5s \(ready: alice, bob\)"
    ):
        run(_with_nodes(cluster.endpoints, certs, body))
    assert said and "2 of 3 needed ready" in said[0]


_LEADER_SCRIPT = """
import asyncio, sys
from swarmlearning.pki import NodeCert
from swarmlearning.ledger import Ledger

async def main():
    ledger = await Ledger.connect(sys.argv[1].split(","), NodeCert.load(sys.argv[2]))
    async with ledger.hold_leadership("job", 1, 0, ttl_s=2):
        print("LEADING", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_dead_leader_is_replaced_by_the_next_one(sn_cluster, tmp_path: Path) -> None:
    cluster = sn_cluster(1)
    certs = {n: cluster.provision(n) for n in ("alice", "bob", "carol")}

    async def scenario() -> tuple[RoundClose, str, Record, list[Record]]:
        nodes = await _nodes(cluster.endpoints, list(certs.values()))
        leader_proc: subprocess.Popen[str] | None = None
        try:
            for n in nodes:
                await n.mark_ready("job", 1, digest=n.name, weight=1, samples=1)
            close = await nodes[0].close_round("job", 1, min_peers=3, timeout_s=10)
            dead = close.leader
            # The attempt-0 leader is a real process that dies by SIGKILL while leading.
            leader_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _LEADER_SCRIPT,
                    ",".join(cluster.endpoints),
                    str(certs[dead].cert_path.parent),
                ],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            assert leader_proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(leader_proc.stdout.readline), 30)
            assert line.strip() == "LEADING"
            others = [n for n in nodes if n.name != dead]
            waits = [asyncio.create_task(n.wait_round_result(close, 0, leader_timeout_s=30)) for n in others]
            await asyncio.sleep(0.5)
            assert not any(w.done() for w in waits)  # the leader is alive: everyone waits
            os.killpg(leader_proc.pid, signal.SIGKILL)
            for w in waits:
                with pytest.raises(LeaderFailed, match=f"leader {dead}: the leader's lease expired"):
                    await w
            nxt = nodes[0].leader_for(close, 1)
            assert nxt != dead
            new_leader = next(n for n in nodes if n.name == nxt)
            waiters = [n for n in nodes if n.name not in (dead, nxt)]
            waits = [asyncio.create_task(n.wait_round_result(close, 1, leader_timeout_s=10)) for n in waiters]
            async with new_leader.hold_leadership("job", 1, 1, ttl_s=2):
                rec = await new_leader.commit_round(
                    "job",
                    1,
                    1,
                    participants=list(close.names),
                    weights=dict.fromkeys(close.names, 1.0),
                    input_digests={p.name: p.digest for p in close.participants},
                    merged_digest="merged",
                    merge_method="mean",
                    rejected={},
                )
            got = list(await asyncio.gather(*waits))
            return close, nxt, rec, got
        finally:
            if leader_proc is not None:
                if leader_proc.poll() is None:
                    os.killpg(leader_proc.pid, signal.SIGKILL)
                leader_proc.wait(timeout=10)
                if leader_proc.stdout is not None:
                    leader_proc.stdout.close()
            await _close_all(nodes)

    close, nxt, rec, got = run(scenario())
    assert rec.author == nxt and rec.body["attempt"] == 1 and rec.body["merged_digest"] == "merged"
    assert all(g == rec for g in got)


def test_commits_chain_up_and_late_joiners_find_the_latest_round(sn_cluster) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob", "carol")]

    async def body(nodes: list[Ledger]) -> None:
        a, b, c = nodes
        # Concurrent appends never fork the chain.
        await asyncio.gather(
            *(n.ensure_contract(f"job-{n.name}", {"k": n.name}) for n in nodes for _ in range(3))
        )
        for r in (1, 2):
            for n in (a, b):
                await n.mark_ready("job", r, digest=n.name, weight=1, samples=1)
            close = await a.close_round("job", r, min_peers=2, full_quorum_wait_s=0, timeout_s=10)
            leader = a if close.leader == "alice" else b
            async with leader.hold_leadership("job", r, 0, ttl_s=2):
                rec = await leader.commit_round(
                    "job",
                    r,
                    0,
                    participants=list(close.names),
                    weights={},
                    input_digests={},
                    merged_digest=f"m{r}",
                    merge_method="mean",
                    rejected={"x": "wrong shapes"},
                )
            with pytest.raises(RoundAlreadyCommitted):
                await a.commit_round(
                    "job",
                    r,
                    1,
                    participants=[],
                    weights={},
                    input_digests={},
                    merged_digest="other",
                    merge_method="mean",
                    rejected={},
                )
            assert (await c.latest_round("job")) == rec
        assert await c.current_round("job") == 3
        recs = await c.records()
        assert [r.seq for r in recs] == list(range(len(recs)))
        kinds = [r.kind for r in await c.records("job")]
        assert kinds == ["close", "round", "close", "round"]
        assert len([r for r in recs if r.kind == "contract"]) == 3
        report = await c.verify()
        assert report.ok, report.message()

    run(_with_nodes(cluster.endpoints, certs, body))


# ------------------------------------------------------------------------------------ audit CLI


def _swarmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarmlearning.cli.swarmctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swarmctl_ledger_verify_detects_altered_dropped_and_reordered_records(
    sn_cluster, tmp_path: Path
) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob")]

    async def build(nodes: list[Ledger]) -> None:
        for n in nodes:
            await n.ensure_contract(f"c-{n.name}", {"owner": n.name})
        for n in nodes:
            await n.mark_ready("job", 1, digest=n.name, weight=1, samples=1)
        await nodes[0].close_round("job", 1, min_peers=2, timeout_s=10)

    run(_with_nodes(cluster.endpoints, certs, build))
    conn = ["--endpoints", ",".join(cluster.endpoints), "--cert-dir", str(certs[0].cert_path.parent)]

    ok = _swarmctl("ledger", "verify", *conn)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == "OK: 5 records, chain intact"  # 2 members, 2 contracts, 1 close
    export = tmp_path / "ledger.json"
    assert _swarmctl("ledger", "export", *conn, "-o", str(export)).returncode == 0
    from_file = _swarmctl("ledger", "verify", "--file", str(export), "--ca", str(certs[0].ca_path))
    assert from_file.returncode == 0 and "OK: 5 records" in from_file.stdout

    async def restore(c: EtcdClient, originals: dict[str, Any]) -> None:
        await c.txn([], [Put(k, v) for k, v in originals.items()])

    async def alter(c: EtcdClient, orig: dict[str, Any]) -> None:
        d = json.loads(orig[keys.record_key(2)])
        d["body"]["params"]["owner"] = "mallory"
        await c.put(keys.record_key(2), json.dumps(d).encode())

    async def drop(c: EtcdClient, orig: dict[str, Any]) -> None:
        await c.delete(keys.record_key(3))

    async def swap(c: EtcdClient, orig: dict[str, Any]) -> None:
        await c.txn(
            [],
            [
                Put(keys.record_key(2), orig[keys.record_key(3)]),
                Put(keys.record_key(3), orig[keys.record_key(2)]),
            ],
        )

    for change, expected in (
        (alter, "FAILED at record 2: hash does not match the content (record altered)"),
        (drop, "FAILED at record 3: record with seq 4 found at position 3"),
        (swap, "FAILED at record 2: record with seq 3 found at position 2"),
    ):

        async def apply_then_check(
            change: Callable[..., Awaitable[None]] = change, expected: str = expected
        ) -> None:
            async with await EtcdClient.connect(cluster.endpoints, cluster.admin) as c:
                originals = {kv.key: kv.value for kv in await c.get_prefix(keys.RECORDS)}
                await change(c, originals)
                bad = await asyncio.to_thread(_swarmctl, "ledger", "verify", *conn)
                await restore(c, originals)
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert bad.stdout.startswith(expected), bad.stdout

        run(apply_then_check())

    again = _swarmctl("ledger", "verify", *conn)
    assert again.returncode == 0, again.stdout
    # A tampered export fails too.
    data = json.loads(export.read_text())
    data["records"][2]["body"]["params"]["owner"] = "mallory"
    export.write_text(json.dumps(data))
    bad_file = _swarmctl("ledger", "verify", "--file", str(export), "--ca", str(certs[0].ca_path))
    assert bad_file.returncode == 1 and "FAILED at record 2" in bad_file.stdout


_MEMBER_SCRIPT = """
import asyncio, sys
from swarmlearning.pki import NodeCert
from swarmlearning.ledger import Ledger

async def main():
    ledger = await Ledger.connect(sys.argv[1].split(","), NodeCert.load(sys.argv[2]))
    await ledger.register_member("127.0.0.1:1", leader_eligible=True, ttl_s=2)
    await ledger.mark_ready("job", 1, digest="z", weight=1, samples=1)
    print("READY", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_dead_nodes_membership_and_ready_mark_vanish_with_its_lease(sn_cluster) -> None:
    cluster = sn_cluster(1)
    alice, zed = cluster.provision("alice"), cluster.provision("zed")

    async def scenario() -> tuple[list[str], list[str], RoundClose]:
        (a,) = await _nodes(cluster.endpoints, [alice])
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEMBER_SCRIPT, ",".join(cluster.endpoints), str(zed.cert_path.parent)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            assert line.strip() == "READY"
            before = [p.name for p, _ in await a.ready_peers("job", 1)]
            os.killpg(proc.pid, signal.SIGKILL)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while loop.time() < deadline and [m.name for m in await a.members()] != ["alice"]:
                await asyncio.sleep(0.2)
            after = [p.name for p, _ in await a.ready_peers("job", 1)]
            # The dead node is not counted: alice alone closes the round once she is ready.
            await a.mark_ready("job", 1, digest="a", weight=1, samples=1)
            close = await a.close_round("job", 1, min_peers=1, full_quorum_wait_s=0, timeout_s=10)
            return before, after, close
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
            await _close_all([a])

    before, after, close = run(scenario())
    assert before == ["zed"] and after == []
    assert close.names == ("alice",)


def test_max_peers_takes_the_earliest_and_a_round_waits_for_a_leader_eligible_peer(sn_cluster) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob", "carol", "dave")]
    erin = cluster.provision("erin")

    async def body(nodes: list[Ledger]) -> tuple[RoundClose, str]:
        for n in (nodes[2], nodes[0], nodes[3]):  # carol, alice, dave: in this order
            await n.mark_ready("job", 1, digest=n.name, weight=1, samples=1)
        close = await nodes[1].close_round(
            "job", 1, min_peers=1, max_peers=2, full_quorum_wait_s=30, timeout_s=10
        )
        # Round 2 in another contract: the only ready node may not lead, so there is no quorum.
        solo = await Ledger.connect(cluster.endpoints, erin)
        try:
            await solo.register_member("127.0.0.1:2", leader_eligible=False, ttl_s=5)
            await solo.mark_ready("other", 1, digest="e", weight=1, samples=1)
            with pytest.raises(QuorumTimeout) as err:
                await solo.close_round("other", 1, min_peers=1, full_quorum_wait_s=0, timeout_s=1)
        finally:
            await solo.close()
        return close, str(err.value)

    close, message = run(_with_nodes(cluster.endpoints, certs, body))
    assert close.names == ("alice", "carol")
    assert "none leader-eligible" in message


def test_model_delivery_tracks_who_has_the_final_model_and_forgets_those_who_left(sn_cluster) -> None:
    cluster = sn_cluster(1)
    certs = [cluster.provision(n) for n in ("alice", "bob", "carol", "dave")]
    everyone = ("alice", "bob", "carol")

    async def body(nodes: list[Ledger]) -> dict[str, Any]:
        alice, bob, carol, dave = nodes
        seen: dict[str, Any] = {"start": await alice.model_delivery("job", 4, everyone)}
        await alice.mark_has_model("job", 3, digest="m3")
        await alice.mark_has_model("job", 4, digest="m4")  # replaces her round-3 mark
        await bob.mark_fetching_model("job", 4)
        await dave.mark_fetching_model("job", 4)  # a late joiner, not a participant
        seen["fetching"] = await carol.model_delivery("job", 4, everyone)
        seen["round3"] = await carol.who_has_model("job", 3)
        with pytest.raises(EtcdPermissionDenied):  # nobody records for another node
            await alice.etcd.put(keys.model_key("carol", "job", 4), b'{"state": "has"}')
        await bob.close()  # leaves without the model: its lease and fetching mark go
        await carol.mark_has_model("job", 4, digest="m4")
        seen["bob_left"] = await alice.model_delivery("job", 4, everyone)
        await dave.mark_has_model("job", 4, digest="m4")
        seen["done"] = await alice.model_delivery("job", 4, everyone)
        seen["who"] = await carol.who_has_model("job", 4)
        solo = await Ledger.connect(cluster.endpoints, certs[3])
        try:
            with pytest.raises(NotRegistered, match="register_member"):
                await solo.mark_fetching_model("job", 4)
        finally:
            await solo.close()
        return seen

    seen = run(_with_nodes(cluster.endpoints, certs, body))
    assert seen["start"].waiting_for == everyone and seen["start"].has == ()
    fetching = seen["fetching"]
    assert fetching.has == ("alice",) and fetching.waiting_for == ("bob", "carol", "dave")
    assert fetching.needed_by == 4 and not fetching.complete
    assert seen["round3"] == []
    left = seen["bob_left"]
    assert left.waiting_for == ("dave",) and left.left == ("bob",)
    assert seen["done"].complete and seen["done"].has == ("alice", "carol", "dave")
    assert seen["who"] == ["alice", "carol", "dave"]


def test_close_round_reports_how_long_it_waited_below_quorum(sn_cluster) -> None:
    """``on_quorum_wait`` gets the seconds a node waited below quorum, once; not called when the
    quorum was there at once (what the SL node's quorum-wait metrics count)."""
    cluster = sn_cluster(1)
    alice, bob = (cluster.provision(n) for n in ("alice", "bob"))

    async def scenario() -> None:
        a, b = await _nodes(cluster.endpoints, [alice, bob])
        waits_a: list[float] = []
        waits_b: list[float] = []
        try:
            await a.mark_ready("k", 1, digest="d" * 64, weight=1, samples=1)

            async def bob_later() -> None:
                await asyncio.sleep(1.5)
                await b.mark_ready("k", 1, digest="e" * 64, weight=1, samples=1)
                await b.close_round("k", 1, min_peers=2, full_quorum_wait_s=0, timeout_s=10,
                                    on_quorum_wait=waits_b.append)  # fmt: skip

            close, _ = await asyncio.gather(
                a.close_round("k", 1, min_peers=2, full_quorum_wait_s=0, timeout_s=10,
                              on_quorum_wait=waits_a.append),
                bob_later(),
            )  # fmt: skip
            assert sorted(close.names) == ["alice", "bob"]
            assert len(waits_a) == 1 and 1.0 <= waits_a[0] < 10, waits_a
            assert waits_b == []
        finally:
            await _close_all([a, b])

    run(scenario())
