"""SwarmNet: real namespaces on a real bridge; partition, delay and loss between chosen pairs; clean teardown.

Every probe runs inside a host namespace through ``Host.wrap`` (the root namespace cannot reach the hosts):
``SERVER`` in each host accepts TCP connects on 7000, counts UDP datagrams on 7001 and tells the count on
7002; ``CLIENT`` measures connects (``TCP_SYNCNT=1``: a connect nobody answers fails with ETIMEDOUT after
about 3 s, one that is refused or unreachable fails at once with another error) and sends datagrams.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.netns import HEALTHY, Fault, Host, NetError, SwarmNet, cleanup_stale

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DELAY_MS = 200
UNANSWERED_CONNECT_S = 2.5
"""A connect with TCP_SYNCNT=1 nobody answers gives up after ~3 s (SYN, one retry after 1 s, 2 s more)."""
WAIT_S = 10.0
PYTHON = [sys.executable, "-I", "-S", "-c"]
"""Probes need only the standard library: no site packages to import halves their start-up."""

SERVER = r"""
import selectors, socket
tcp, count_port = socket.socket(), socket.socket()
for s, port in ((tcp, 7000), (count_port, 7002)):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
udp.bind(("0.0.0.0", 7001))
sel = selectors.DefaultSelector()
for s in (tcp, count_port, udp):
    sel.register(s, selectors.EVENT_READ)
received = 0
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is udp:
            udp.recv(2048)
            received += 1
        else:
            conn, _ = key.fileobj.accept()
            if key.fileobj is count_port:
                conn.sendall(str(received).encode())
            conn.close()
"""

CLIENT = r"""
import errno, json, socket, sys, time
mode, args = sys.argv[1], sys.argv[2:]
if mode == "connect":
    out = []
    for _ in range(int(args[1])):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        s.settimeout(20)
        start = time.monotonic()
        try:
            s.connect((args[0], 7000))
            out.append({"ms": (time.monotonic() - start) * 1000})
        except OSError as e:
            kinds = {errno.ETIMEDOUT: "timeout", errno.ECONNREFUSED: "refused",
                     errno.EHOSTUNREACH: "unreachable", errno.ENETUNREACH: "unreachable"}
            kind = kinds.get(e.errno, repr(e))
            out.append({"error": kind, "after_s": time.monotonic() - start})
        finally:
            s.close()
    print(json.dumps(out))
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(args[1])):
        s.sendto(b"%d" % i, (args[0], 7001))
        if i % 50 == 49:
            time.sleep(0.002)
    print("[]")
elif mode == "count":
    with socket.create_connection(("127.0.0.1", 7002), timeout=10) as s:
        print(int(s.recv(64)))
"""


def run_client(host: Host, *args: object) -> Any:
    argv = host.wrap([*PYTHON, CLIENT, *map(str, args)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"client {args} in {host.name} failed: {done.stderr}"
    return json.loads(done.stdout)


def connects(src: Host, dst: Host, n: int = 3) -> list[dict[str, Any]]:
    return list(run_client(src, "connect", dst.ip, n))


def rtts(src: Host, dst: Host, n: int = 3) -> list[float]:
    """Connect times (ms) from ``src`` to ``dst``; every connect must succeed."""
    results = connects(src, dst, n)
    assert all("ms" in r for r in results), f"{src.name} -> {dst.name}: {results}"
    return [r["ms"] for r in results]


def assert_unanswered(*pairs: tuple[Host, Host]) -> None:
    """A connect from ``src`` to ``dst`` of each pair (all at once) gets no answer at all: ETIMEDOUT, not
    refused or unreachable."""
    clients = [
        (
            src,
            dst,
            subprocess.Popen(
                src.wrap([*PYTHON, CLIENT, "connect", dst.ip, "1"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for src, dst in pairs
    ]
    for src, dst, client in clients:
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, f"client in {src.name} failed: {err}"
        [result] = json.loads(out)
        assert result.get("error") == "timeout", f"{src.name} -> {dst.name}: {result}"
        assert result["after_s"] >= UNANSWERED_CONNECT_S, f"{src.name} -> {dst.name} gave up early: {result}"


def udp_received(host: Host) -> int:
    return int(run_client(host, "count"))


def send_udp(src: Host, dst: Host, n: int) -> None:
    run_client(src, "udp", dst.ip, n)


def wait_received(host: Host, expected: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while (got := udp_received(host)) != expected:
        assert got < expected and time.monotonic() < deadline, (
            f"{host.name} counted {got} datagrams, waited {WAIT_S:.0f} s for {expected}"
        )
        time.sleep(0.05)


def settled_received(host: Host) -> int:
    """The datagram count once it stopped growing (0.3 s without change)."""
    deadline, last = time.monotonic() + WAIT_S, -1
    while (got := udp_received(host)) != last:
        assert time.monotonic() < deadline, f"{host.name}'s datagram count kept changing for {WAIT_S:.0f} s"
        last = got
        time.sleep(0.3)
    return got


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [e["name"] for e in json.loads(out or "[]")]


def root_interfaces() -> list[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return [e["ifname"] for e in json.loads(out)]


def netns_pids(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=True).stdout
    return {int(p) for p in out.split()}


def process_identity(pid: int) -> str | None:
    """PID plus start time (survives PID reuse); None once the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else f"{pid}@{fields[19]}"


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"waited {WAIT_S:.0f} s for {what}"
        time.sleep(0.02)


