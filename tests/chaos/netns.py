"""Real network faults between swarm processes: one network namespace per host on a private bridge.

:class:`SwarmNet` makes a hub namespace holding a Linux bridge and, per host, a namespace with ``lo`` up
and one veth into that bridge, addressed from a free /24 of 10.231.0.0/16. Nothing is made in the root
namespace (only the ``/run/netns/<name>`` entries of ``ip netns``); the root namespace cannot reach the
hosts (unless a caller attaches it to :attr:`SwarmNet.bridge`, at .254), so callers run every swarm
process inside a host (:meth:`Host.wrap`) and read results from files.

Faults are per pair of hosts, both directions, and live in the hosts' own namespaces: direction
``a -> b`` is acted on where ``b``'s veth receives ``a``'s packets, before ``b``'s stack sees them.

* partition and loss: ``b``'s netfilter ``raw PREROUTING`` drops packets from ``a`` (all of them, or each
  one at random with the given probability). The sender sees nothing (no ICMP, no RST, no local send
  error): a connect times out, as in a real partition. ARP is left alone (faults act on IP), so a sender
  never sees "no route to host" either.
* delay: ``b``'s ``mangle PREROUTING`` hands packets from ``a`` to an NFQUEUE of ``b``'s namespace, served
  by a small process (this file run as a script) that accepts each packet ``ms`` (± ``jitter_ms``) after
  it arrived, in order. The process opens its queue in ``b``'s namespace and then moves to the hub's, so
  killing or stopping every process of ``b`` (``ip netns pids``) leaves it alone. On the receiving side,
  not the sender's egress: packets held there no longer count against the sending socket, whose TCP
  small-queues limit would otherwise cap a delayed flow at a few packets per round trip (netem avoids
  that by orphaning what it holds; NFQUEUE cannot).

Why not ``tc netem``: the kernel of the project's machines is built without it (``CONFIG_NET_SCH_NETEM``
unset, ``CONFIG_MODULES`` unset, so nothing to modprobe): ``tc qdisc add dev X root netem delay 10ms``
fails with "Error: Specified qdisc kind is unknown." (so do prio, drr, fq_codel; tc actions such as gact
are missing too). Netfilter with NFQUEUE is built in.

``python tests/chaos/netns.py cleanup [PREFIX]`` removes what crashed runs left (see :func:`cleanup_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, TracebackType

PREFIX = "swchaos"
"""Default name prefix of everything a :class:`SwarmNet` makes (namespaces ``<prefix>-<pid>-...``)."""
SUBNET_POOL = ipaddress.IPv4Network("10.231.0.0/16")
"""Host addresses come from a /24 of this pool (picked at random, so that concurrent runs rarely pick the
same one) that no root-namespace route or address overlaps."""
MAX_HOSTS = 253
"""Hosts get .1, .2, ... in the order they are added; .254 stays free (e.g. for the root namespace)."""
MAX_DELAY_MS = 60_000.0
"""Upper bound of ``ms`` and ``jitter_ms`` (milliseconds)."""
COMMAND_TIMEOUT = 15.0
"""Seconds any one ``ip``/``iptables-restore`` call may take."""
DELAYER_READY_TIMEOUT = 15.0
"""Seconds a delay process may take to start and bind its queue."""
STOP_TIMEOUT = 10.0
"""Seconds to wait for killed processes to leave a namespace / for a delay process to flush and exit."""

_SCRIPT = Path(__file__).resolve()
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}\Z")


class NetError(RuntimeError):
    """A namespace, interface or filter operation failed; the message names the command and its error."""


@dataclass(frozen=True)
class Fault:
    """What happens to packets in one direction ``src -> dst``; the default is a healthy link."""

    partitioned: bool = False
    """Every packet is dropped silently."""
    loss_percent: float = 0.0
    """Each packet is dropped silently with this probability (percent, 0-100)."""
    delay_ms: float = 0.0
    """Each packet arrives this many milliseconds late."""
    jitter_ms: float = 0.0
    """Plus a uniform random offset in [-jitter_ms, +jitter_ms] (milliseconds; never below 0 in total)."""

    @property
    def delayed(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0


HEALTHY = Fault()


@dataclass(frozen=True)
class Host:
    """One host: a network namespace with one address on the swarm bridge."""

    name: str
    ip: str
    """IPv4 address (dotted quad) of the host's veth."""
    netns: str
    """Name of the network namespace (as ``ip netns list`` shows it)."""

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host. ``ip netns exec`` execs (it does not fork), so the PID of a
        process started with the returned command is the program's own and signals to it (or to its
        process group) reach the program."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class _Delayer:
    """A running delay process serving one queue of the receiver's (``dst``) namespace."""

    queue: int
    delay_ms: float
    jitter_ms: float
    popen: subprocess.Popen[bytes]
    what: str
    """Names the process in errors."""


