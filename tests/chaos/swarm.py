"""The local swarm of ``swarmctl run`` with every SN member and every site on its own network host.

:class:`ChaosSwarm` is a :class:`~swarmlearning.local.runner.LocalSwarm` whose processes run in the
network namespaces of a :class:`~tests.chaos.netns.SwarmNet`: ``sn-1..sn-K`` (etcd members on the fixed
ports 30303/30304 of their own address) and ``node-1..node-N`` (SL node on 30305 plus its ML process;
they share the Unix socket through the run folder). Certificates carry the hosts' addresses. The
harness itself stays in the root namespace, which gets one address on the swarm bridge
(:func:`attach_root`), so it reads the ledger and watches leaders like any admin client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from swarmlearning import pki
from swarmlearning.local.runner import ADMIN, ORG, LocalSwarm, Node, Proc, RunError, spawn, tail

from tests.chaos.netns import Host, NetError, SwarmNet

SN_PEER_PORT = 30303
SN_CLIENT_PORT = 30304
SL_PORT = 30305
SN_START_TIMEOUT = 90.0
"""Seconds a member may take to bootstrap or join (etcd waits ~5 s of health between membership changes)."""


def attach_root(net: SwarmNet) -> str:
    """Give the root namespace an address on ``net``'s bridge (the last of its /24); returns it. The veth
    goes away with the hub namespace when the net closes."""
    ip = str(net.subnet.network_address + 254)
    root_end, hub_end = f"{net.if_prefix}r0", f"{net.if_prefix}r1"
    for argv in (
        ["ip", "link", "add", root_end, "type", "veth", "peer", "name", hub_end, "netns", net.hub_netns],
        ["ip", "-n", net.hub_netns, "link", "set", hub_end, "master", net.bridge],
        ["ip", "-n", net.hub_netns, "link", "set", hub_end, "up"],
        ["ip", "addr", "add", f"{ip}/{net.subnet.prefixlen}", "dev", root_end],
        ["ip", "link", "set", root_end, "up"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15)
        if done.returncode != 0:
            raise NetError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return ip


def netns_pids(host: Host) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True, timeout=15)
    return [int(p) for p in done.stdout.split()]


@dataclass
class SNMember:
    name: str
    host: Host
    proc: Proc | None = None
    starts: int = 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()


@dataclass
class ChaosSwarm(LocalSwarm):
    """A local swarm on network hosts. ``net`` must be open; ``sn_members`` etcd members (>= 1)."""

    net: SwarmNet | None = None
    sn_members: int = 3
    members: dict[str, SNMember] = field(default_factory=dict)
    site_hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.net is None:
            raise ValueError("ChaosSwarm needs net=SwarmNet(...)")
        if self.sn_members < 1:
            raise ValueError(f"sn_members={self.sn_members}: must be >= 1")

    # ------------------------------------------------------------------ placement

    def host(self, name: str) -> Host:
        """The host of a node or SN member (``node-3``, ``node-3-sl``, ``sn-2``)."""
        base = name.removesuffix("-sl").removesuffix("-ml")
        if base in self.members:
            return self.members[base].host
        return self.site_hosts[base]

    def launch(
        self, name: str, cmd: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None
    ) -> Proc:
        return spawn(name, self.host(name).wrap(cmd), log_path, env, cwd)

    def sl_listen(self, name: str) -> str:
        return f"0.0.0.0:{SL_PORT}"

    def sl_advertise_host(self, name: str) -> str:
        return self.host(name).ip

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Hosts, certificates naming their addresses, the data split."""
        assert self.net is not None
        for i in range(self.sn_members):
            name = f"sn-{i + 1}"
            self.members[name] = SNMember(name, self.net.add_host(name))
        for name in self.config.node_names():
            self.site_hosts[name] = self.net.add_host(name)
        super().prepare()
        for m in self.members.values():
            pki.issue_node_cert(self.ca_dir, self._sn_cert_dir(m.name), m.name, ORG, "sn", (m.host.ip,))
        for i, name in enumerate(self.config.node_names()):
            host = self.site_hosts[name]
            pki.issue_node_cert(
                self.ca_dir, self.nodes[name].cert_dir, name, f"org-{i + 1}", "sl", (host.ip,)
            )

    def _sn_cert_dir(self, name: str) -> Path:
        return self.run_dir / "pki" / name

    @property
    def all_sn_endpoints(self) -> list[str]:
        return [f"{m.host.ip}:{SN_CLIENT_PORT}" for m in self.members.values()]

    def start_sn(self) -> None:
        """The sentinel (``sn-1``, provisioning every identity), then each joiner in turn."""
        names = list(self.members)
        provision = [f"{n}:sn" for n in names[1:]] + [f"{ADMIN}:admin"] + [f"{n}:sl" for n in self.nodes]
        self.start_member(names[0], provision=provision, join=False)
        for name in names[1:]:
            self.start_member(name, join=True)
        self.sn_endpoints = self.all_sn_endpoints

    def start_member(self, name: str, *, provision: list[str] | None = None, join: bool = True) -> None:
        """Start (or restart) SN member ``name``; returns once it serves. A restart reuses its data
        directory (it comes back as the same member); a new joiner joins through the others."""
        m = self.members[name]
        m.starts += 1
        others = [e for e in self.all_sn_endpoints if not e.startswith(f"{m.host.ip}:")]
        cmd = [
            sys.executable, "-m", "swarmlearning.cli.swarmctl", "sn", "start",
            "--name", name,
            "--data-dir", str(self.run_dir / "sn" / name),
            "--peer-port", str(SN_PEER_PORT),
            "--client-port", str(SN_CLIENT_PORT),
            "--listen-host", m.host.ip,
            "--advertise-host", m.host.ip,
            "--cert-dir", str(self._sn_cert_dir(name)),
            "--start-timeout", str(SN_START_TIMEOUT),
        ]  # fmt: skip
        if join:
            cmd += ["--join", ",".join(others)]
        for p in provision or ():
            cmd += ["--provision", p]
        log_path = self.run_dir / "logs" / f"{name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"}
        m.proc = spawn(name, m.host.wrap(cmd), log_path, env)
        deadline = time.monotonic() + SN_START_TIMEOUT + 10
        while True:
            text = log_path.read_bytes()[offset:].decode(errors="replace")
            if f"SN node {name} " in text and ("joined" in text or "bootstrapped" in text):
                return
            if not m.proc.running():
                raise RunError(
                    f"SN member {name} exited ({m.proc.returncode}) while starting:\n{tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise RunError(
                    f"SN member {name} did not serve within {SN_START_TIMEOUT + 10:g}s:\n{tail(log_path)}"
                )
            time.sleep(0.2)

    # ------------------------------------------------------------------ faults on processes

    def kill_member(self, name: str) -> None:
        """SIGKILL everything on the member's host (the wrapper and etcd, its own process group)."""
        m = self.members[name]
        for pid in netns_pids(m.host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if m.proc is not None:
            m.proc.kill()

    def signal_member(self, name: str, sig: int) -> None:
        for pid in netns_pids(self.members[name].host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def close(self) -> None:
        super().close()
        for m in self.members.values():
            self.signal_member(m.name, signal.SIGCONT)
            if m.proc is not None and not m.proc.log_file.closed:
                m.proc.stop()
            # etcd runs in its own process group: whatever is left on the host goes too.
            for pid in netns_pids(m.host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


__all__ = ["ChaosSwarm", "Node", "SNMember", "attach_root", "netns_pids"]