def start_ready(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group and wait for its first line, ``ready``."""
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert popen.stdout is not None
    if not select.select([popen.stdout], [], [], WAIT_S)[0]:
        stop(popen)
        pytest.fail(f"{argv[-1][:60]!r} printed nothing within {WAIT_S:.0f} s")
    line = popen.stdout.readline()
    if line != b"ready\n":
        stop(popen)
        pytest.fail(f"{argv[:5]} did not start: {line!r}")
    return popen


def stop(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    popen.wait(timeout=WAIT_S)
    if popen.stdout:
        popen.stdout.close()


@pytest.fixture
def net() -> Iterator[SwarmNet]:
    with SwarmNet() as swarm_net:
        yield swarm_net


@pytest.fixture
def hosts(net: SwarmNet) -> Iterator[tuple[Host, Host, Host]]:
    """Hosts a, b, c, each running SERVER."""
    trio = (net.add_host("a"), net.add_host("b"), net.add_host("c"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for host in trio:
            servers.append(start_ready(host.wrap([*PYTHON, SERVER])))
        yield trio
    finally:
        for server in servers:
            stop(server)


def test_hosts_reach_each_other_and_nothing_else(net: SwarmNet, hosts: tuple[Host, Host, Host]) -> None:
    a, b, c = hosts
    assert [h.name for h in hosts] == list(net.hosts) == ["a", "b", "c"]
    assert len({h.ip for h in hosts}) == 3
    assert all(ipaddress.ip_address(h.ip) in net.subnet for h in hosts)
    assert net.subnet.subnet_of(ipaddress.IPv4Network("10.231.0.0/16"))
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    root_routes = [
        ipaddress.ip_network(r["dst"], strict=False) for r in json.loads(out) if r["dst"] != "default"
    ]
    assert not [r for r in root_routes if net.subnet.overlaps(r)], "the hosts' /24 overlaps a root route"
    assert {h.netns for h in hosts} | {net.hub_netns} <= set(namespaces())
    assert not [i for i in root_interfaces() if i.startswith(net.if_prefix)], (
        "interfaces in the root namespace"
    )
    for src, dst in ((a, b), (b, a), (a, c), (c, a), (b, c), (c, b)):
        rtts(src, dst, 1)
    links = json.loads(
        subprocess.run(a.wrap(["ip", "-j", "addr"]), capture_output=True, text=True, check=True).stdout
    )
    assert {(link["ifname"], link["operstate"]) for link in links} == {
        ("lo", "UNKNOWN"),
        (f"{net.if_prefix}e1", "UP"),
    }
    assert [addr["local"] for link in links for addr in link["addr_info"]] == ["127.0.0.1", "::1", a.ip]


def test_partition_times_out_silently_and_heal_restores(
    net: SwarmNet, hosts: tuple[Host, Host, Host]
) -> None:
    a, b, c = hosts
    net.partition(a, b)
    assert net.fault(a, b) == net.fault(b, a) == Fault(partitioned=True)
    assert net.fault(a, c) == HEALTHY
    assert_unanswered((a, b), (b, a))
    rtts(a, c)  # the other pairs are untouched
    rtts(c, b)
    net.heal(a, b)
    assert net.fault(a, b) == net.fault(b, a) == HEALTHY
    rtts(a, b)
    rtts(b, a)


def test_delay_raises_the_round_trip_of_that_pair_only(net: SwarmNet, hosts: tuple[Host, Host, Host]) -> None:
    a, b, c = hosts
    net.delay(a, b, DELAY_MS)
    # A connect takes one round trip: SYN a -> b, SYN-ACK b -> a, each delayed by DELAY_MS.
    for src, dst in ((a, b), (b, a)):
        delayed = rtts(src, dst)
        assert min(delayed) >= 2 * DELAY_MS, (
            f"{src.name} -> {dst.name} with {DELAY_MS} ms each way: {delayed}"
        )
    for src, dst in ((a, c), (c, a), (b, c)):
        untouched = rtts(src, dst)
        assert min(untouched) < DELAY_MS, f"{src.name} -> {dst.name} should not be delayed: {untouched}"
    net.delay(a, b, 50, jitter_ms=25)  # replaces the 200 ms delay
    assert net.fault(b, a) == Fault(delay_ms=50, jitter_ms=25)
    jittered = rtts(a, b, 5)
    assert min(jittered) >= 2 * (50 - 25) and min(jittered) < 2 * DELAY_MS, jittered
    assert max(jittered) - min(jittered) > 1, f"jitter of 25 ms left the round trips alike: {jittered}"
    net.heal(a, b)
    healed = rtts(a, b)
    assert min(healed) < 50, healed


def test_delay_survives_killing_every_process_of_a_host(net: SwarmNet) -> None:
    """The harness crashes a host by SIGKILLing all of `ip netns pids`: the delay into it must stay."""
    a, b = net.add_host("a"), net.add_host("b")
    server = start_ready(b.wrap([*PYTHON, SERVER]))
    try:
        net.delay(a, b, DELAY_MS)
        for pid in netns_pids(b.netns):
            os.kill(pid, signal.SIGKILL)
        assert server.wait(timeout=WAIT_S) == -signal.SIGKILL
        stop(server)
        server = start_ready(b.wrap([*PYTHON, SERVER]))
        delayed = rtts(a, b)
        assert min(delayed) >= 2 * DELAY_MS, f"the delay did not survive the kill: {delayed}"
    finally:
        stop(server)


def test_loss_100_drops_every_packet_of_that_pair(net: SwarmNet, hosts: tuple[Host, Host, Host]) -> None:
    a, b, c = hosts
    net.loss(a, b, 100)
    assert_unanswered((a, b))
    before = udp_received(b)
    send_udp(a, b, 50)
    send_udp(c, b, 50)  # a third host still gets through
    wait_received(b, before + 50)
    assert settled_received(b) == before + 50
    net.heal(a, b)
    send_udp(a, b, 50)
    wait_received(b, before + 100)


def test_loss_50_drops_about_half_each_way(net: SwarmNet, hosts: tuple[Host, Host, Host]) -> None:
    a, b, _ = hosts
    net.loss(a, b, 50)
    assert net.fault(b, a) == Fault(loss_percent=50)
    for src, dst in ((a, b), (b, a)):
        before = udp_received(dst)
        send_udp(src, dst, 400)
        got = settled_received(dst) - before
        # Binomial(400, 0.5): 200 +- 10; outside 100..300 has a probability below 1e-20.
        assert 100 < got < 300, f"{src.name} -> {dst.name} with 50 % loss delivered {got} of 400"


def test_faults_combine_per_pair_and_heal_all_removes_them(
    net: SwarmNet, hosts: tuple[Host, Host, Host]
) -> None:
    a, b, c = hosts
    servers = {h.name: netns_pids(h.netns) for h in hosts}
    net.delay(a, b, 100)
    net.loss(a, b, 100)
    net.partition(b, c)
    net.delay(a, c, DELAY_MS)
    assert net.fault(a, b) == Fault(loss_percent=100, delay_ms=100)
    assert len(netns_pids(net.hub_netns)) == 4  # a delay process per delayed direction, in the hub
    assert {h.name: netns_pids(h.netns) for h in hosts} == servers
    assert_unanswered((a, b), (c, b))
    assert min(rtts(c, a)) >= 2 * DELAY_MS
    net.heal_all()
    assert all(net.fault(x, y) == HEALTHY for x in hosts for y in hosts if x != y)
    for src, dst in ((a, b), (b, c), (a, c)):
        assert min(rtts(src, dst)) < 100
    for host in hosts:
        rules = subprocess.run(
            host.wrap(["iptables-save"]), capture_output=True, text=True, check=True
        ).stdout
        assert "-j DROP" not in rules and "NFQUEUE" not in rules, f"{host.name} keeps filters:\n{rules}"
    wait_until("the delay processes to exit", lambda: not netns_pids(net.hub_netns))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: n.delay("a", "b", -1), r"ms must be a number in \[0, 60000\], got -1"),
        (lambda n: n.delay("a", "b", float("nan")), r"ms must be a number in \[0, 60000\], got nan"),
        (lambda n: n.delay("a", "b", "10"), r"ms must be a number .*got '10'"),
        (lambda n: n.delay("a", "b", 60001), r"ms must be a number .*got 60001"),
        (
            lambda n: n.delay("a", "b", 10, jitter_ms=-5),
            r"jitter_ms must be a number in \[0, 60000\], got -5",
        ),
        (lambda n: n.loss("a", "b", -0.5), r"percent must be a number in \[0, 100\], got -0.5"),
        (lambda n: n.loss("a", "b", 100.5), r"percent must be a number in \[0, 100\], got 100.5"),
        (lambda n: n.loss("a", "b", True), r"percent must be a number .*got True"),
        (lambda n: n.partition("a", "a"), r"a and b must be two different hosts, got 'a' twice"),
        (lambda n: n.partition("a", "nope"), r"b must be a host of this net \(a, b\), got 'nope'"),
        (lambda n: n.heal("x", "b"), r"a must be a host of this net \(a, b\), got 'x'"),
        (lambda n: n.fault("a", "a"), r"src and dst must be two different hosts"),
        (lambda n: n.add_host("a"), r"name 'a' is already a host"),
        (lambda n: n.add_host("bad name"), r"name must be 1-32 characters .*got 'bad name'"),
        (lambda n: n.add_host(""), r"name must be 1-32 characters"),
        (lambda n: SwarmNet(prefix="Bad-"), r"prefix must be 1-12 lowercase letters .*got 'Bad-'"),
        (lambda n: cleanup_stale("x y"), r"prefix must be"),
    ],
)
def test_invalid_parameters_are_rejected_naming_the_parameter(
    net: SwarmNet, call: Callable[[SwarmNet], object], message: str
) -> None:
    net.add_host("a")
    net.add_host("b")
    with pytest.raises(ValueError, match=message):
        call(net)
    assert net.fault("a", "b") == net.fault("b", "a") == HEALTHY
    assert list(net.hosts) == ["a", "b"]


def test_close_removes_every_namespace_and_interface_also_when_the_body_raised() -> None:
    leftovers: list[subprocess.Popen[bytes]] = []
    try:
        with pytest.raises(RuntimeError, match="the body failed"), SwarmNet() as net:
            a, b = net.add_host("a"), net.add_host("b")
            net.delay(a, b, 50)
            net.partition(a, b)
            # A process the caller forgot to stop, in its own group as the harness starts them.
            leftovers.append(
                start_ready(
                    a.wrap([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"])
                )
            )
            # The leftover in a, and the delay processes for a -> b and b -> a in the hub.
            assert netns_pids(a.netns) == {leftovers[0].pid} and netns_pids(b.netns) == set()
            inside = [process_identity(p) for ns in (a.netns, net.hub_netns) for p in netns_pids(ns)]
            assert len(inside) == 3 and None not in inside
            assert {a.netns, b.netns, net.hub_netns} <= set(namespaces())
            raise RuntimeError("the body failed")
        assert not [ns for ns in namespaces() if ns.startswith(net.run_id)]
        assert not [i for i in root_interfaces() if i.startswith(net.if_prefix)]
        assert leftovers[0].wait(timeout=WAIT_S) == -signal.SIGKILL
        assert [i for i in inside if i and process_identity(int(i.split("@")[0])) == i] == []
        net.close()  # idempotent
        with pytest.raises(NetError, match="is closed"):
            net.add_host("c")
    finally:
        for popen in leftovers:
            stop(popen)


def test_cleanup_stale_removes_what_a_killed_run_left_and_nothing_of_live_runs() -> None:
    prefix = f"swt{os.getpid() % 10000}"
    crashing_run = (
        f"import os, signal, sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.chaos.netns import SwarmNet\n"
        f"net = SwarmNet(prefix={prefix!r})\n"
        "net.delay(net.add_host('a'), net.add_host('b'), 100)\n"
        "print(net.run_id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    try:
        with SwarmNet(prefix=prefix) as live:
            live.add_host("a")
            done = subprocess.run(
                [sys.executable, "-c", crashing_run], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == -signal.SIGKILL, done.stderr
            dead_run = done.stdout.strip()
            left = {ns for ns in namespaces() if ns.startswith(dead_run)}
            assert left == {f"{dead_run}_hub", f"{dead_run}.a", f"{dead_run}.b"}
            assert set(cleanup_stale(prefix)) == left
            assert not [ns for ns in namespaces() if ns.startswith(dead_run)]
            assert {live.hub_netns, live.hosts["a"].netns} <= set(namespaces())
            assert cleanup_stale(prefix) == []
    finally:
        cleanup_stale(prefix)


def test_wrap_execs_so_group_signals_reach_the_program(net: SwarmNet) -> None:
    host = net.add_host("a")
    program = "import os, time; print('ready', flush=True); time.sleep(60)"
    popen = start_ready(host.wrap([sys.executable, "-c", program]))
    try:
        pid = popen.pid
        # The PID Popen got is the program itself, already inside the namespace: `ip` exec'd, not forked.
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-c", program.encode()]
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{host.netns}").st_ino
        assert netns_pids(host.netns) == {pid}

        def state() -> str:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat[stat.rindex(")") + 2]

        os.killpg(pid, signal.SIGSTOP)
        wait_until("the program to stop after SIGSTOP", lambda: state() == "T")
        os.killpg(pid, signal.SIGCONT)
        wait_until("the program to run again after SIGCONT", lambda: state() != "T")
        os.killpg(pid, signal.SIGKILL)
        assert popen.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        stop(popen)