class SwarmNet:
    """Hosts on a private bridge with per-pair faults; a context manager (``close()`` on exit).

    ``prefix`` names everything this net makes: namespaces ``<prefix>-<pid>-<start>-<token>.<host>`` (and
    ``...-<token>_hub``) with this process's PID and start time, so :func:`cleanup_stale` can tell leftovers
    of a dead run; interfaces ``<prefix[:3]><token>...`` (at most 15 characters). Leftovers of dead runs
    with the same prefix are removed first. Not thread-safe: drive one net from one thread.
    """

    def __init__(self, prefix: str = PREFIX) -> None:
        _check_prefix(prefix)
        for tool in ("ip", "iptables-restore"):
            if shutil.which(tool) is None:
                raise NetError(f"{tool!r} not found on PATH (Debian packages: iproute2, iptables)")
        if os.geteuid() != 0:
            raise NetError("network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
        self.prefix = prefix
        token = secrets.token_hex(2)
        self.run_id = f"{prefix}-{os.getpid()}-{_start_ticks(os.getpid())}-{token}"
        """Common start of every namespace name of this net."""
        self.if_prefix = f"{prefix[:3]}{token}"
        """Common start of every interface name of this net."""
        self.hub_netns = f"{self.run_id}_hub"
        """The namespace holding the bridge and the hub-side veth ends."""
        self.bridge = f"{self.if_prefix}br"
        """Name of the Linux bridge inside :attr:`hub_netns`."""
        self._hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._faults: dict[tuple[str, str], Fault] = {}
        self._delayers: dict[tuple[str, str], _Delayer] = {}
        self._next_queue: dict[str, int] = {}
        self._closed = False
        try:
            cleanup_stale(prefix)
        except NetError as e:  # a stuck leftover of a dead run must not stop this one
            warnings.warn(f"leftovers of an earlier run not removed: {e}", stacklevel=2)
        self.subnet = _free_subnet()
        """The /24 the hosts' addresses come from."""
        try:
            self._add_namespace(self.hub_netns)
            _ip_batch(
                self.hub_netns,
                [
                    f"link add {self.bridge} type bridge",
                    f"link set {self.bridge} addrgenmode none",
                    f"link set {self.bridge} up",
                ],
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SwarmNet:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def hosts(self) -> Mapping[str, Host]:
        """Hosts by name, in the order they were added."""
        return dict(self._hosts)

    # ------------------------------------------------------------------ hosts

    def add_host(self, name: str) -> Host:
        """A new host ``name`` (1-32 of ``A-Za-z0-9_-``, starting with a letter or digit; unique)."""
        self._check_open()
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"name must be 1-32 characters of A-Za-z0-9_- starting with a letter or digit, got {name!r}"
            )
        if name in self._hosts:
            raise ValueError(f"name {name!r} is already a host of this net")
        if len(self._hosts) >= MAX_HOSTS:
            raise ValueError(f"a net holds at most {MAX_HOSTS} hosts (one /24, .254 kept free)")
        index = len(self._hosts) + 1
        host = Host(name, str(self.subnet.network_address + index), f"{self.run_id}.{name}")
        hub_end, host_end = f"{self.if_prefix}h{index}", f"{self.if_prefix}e{index}"
        self._add_namespace(host.netns)
        # No IPv6 link-local addresses: every packet between hosts is IPv4 and passes the fault filters.
        _ip_batch(
            self.hub_netns,
            [
                f"link add {hub_end} type veth peer name {host_end} netns {host.netns}",
                f"link set {hub_end} addrgenmode none",
                f"link set {hub_end} master {self.bridge}",
                f"link set {hub_end} up",
            ],
        )
        _ip_batch(
            host.netns,
            [
                "link set lo up",
                f"link set {host_end} addrgenmode none",
                f"addr add {host.ip}/{self.subnet.prefixlen} dev {host_end}",
                f"link set {host_end} up",
            ],
        )
        self._hosts[name] = host
        return host

    # ------------------------------------------------------------------ faults

    def partition(self, a: Host | str, b: Host | str) -> None:
        """Drop every packet between ``a`` and ``b``, both directions, silently (connects time out)."""
        x, y = self._pair(a, b)
        self._update(x, y, partitioned=True)

    def delay(self, a: Host | str, b: Host | str, ms: float, jitter_ms: float = 0.0) -> None:
        """Delay every packet between ``a`` and ``b`` by ``ms`` milliseconds (0-60000) in each direction,
        so the round trip grows by ``2 * ms``; ``jitter_ms`` (0-60000, default 0) adds a uniform random
        offset in [-jitter_ms, +jitter_ms] per packet, keeping packet order. ``ms=0, jitter_ms=0`` removes
        the delay."""
        x, y = self._pair(a, b)
        ms = _number("ms", ms, 0.0, MAX_DELAY_MS)
        jitter_ms = _number("jitter_ms", jitter_ms, 0.0, MAX_DELAY_MS)
        self._update(x, y, delay_ms=ms, jitter_ms=jitter_ms)

    def loss(self, a: Host | str, b: Host | str, percent: float) -> None:
        """Drop each packet between ``a`` and ``b`` (each direction) with probability ``percent`` (0-100);
        0 removes the loss."""
        x, y = self._pair(a, b)
        self._update(x, y, loss_percent=_number("percent", percent, 0.0, 100.0))

    def heal(self, a: Host | str, b: Host | str) -> None:
        """Remove every fault between ``a`` and ``b`` (both directions)."""
        x, y = self._pair(a, b)
        self._commit({(x, y): HEALTHY, (y, x): HEALTHY})

    def heal_all(self) -> None:
        """Remove every fault of every pair."""
        self._check_open()
        self._commit(dict.fromkeys(self._faults, HEALTHY))

    def fault(self, src: Host | str, dst: Host | str) -> Fault:
        """The faults now applied to packets from ``src`` to ``dst``."""
        x, y = self._pair(src, dst, names=("src", "dst"))
        return self._faults.get((x, y), HEALTHY)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop the delay processes, kill every process still inside a host, delete every namespace (and
        with them every interface) this net made. Idempotent; tries everything, then raises
        :class:`NetError` naming what could not be removed."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for delayer in self._delayers.values():
            _kill_group(delayer.popen)
        self._delayers.clear()
        for ns in reversed(self._namespaces):
            try:
                _delete_namespace(ns)
            except NetError as e:
                errors.append(str(e))
        self._namespaces.clear()
        if errors:
            raise NetError("; ".join(errors))

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise NetError(f"SwarmNet {self.run_id} is closed")

    def _add_namespace(self, ns: str) -> None:
        self._namespaces.append(ns)  # before creating: close() must remove a half-made namespace too
        _run(["ip", "netns", "add", ns])

    def _pair(self, a: Host | str, b: Host | str, names: tuple[str, str] = ("a", "b")) -> tuple[str, str]:
        self._check_open()
        resolved = []
        for param, value in zip(names, (a, b), strict=True):
            name = value.name if isinstance(value, Host) else value
            if name not in self._hosts:
                known = ", ".join(self._hosts) or "none yet"
                raise ValueError(f"{param} must be a host of this net ({known}), got {value!r}")
            resolved.append(name)
        if resolved[0] == resolved[1]:
            raise ValueError(
                f"{names[0]} and {names[1]} must be two different hosts, got {resolved[0]!r} twice"
            )
        return resolved[0], resolved[1]

    def _update(self, a: str, b: str, **changes: float | bool) -> None:
        self._commit(
            {
                (x, y): replace(self._faults.get((x, y), HEALTHY), **changes)  # type: ignore[arg-type]
                for x, y in ((a, b), (b, a))
            }
        )

    def _commit(self, wanted: Mapping[tuple[str, str], Fault]) -> None:
        """Make ``wanted`` (direction -> fault) real: new delay processes first, then each affected host's
        filters in one atomic ``iptables-restore``, then the replaced delay processes stop (so a changed
        delay never leaves a gap without one)."""
        obsolete: list[_Delayer] = []
        starting: list[_Delayer] = []
        try:
            for (src, dst), fault in wanted.items():
                if fault == HEALTHY:
                    self._faults.pop((src, dst), None)
                else:
                    self._faults[(src, dst)] = fault
                current = self._delayers.get((src, dst))
                if current and (current.delay_ms, current.jitter_ms) == (fault.delay_ms, fault.jitter_ms):
                    continue
                if current:
                    obsolete.append(self._delayers.pop((src, dst)))
                if fault.delayed:
                    self._delayers[(src, dst)] = self._start_delayer(src, dst, fault)
                    starting.append(self._delayers[(src, dst)])
            for delayer in starting:  # started together: each takes a Python start-up (0.1-1 s)
                _await_ready(delayer.popen, delayer.what)
            for host in sorted({name for pair in wanted for name in pair}):
                self._write_filters(host)
        except BaseException:
            # Half applied: drop the new delay processes; fault() may then tell more than is real until
            # the pair is healed.
            for key, delayer in list(self._delayers.items()):
                if delayer in starting:
                    obsolete.append(self._delayers.pop(key))
            raise
        finally:
            for delayer in obsolete:
                _stop_delayer(delayer)

    def _start_delayer(self, src: str, dst: str, fault: Fault) -> _Delayer:
        queue = self._next_queue.get(dst, 1)
        self._next_queue[dst] = queue + 1
        # -I -S: stdlib only, no site packages to import (halves the start-up).
        argv = [sys.executable, "-I", "-S", str(_SCRIPT), "delay", str(queue), str(fault.delay_ms)]
        popen = subprocess.Popen(
            self._hosts[dst].wrap([*argv, str(fault.jitter_ms), f"/run/netns/{self.hub_netns}"]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        what = f"delay process {src}->{dst} (NFQUEUE {queue} in {self._hosts[dst].netns})"
        return _Delayer(queue, fault.delay_ms, fault.jitter_ms, popen, what)

    def _write_filters(self, name: str) -> None:
        """Replace the host's ``raw`` (drop, loss) and ``mangle`` (delay) tables for packets from peers."""
        drops, queues = [], []
        for (src, dst), fault in sorted(self._faults.items()):
            if dst == name and fault.partitioned:
                drops.append(f"-A PREROUTING -s {self._hosts[src].ip}/32 -j DROP")
            elif dst == name and fault.loss_percent > 0:
                drops.append(
                    f"-A PREROUTING -s {self._hosts[src].ip}/32 -m statistic --mode random "
                    f"--probability {fault.loss_percent / 100:.10f} -j DROP"
                )
            if dst == name and (src, dst) in self._delayers:
                queue = self._delayers[(src, dst)].queue
                # --queue-bypass: should the delay process die, packets pass instead of vanishing.
                queues.append(
                    f"-A PREROUTING -s {self._hosts[src].ip}/32 -j NFQUEUE --queue-num {queue} --queue-bypass"
                )
        rules = [
            "*raw",
            ":PREROUTING ACCEPT [0:0]",
            *drops,
            "COMMIT",
            "*mangle",
            ":PREROUTING ACCEPT [0:0]",
            *queues,
            "COMMIT",
            "",
        ]
        _run(self._hosts[name].wrap(["iptables-restore"]), stdin="\n".join(rules))


# ---------------------------------------------------------------------- stale runs


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces (with their interfaces, killing processes left inside) of every
    :class:`SwarmNet` with this ``prefix`` whose creating process is gone; returns their names.
    Namespaces of live runs are left alone."""
    _check_prefix(prefix)
    owner = re.compile(rf"{re.escape(prefix)}-(\d+)-(\d+)-[0-9a-f]+[._]")
    removed = []
    for ns in _namespaces():
        match = owner.match(ns)
        if match and _start_ticks(int(match.group(1))) != int(match.group(2)):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


def _start_ticks(pid: int) -> int:
    """Start time of process ``pid`` (clock ticks since boot), -1 if it is gone or a zombie: with the PID it
    names one process for good (PIDs are reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return -1 if fields[0] == "Z" else int(fields[19])


def _namespaces() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"]).strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


def _delete_namespace(ns: str) -> None:
    """Kill what runs inside ``ns``, then delete it (a namespace with processes in it would outlive its
    name, keeping its interfaces). A namespace that is already gone is fine."""
    if ns not in _namespaces():
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids := _run(["ip", "netns", "pids", ns]).split():
        if time.monotonic() > deadline:
            raise NetError(
                f"processes {', '.join(pids)} still in namespace {ns} {STOP_TIMEOUT:.0f} s after SIGKILL"
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.05)
    _run(["ip", "netns", "delete", ns])


# ---------------------------------------------------------------------- commands


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise NetError(f"`{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT:.0f} s") from e
    if done.returncode != 0:
        raise NetError(f"`{shlex.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _ip_batch(ns: str, commands: Sequence[str]) -> None:
    _run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(commands) + "\n")


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        if route.get("dst") not in (None, "default"):
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(_run(["ip", "-j", "-4", "addr"]) or "[]"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}").network)
    free = [c for c in SUBNET_POOL.subnets(new_prefix=24) if not any(c.overlaps(net) for net in used)]
    if free:
        return random.choice(free)
    raise NetError(f"every /24 of {SUBNET_POOL} overlaps a route or address of the root namespace")


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"prefix must be 1-12 lowercase letters or digits starting with a letter, got {prefix!r}"
        )


def _number(param: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{param} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _await_ready(popen: subprocess.Popen[bytes], what: str) -> None:
    """Wait for the child's first output line to be ``ready``; else raise with what it printed."""
    assert popen.stdout is not None
    fd, out = popen.stdout.fileno(), b""
    deadline = time.monotonic() + DELAYER_READY_TIMEOUT
    while b"\n" not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetError(f"{what} did not report ready within {DELAYER_READY_TIMEOUT:.0f} s: {out!r}")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
    if out.split(b"\n", 1)[0] != b"ready":
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=STOP_TIMEOUT)
        raise NetError(f"{what} failed (exit {popen.poll()}): {out.decode(errors='replace').strip()}")


def _stop_delayer(delayer: _Delayer) -> None:
    """SIGTERM: the process lets every packet it holds go, then exits; SIGKILL if it takes too long."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(delayer.popen.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        delayer.popen.wait(timeout=STOP_TIMEOUT)
    _kill_group(delayer.popen)


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=STOP_TIMEOUT)
    if popen.stdout:
        popen.stdout.close()


# ---------------------------------------------------------------------- the delay process (NFQUEUE)

# Netlink and nfnetlink_queue constants (linux/netlink.h, linux/netfilter/nfnetlink_queue.h).
_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_NO_ENOBUFS = 5
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_NLMSG_ERROR = 2
_NFQ = 3 << 8  # NFNL_SUBSYS_QUEUE
_NFQNL_MSG_PACKET, _NFQNL_MSG_CONFIG, _NFQNL_MSG_VERDICT_BATCH = _NFQ | 0, _NFQ | 2, _NFQ | 3
_NFQA_PACKET_HDR, _NFQA_VERDICT_HDR = 1, 2
_NFQA_CFG_CMD, _NFQA_CFG_PARAMS, _NFQA_CFG_QUEUE_MAXLEN, _NFQA_CFG_MASK, _NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
_NFQNL_CFG_CMD_BIND = 1
_NFQNL_COPY_META = 1
_NFQA_CFG_F_GSO = 4  # hand over GSO packets whole instead of segmenting them first
_NF_ACCEPT = 1
_CLONE_NEWNET = 0x40000000
_QUEUE_MAXLEN = 10_000
"""Packets one queue holds; beyond that the kernel drops (as netem's ``limit`` does)."""


class _Stop(Exception):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(kind: int, flags: int, queue: int, attrs: bytes, seq: int = 0) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        yield kind, data[offset + 16 : offset + length]
        offset += length + (-length % 4)


def _packet_id(body: bytes) -> int | None:
    offset = 4  # nfgenmsg
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            return None
        if kind & 0x3FFF == _NFQA_PACKET_HDR:
            return int(struct.unpack_from(">I", body, offset + 4)[0])
        offset += length + (-length % 4)
    return None


def _bind_queue(queue: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for bursts of notifications
    sock.setsockopt(_SOL_NETLINK, _NETLINK_NO_ENOBUFS, 1)  # a lost notification is fine (batch verdicts)
    sock.bind((0, 0))
    config = [
        _attr(_NFQA_CFG_CMD, struct.pack("=BxH", _NFQNL_CFG_CMD_BIND, 0)),
        _attr(_NFQA_CFG_PARAMS, struct.pack(">IB", 0, _NFQNL_COPY_META))
        + _attr(_NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", _QUEUE_MAXLEN))
        + _attr(_NFQA_CFG_MASK, struct.pack(">I", _NFQA_CFG_F_GSO))
        + _attr(_NFQA_CFG_FLAGS, struct.pack(">I", _NFQA_CFG_F_GSO)),
    ]
    for seq, attrs in enumerate(config, 1):
        sock.send(_message(_NFQNL_MSG_CONFIG, _NLM_F_REQUEST | _NLM_F_ACK, queue, attrs, seq))
        for kind, body in _messages(sock.recv(65536)):
            if kind == _NLMSG_ERROR and (err := struct.unpack_from("=i", body)[0]) != 0:
                raise OSError(-err, f"NFQUEUE {queue} config step {seq}: {os.strerror(-err)}")
    return sock


def _enter_netns(path: str) -> None:
    """Move this (single-threaded) process into the network namespace at ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def _serve_delay(queue: int, delay_ms: float, jitter_ms: float, home: str) -> int:
    """Body of ``netns.py delay QUEUE MS JITTER_MS NETNS_PATH``, started in the receiving host: accept each
    packet of ``queue`` ``MS`` ± ``JITTER_MS`` milliseconds after it arrived, never before an earlier one
    (one batch verdict covers every packet up to an id, so a dropped notification cannot strand a packet).
    Once its queue socket exists (it stays in the host's namespace) the process moves to the namespace at
    ``NETNS_PATH`` (the hub): a caller that kills or stops every process of a host leaves it alone. Exits,
    letting every held packet go, on SIGTERM or when its parent is gone."""
    try:
        sock = _bind_queue(queue)
        _enter_netns(home)
    except OSError as e:
        print(f"error: cannot serve NFQUEUE {queue}: {e}", flush=True)
        return 1
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)  # nobody reads the pipe any more: never block on it
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    parent = os.getppid()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    held: deque[tuple[float, int]] = deque()  # (release time, packet id), in queue order
    last_release, last_id = 0.0, -1

    def release(upto: int) -> None:
        attrs = _attr(_NFQA_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, upto))
        sock.send(_message(_NFQNL_MSG_VERDICT_BATCH, _NLM_F_REQUEST, queue, attrs))

    try:
        while os.getppid() == parent:
            now = time.monotonic()
            wait = 1.0 if not held else min(1.0, max(0.0, held[0][0] - now))
            if select.select([sock], [], [], wait)[0]:
                now = time.monotonic()
                for kind, body in _messages(sock.recv(1 << 20)):
                    if kind == _NFQNL_MSG_PACKET and (packet := _packet_id(body)) is not None:
                        late = max(0.0, delay_ms + random.uniform(-jitter_ms, jitter_ms)) / 1000
                        last_release = max(now + late, last_release)
                        held.append((last_release, packet))
                        last_id = max(last_id, packet)
            now, due = time.monotonic(), -1
            while held and held[0][0] <= now:
                due = held.popleft()[1]
            if due >= 0:
                release(due)
    except _Stop:
        pass
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while data := sock.recv(1 << 20):  # ids of packets queued but not yet seen
                for kind, body in _messages(data):
                    if kind == _NFQNL_MSG_PACKET and (packet := _packet_id(body)) is not None:
                        last_id = max(last_id, packet)
        if last_id >= 0:
            release(last_id)
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) == 5 and argv[0] == "delay":
        return _serve_delay(int(argv[1]), float(argv[2]), float(argv[3]), argv[4])
    if 1 <= len(argv) <= 2 and argv[0] == "cleanup":
        for ns in cleanup_stale(*argv[1:]):
            print(f"removed {ns}")
        return 0
    print(f"usage: {sys.argv[0]} delay QUEUE MS JITTER_MS NETNS_PATH | cleanup [PREFIX]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
