"""A real node for the test bed: kubelet + containerd + runc + a CNI bridge + kube-proxy, with CoreDNS and
local-path-provisioner (dynamic PVCs) as host processes. Pods run real containers from images imported
into containerd (images.py); nothing is pulled and no pod traffic leaves the machine.

One real node per machine (the bridge, iptables and the kubelet's cgroups are machine-wide). What it
changes outside its own directories is recorded in ``RUN_DIR/node.json`` before it is changed, so
``teardown()`` undoes it: after ``stop()``, after `make cluster-down`, and at the start of the next run when
a SIGKILL left things behind (containers keep running without containerd: their shims are detached).

Layout: ``RUN_DIR`` (tmpfs: containerd's socket and state, the record); the backend's state dir in the
test bed (kubelet root, configs, certs, PV data, pod logs); the containerd image store in
``containerd_root()`` (persistent: multi-GB images are imported once and reused by later runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.binaries import PAUSE_IMAGE, NodeBinaries, TestbedError
from tests.testbed.controlplane import write_kubeconfig
from tests.testbed.images import Ctr, ImageRef, import_image
from tests.testbed.nodes import NodeContext
from tests.testbed.pki import issue_cert
from tests.testbed.processes import ManagedProcess, ProcessRecord, free_ports, stop_group, wait_for

RUN_DIR = Path(os.environ.get("SWARM_REALNODE_RUN") or "/run/swarm-testbed-node")
RECORD = "node.json"
BRIDGE = "cni0"
CNI_NETWORK = "swarmtestbed"  # prefix of the CNI plugins' cache files (/var/lib/cni/results/<net>-...)
FIREWALL_COMMENT = "swarm-testbed-realnode"
DEFAULT_NODE_NAME = "swarm-realnode"
DEFAULT_BRIDGE_CIDR = "10.88.0.1/24"  # kwok's simulated pods use 10.244.0.0/16
CLUSTER_DOMAIN = "cluster.local"
# Written by the kubelet (vm.*, kernel.*), the bridge plugin (ip_forward) or kube-proxy; restored on teardown.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Paths the kubelet, containerd and the CNI plugins use whatever directories they are given.
HARD_CODED = ("/run/containerd", "/var/lib/cni", "/var/lib/kubelet", "/var/log/containers", "/var/log/pods")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES_TABLES = ("filter", "nat", "mangle")
# Seconds: containerd's socket answering, CoreDNS ready, processes dying after SIGKILL.
START_TIMEOUT = 60.0
KILL_TIMEOUT = 15.0
_MNT_DETACH = 2
UNIX_PATH_MAX = 107  # bytes of a unix socket path (sun_path is 108 with the terminating NUL)


def containerd_root() -> Path:
    """``$SWARM_CONTAINERD_ROOT``, default ``~/.cache/swarm-learning/containerd``: containerd's image
    store (content, snapshots, metadata), kept between runs."""
    return Path(os.environ.get("SWARM_CONTAINERD_ROOT") or Path.home() / ".cache/swarm-learning/containerd")


def _run(argv: list[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"timed out after {timeout:g} s: {' '.join(argv)}") from e
    if check and result.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    return result.stdout


def _read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _iptables_chains() -> list[list[str]]:
    """[family, table, chain] of every chain with one of CHAIN_PREFIXES, IPv4 and IPv6."""
    chains = []
    for family in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            out = _run([f"{family}-save", "-t", table], check=False)
            chains += [
                [family, table, line[1:].split()[0]]
                for line in out.splitlines()
                if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES)
            ]
    return chains


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


@dataclass(frozen=True)
class Baseline:
    """What the machine had before the first real node started (kept across a SIGKILLed run)."""

    existing_paths: list[str]
    netns: list[str]
    shim_entries: list[str]  # /run/containerd/{s,fifo}/* (another containerd may use them)
    chains: list[list[str]]
    sysctls: dict[str, str]

    @classmethod
    def take(cls) -> Baseline:
        return cls(
            existing_paths=[p for p in HARD_CODED if os.path.lexists(p)],
            netns=_listdir("/run/netns"),
            shim_entries=[
                f"{d}/{e}" for d in ("/run/containerd/s", "/run/containerd/fifo") for e in _listdir(d)
            ],
            chains=_iptables_chains(),
            sysctls={k: v for k in SYSCTLS if (v := _read_sysctl(k)) is not None},
        )


@dataclass
class NodeRecord:
    """``RUN_DIR/node.json``: written before each change so a later teardown finds everything."""

    baseline: Baseline
    bridge: str = ""
    containerd_socket: str = ""
    state_dirs: list[str] = field(default_factory=list)  # mounts under these are ours (kubelet root, ...)
    processes: list[ProcessRecord] = field(default_factory=list)

    def create(self, run_dir: Path) -> None:
        """Write the first record; TestbedError if one exists (another node started at the same time)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(run_dir / RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise TestbedError(f"another real node is starting ({run_dir / RECORD} appeared)") from e
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2))

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(run_dir / RECORD)

    @classmethod
    def load(cls, run_dir: Path) -> NodeRecord | None:
        path = run_dir / RECORD
        if not path.is_file():
            return None
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(
            baseline=Baseline(**raw["baseline"]),
            bridge=raw.get("bridge", ""),
            containerd_socket=raw.get("containerd_socket", ""),
            state_dirs=list(raw.get("state_dirs", [])),
            processes=[ProcessRecord(**p) for p in raw.get("processes", [])],
        )


class RealNode:
    """The real-node backend (see the module docstring). ``bridge_cidr`` is the bridge's address with the
    pod subnet's prefix; ``helper_image`` the image local-path-provisioner's helper pods run (needs sh,
    mkdir and rm: the project's base image); ``node_name`` is also the kubelet certificate's CN."""

    name = "realnode"

    def __init__(
        self,
        *,
        node_name: str = DEFAULT_NODE_NAME,
        bridge_cidr: str = DEFAULT_BRIDGE_CIDR,
        helper_image: ImageRef | None = None,
        binaries: NodeBinaries | None = None,
        run_dir: Path | None = None,
        store: Path | None = None,
    ) -> None:
        ip, sep, prefix = bridge_cidr.partition("/")
        if not sep or prefix != "24" or ip.count(".") != 3 or not ip.endswith(".1"):
            raise ValueError(f"bridge_cidr must be a.b.c.1/24 (the bridge's address), got {bridge_cidr!r}")
        self.node_name = node_name
        self.bridge_ip = ip
        self.subnet = ip.rsplit(".", 1)[0] + ".0/24"
        self.helper_image = helper_image
        self.binaries = binaries or NodeBinaries.in_cache()
        self.run_dir = run_dir or RUN_DIR
        self.store = store or containerd_root()
        self.socket = self.run_dir / "containerd.sock"
        self.ctr = Ctr(self.socket)
        self._record: NodeRecord | None = None
        self._procs: list[ManagedProcess] = []
        self.timings: dict[str, float] = {}  # seconds per startup phase, for reports

    def node_names(self) -> tuple[str, ...]:
        return (self.node_name,)

    # -- NodeBackend ---------------------------------------------------------------------------------

    def api_address(self) -> str | None:
        """Clean up what an earlier run left, record the baseline, create the bridge and the firewall rules;
        the API server then binds to the bridge address (pods reach it through the `kubernetes` Service)."""
        self.binaries.require()
        if os.geteuid() != 0:
            raise TestbedError("the real node needs root (bridge, iptables, mounts, cgroups)")
        started = time.monotonic()
        removed = reclaim(self.run_dir)
        if removed:
            print(f"real node: removed what an earlier run left: {', '.join(removed)}")
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            raise TestbedError(
                f"an interface {BRIDGE} exists that the test bed did not create; the real node needs it "
                f"(remove it with `ip link del {BRIDGE}` if nothing uses it)"
            )
        record = NodeRecord(baseline=Baseline.take(), bridge=BRIDGE, containerd_socket=str(self.socket))
        record.create(self.run_dir)
        self._record = record  # from here on this node owns the machine's real-node state
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_ip}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        # Pods talk to each other and to this machine only: nothing from the bridge is forwarded elsewhere,
        # nothing from elsewhere into it (ACCEPT first: a FORWARD policy DROP, as docker sets, would also
        # drop bridged pod-to-pod traffic that br_netfilter sends through iptables).
        for rule in _firewall_rules():
            _run(["iptables", "-I", "FORWARD", *rule])
        self.timings["bridge"] = time.monotonic() - started
        return self.bridge_ip

    def start(self, ctx: NodeContext) -> list[ManagedProcess]:
        if self._record is None:
            raise TestbedError("RealNode.start() needs api_address() first (the control plane calls it)")
        if ctx.pki is None or not ctx.server:
            raise TestbedError("RealNode needs the cluster CA and the API server URL in its NodeContext")
        state = ctx.state_dir
        longest = state / "kubelet/pod-resources/kubelet.sock"  # the kubelet's longest socket path
        if len(str(longest)) > UNIX_PATH_MAX:
            raise TestbedError(
                f"the state dir {state} is too long: the kubelet's socket {longest} would exceed the "
                f"{UNIX_PATH_MAX}-byte limit of a unix socket path (use a shorter TMPDIR)"
            )
        for sub in ("kubelet", "certs", "cni/net.d", "cni/ipam", "pod-logs", "local-path"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        self._record.state_dirs = [str(state), str(self.run_dir)]
        self._record.save(self.run_dir)

        started = time.monotonic()
        containerd = shutil.which("containerd", path="/usr/local/bin:/usr/bin:/usr/sbin")
        if containerd is None:
            raise TestbedError(
                "containerd is not installed: `make testbed` installs it (Debian package containerd)"
            )
        self._spawn("containerd", [containerd, f"--config={self._containerd_config(state)}"], ctx)
        self._wait_for_cri()
        if self._remove_containers():
            # containerd's CRI plugin still lists the removed sandboxes until it restarts.
            self._procs.pop().stop()
            self._spawn("containerd", [containerd, f"--config={state / 'containerd.toml'}"], ctx)
            self._wait_for_cri()
        self.timings["containerd"] = time.monotonic() - started
        started = time.monotonic()
        pause_id = self.binaries.pause_id.read_text().strip()
        import_image(self.ctr, ImageRef("pause", PAUSE_IMAGE, self.binaries.pause_archive, pause_id))
        self.timings["pause_import"] = time.monotonic() - started

        self._write_cni_config(state, ctx.service_cidr)
        certs = state / "certs"
        kubelet_client = issue_cert(
            ctx.pki.ca, certs, "kubelet-client", f"system:node:{self.node_name}", "system:nodes"
        )
        kubelet_serving = issue_cert(
            ctx.pki.ca,
            certs,
            "kubelet-serving",
            f"system:node:{self.node_name}",
            "system:nodes",
            server_names=(self.node_name,),
            server_ips=(self.bridge_ip,),
        )
        proxy_client = issue_cert(ctx.pki.ca, certs, "kube-proxy", "system:kube-proxy")
        ca = ctx.pki.ca.cert
        kubelet_kc = write_kubeconfig(
            state / "kubelet.kubeconfig", ctx.server, ca, kubelet_client, f"system:node:{self.node_name}"
        )
        proxy_kc = write_kubeconfig(
            state / "kube-proxy.kubeconfig", ctx.server, ca, proxy_client, "kube-proxy"
        )

        kubelet_port, kubelet_healthz, proxy_healthz, proxy_metrics, dns_health, dns_ready = free_ports(6)
        kubelet_config = self._kubelet_config(state, ca, kubelet_serving.cert, kubelet_serving.key)
        kubelet_config.update(port=kubelet_port, healthzPort=kubelet_healthz)
        (state / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config, sort_keys=False))
        self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={state / 'kubelet.yaml'}",
                f"--kubeconfig={kubelet_kc}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={self.bridge_ip}",
                f"--root-dir={state / 'kubelet'}",
                f"--cert-dir={certs}",
                "--v=1",
            ],
            ctx,
        )
        proxy_config = self._proxy_config(proxy_kc, proxy_healthz, proxy_metrics)
        (state / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_config, sort_keys=False))
        self._spawn(
            "kube-proxy", [str(self.binaries.kube_proxy), f"--config={state / 'kube-proxy.yaml'}"], ctx
        )

        corefile = state / "Corefile"
        corefile.write_text(self._corefile(ctx.kubeconfig, dns_health, dns_ready))
        self._spawn("coredns", [str(self.binaries.coredns), f"-conf={corefile}"], ctx)
        self._start_local_path(ctx)
        self._record.processes = [p.record() for p in self._procs]
        self._record.save(self.run_dir)
        # The control plane waits for the node to be Ready; names must resolve from then on.
        wait_for(
            f"CoreDNS ready on 127.0.0.1:{dns_ready} (it needs the API server's Services and EndpointSlices)",
            lambda: True if _http_status(f"http://127.0.0.1:{dns_ready}/ready") == 200 else None,
            timeout=START_TIMEOUT,
            watch=self._procs,
            log=ctx.log_dir / "coredns.log",
        )
        return list(self._procs)

    def stop(self) -> None:
        """Stop the node and undo what it changed (see ``teardown``). Idempotent."""
        live = {p.name: p for p in self._procs}
        self._procs = []
        # Only a node that got as far as writing its own record tears down: when api_address() found
        # another live node, the record on disk is that node's.
        if self._record is not None:
            teardown(self.run_dir, live=live, kube_proxy=self.binaries.kube_proxy)
        else:
            for proc in live.values():
                proc.stop()
        self._record = None

    # -- internals ---------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], ctx: NodeContext) -> ManagedProcess:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(ctx.state_dir),
        }
        proc = ManagedProcess(
            name, argv, ctx.log_dir / f"{name}.log", env=env, die_with_parent=ctx.die_with_parent
        )
        self._procs.append(proc)
        if self._record is not None:
            self._record.processes = [p.record() for p in self._procs]
            self._record.save(self.run_dir)
        return proc

    def _wait_for_cri(self) -> None:
        """Until containerd's CRI plugin answers (it initializes after the socket is up; the kubelet exits
        on "server is not initialized yet")."""
        wait_for(
            f"containerd's CRI service on {self.socket}",
            lambda: cri_version(self.socket),
            timeout=START_TIMEOUT,
            watch=self._procs,
        )

    def _remove_containers(self) -> list[str]:
        """Remove every container (and its task) an earlier run left in containerd's store."""
        return remove_all_containers(self.ctr)

    def _containerd_config(self, state: Path) -> Path:
        self.store.mkdir(parents=True, exist_ok=True)
        state_dir = self.run_dir / "containerd"
        config = f"""version = 2
root = "{self.store}"
state = "{state_dir}"
# The machine's own containerd (docker's) may use /run/containerd/containerd.sock: never touch it.
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.run_dir / "containerd-ttrpc.sock"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.store / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to lower its oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{state / "cni/net.d"}"
"""
        path = state / "containerd.toml"
        path.write_text(config)
        return path

    def _write_cni_config(self, state: Path, service_cidr: str) -> None:
        conf = {
            "cniVersion": "0.4.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Keep pod traffic on this machine: no NAT, no default route, only the Service CIDR.
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.bridge_ip}]],
                        "routes": [{"dst": service_cidr}],
                        "dataDir": str(state / "cni/ipam"),
                    },
                }
            ],
        }
        (state / "cni/net.d/10-swarmtestbed.conflist").write_text(json.dumps(conf, indent=2))

    def _kubelet_config(self, state: Path, ca: Path, cert: Path, key: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # the machines run cgroup v1 (1.34 only warns; later kubelets refuse)
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": self.bridge_ip,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(cert),
            "tlsPrivateKeyFile": str(key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [self.bridge_ip],  # CoreDNS runs on the host, bound to the bridge address
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",  # pods inherit no name servers of this machine: no query leaves it
            "podLogsDir": str(state / "pod-logs"),
            # Never garbage-collect images (a multi-GB image on a fuller disk); evict only when nearly full.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "maxPods": 110,
            "serializeImagePulls": False,
            "protectKernelDefaults": False,
            "staticPodPath": "",
        }

    def _proxy_config(self, kubeconfig: Path, healthz: int, metrics: int) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.node_name,
            "clusterCIDR": self.subnet,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            # NodePorts only on the bridge address, never on this machine's outside interfaces.
            "nodePortAddresses": [f"{self.bridge_ip}/32"],
            "iptables": {"localhostNodePorts": False},
            # Leave the machine's conntrack settings alone (setting them needs CAP_SYS_RESOURCE here).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }

    def _corefile(self, kubeconfig: Path, health: int, ready: int) -> str:
        # No `forward`: nothing outside to forward to; other names get SERVFAIL fast instead of a timeout.
        return f""".:53 {{
    bind {self.bridge_ip}
    errors
    log . {{
        class error
    }}
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} testbed
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""

    def _start_local_path(self, ctx: NodeContext) -> None:
        """local-path-provisioner as a host process; StorageClass `local-path` (the default class)."""
        ns = "local-path-storage"
        sa = "local-path-provisioner-service-account"
        api = ctx.api
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        api.create(
            f"/api/v1/namespaces/{ns}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
        )
        helper_image = self.helper_image.ref if self.helper_image else "swarmlearning/base:missing"
        helper_pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "helper-pod"},
            "spec": {
                "priorityClassName": "system-node-critical",
                "tolerations": [
                    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "containers": [{"name": "helper-pod", "image": helper_image, "imagePullPolicy": "Never"}],
            },
        }
        api.create(
            f"/api/v1/namespaces/{ns}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "local-path-config", "namespace": ns},
                # The helper pods mount these scripts from the ConfigMap.
                "data": {
                    "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                    "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                    "helperPod.yaml": yaml.safe_dump(helper_pod),
                },
            },
        )
        api.create(
            "/apis/storage.k8s.io/v1/storageclasses",
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": "local-path",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "rancher.io/local-path",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            },
        )
        state = ctx.state_dir
        # The provisioner only reads a config file whose name ends in .json.
        config = {
            "nodePathMap": [
                {"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(state / "local-path")]}
            ]
        }
        (state / "local-path.json").write_text(json.dumps(config))
        (state / "local-path-helper.yaml").write_text(yaml.safe_dump(helper_pod))
        self._spawn(
            "local-path-provisioner",
            [
                str(self.binaries.local_path_provisioner),
                "start",
                f"--kubeconfig={ctx.kubeconfig}",
                f"--config={state / 'local-path.json'}",
                f"--helper-pod-file={state / 'local-path-helper.yaml'}",
                f"--namespace={ns}",
                f"--service-account-name={sa}",
                f"--helper-image={helper_image}",
                "--provisioner-name=rancher.io/local-path",
            ],
            ctx,
        )


def cri_version(socket: Path) -> bytes:
    """The CRI RuntimeService/Version answer (raw protobuf) of the runtime at ``socket``; raises while the
    runtime is not ready. Raw bytes: no generated CRI stubs needed."""
    import grpc

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        version = channel.unary_unary(
            "/runtime.v1.RuntimeService/Version",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        return bytes(version(b"", timeout=2))


def _http_status(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=3) as resp:
        return int(resp.status)


def _firewall_rules() -> list[list[str]]:
    """The FORWARD rules, in the order they end up in (each is inserted at the top, so reversed here)."""
    comment = ["-m", "comment", "--comment", FIREWALL_COMMENT]
    return [
        ["!", "-i", BRIDGE, "-o", BRIDGE, *comment, "-j", "DROP"],
        ["-i", BRIDGE, "!", "-o", BRIDGE, *comment, "-j", "DROP"],
        ["-i", BRIDGE, "-o", BRIDGE, *comment, "-j", "ACCEPT"],
    ]


# -- teardown -------------------------------------------------------------------------------------------


def reclaim(run_dir: Path = RUN_DIR) -> list[str]:
    """Tear down what an earlier run left (a SIGKILLed session, a crashed `cluster-up`); return what was
    removed. TestbedError if that node still runs (another session or `make cluster-up` owns it)."""
    record = NodeRecord.load(run_dir)
    if record is None:
        return []
    alive = [r for r in record.processes if r.is_ours()]
    if alive:
        raise TestbedError(
            "a real test-bed node is already running ("
            + ", ".join(f"{r.name} pid {r.pid}" for r in alive)
            + "): stop it with `make cluster-down`, or end the test session that started it"
        )
    return teardown(run_dir)


def remove_all_containers(ctr: Ctr) -> list[str]:
    """Delete every container of the CRI namespace with its task (killed first); return their ids."""
    ids = ctr.run("containers", "ls", "-q").stdout.split()
    for cid in ids:
        ctr.run("tasks", "rm", "-f", cid, check=False)
        ctr.run("containers", "rm", cid, check=False)
    return ids


def _kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kubepods_dirs() -> list[Path]:
    """Every ``kubepods`` cgroup of the kubelet (cgroupfs driver), one per v1 hierarchy (and unified)."""
    seen, dirs = set(), []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        kubepods = hierarchy / "kubepods"
        real = kubepods.resolve()
        if kubepods.is_dir() and real not in seen:
            seen.add(real)
            dirs.append(kubepods)
    return dirs


def _cgroup_pids(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for top in dirs:
        # os.walk skips directories that vanish while it walks (containers ending); Path.rglob raises.
        for folder, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
    return pids


def _kill_pods() -> int:
    """SIGKILL every process in the kubepods cgroups until none is left; return how many were killed."""
    dirs = _kubepods_dirs()
    killed: set[int] = set()
    deadline = time.monotonic() + KILL_TIMEOUT
    while pids := _cgroup_pids(dirs):
        if time.monotonic() > deadline:
            raise TestbedError(
                f"processes {sorted(pids)} in the kubepods cgroups survived SIGKILL for {KILL_TIMEOUT:g} s"
            )
        _kill_pids(pids)
        killed |= pids
        time.sleep(0.1)
    return len(killed)


def _shim_pids(socket: str) -> set[int]:
    """containerd-shim processes started by our containerd (they detach and outlive it)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and b"containerd-shim" in argv[0] and socket.encode() in argv:
                    pids.add(int(entry.name))
    return pids


def _ours(ns: str, baseline: list[str]) -> bool:
    """A network namespace this node made: a pod's (the CNI plugins name them ``cni-<uuid>``) that was not
    there before. Namespaces of anything else on the machine (a chaos run's hosts) are left alone."""
    return ns.startswith("cni-") and ns not in baseline


def _our_mounts(prefixes: list[str], netns: list[str]) -> list[str]:
    """Mount points under ``prefixes`` or pod netns files not in ``netns`` (the baseline), deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040
        in_prefix = any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes)
        new_netns = point.startswith("/run/netns/") and _ours(point.rsplit("/", 1)[1], netns)
        if in_prefix or new_netns:
            points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _unmount_all(prefixes: list[str], netns: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    count = 0
    for _ in range(10):  # nested and stacked mounts come back after their parents are gone
        points = _our_mounts(prefixes, netns)
        if not points:
            return count
        for point in points:
            if libc.umount2(point.encode(), _MNT_DETACH) == 0:
                count += 1
    left = _our_mounts(prefixes, netns)
    if left:
        raise TestbedError(f"could not unmount {left[:10]}")
    return count


def _remove_chains(baseline: list[list[str]]) -> list[str]:
    """Remove the KUBE-*/CNI-* chains that were not there before and our FORWARD rules (v4 and v6); the
    jumps into those chains from the built-in chains first. One iptables-restore per table."""
    known = {tuple(c) for c in baseline}
    removed = []
    for family in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            dump = _run([f"{family}-save", "-t", table], check=False)
            ours = [
                c
                for line in dump.splitlines()
                if line.startswith(":")
                and (c := line[1:].split()[0]).startswith(CHAIN_PREFIXES)
                and (family, table, c) not in known
            ]
            script = []
            for line in dump.splitlines():
                if not line.startswith("-A "):
                    continue
                chain = line.split()[1]
                target = line.split(" -j ", 1)[1].split()[0] if " -j " in line else ""
                if chain in ours:
                    continue  # flushed below
                if target in ours or FIREWALL_COMMENT in line:
                    script.append("-D " + line[3:])
            script += [f"-F {c}" for c in ours] + [f"-X {c}" for c in ours]
            if script:
                _run(
                    [f"{family}-restore", "--noflush"], input=f"*{table}\n" + "\n".join(script) + "\nCOMMIT\n"
                )
                removed += [f"{family} {table} {c}" for c in ours]
    return removed


def _remove_cgroups() -> int:
    count = 0
    for top in _kubepods_dirs():
        for _ in range(20):  # a killed process leaves its cgroup a moment later
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
                    count += 1
            if not top.exists():
                break
            time.sleep(0.1)
        if top.exists():
            raise TestbedError(
                f"cannot remove the cgroup {top} (processes left: {sorted(_cgroup_pids([top]))})"
            )
    return count


def _remove_path(path: str) -> bool:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)
    return True


def _restore_sysctl(name: str, value: str) -> bool:
    (Path("/proc/sys") / name).write_text(value)
    return True


def _leftover_paths(baseline: Baseline) -> list[str]:
    """Files in the hard-coded places that the node created (the whole place when it did not exist)."""
    existing = set(baseline.existing_paths)
    paths = [p for p in HARD_CODED if p not in existing and os.path.lexists(p)]
    if "/run/containerd" in existing:  # another containerd's shims may live next to ours
        known = set(baseline.shim_entries)
        paths += [
            full
            for d in ("/run/containerd/s", "/run/containerd/fifo")
            for e in _listdir(d)
            if (full := f"{d}/{e}") not in known
        ]
    if "/var/lib/cni" in existing:
        paths += [
            f"/var/lib/cni/results/{e}"
            for e in _listdir("/var/lib/cni/results")
            if e.startswith(CNI_NETWORK + "-")
        ]
    return paths


def teardown(
    run_dir: Path = RUN_DIR,
    *,
    live: dict[str, ManagedProcess] | None = None,
    kube_proxy: Path | None = None,
) -> list[str]:
    """Undo everything the real node recorded in ``run_dir``: its processes (``live`` ones are stopped
    through their handles), pod processes, containers, shims, mounts, netns, iptables chains and rules,
    the bridge, the kubepods cgroups, sysctls, the hard-coded paths. Return what was removed. Each step
    runs even when an earlier one failed; the failures are raised together at the end (the record stays,
    so the next run tries again)."""
    record = NodeRecord.load(run_dir)
    live = dict(live or {})
    if record is None:
        for proc in live.values():
            proc.stop()
        return []
    done: list[str] = []
    errors: list[str] = []

    def step(what: str, action: Callable[[], int | bool]) -> None:
        try:
            result = action()
        except (TestbedError, OSError, subprocess.SubprocessError) as e:
            errors.append(f"{what}: {e}")
            return
        if result is True:
            done.append(what)
        elif result:
            done.append(f"{what} ({result})")

    def stop(name: str) -> bool:
        if name in live:
            live.pop(name).stop()
            return True
        alive = [r for r in record.processes if r.name == name and r.is_ours()]
        for r in alive:
            stop_group(r.pid, 10.0)
        return bool(alive)

    def containerd_running() -> bool:
        return "containerd" in live or any(r.name == "containerd" and r.is_ours() for r in record.processes)

    def remove_containers() -> int:
        return len(remove_all_containers(Ctr(Path(record.containerd_socket))))

    def kill_shims() -> int:
        pids = _shim_pids(record.containerd_socket)
        _kill_pids(pids)
        return len(pids)

    def proxy_cleanup() -> bool:
        # Removes kube-proxy's rules and chains (every mode); its complaints about other modes do not matter.
        _run([str(kube_proxy), "--cleanup"], check=False)
        return False

    for name in ("kubelet", "kube-proxy", "coredns", "local-path-provisioner"):
        step(f"stopped {name}", functools.partial(stop, name))
    step("killed pod processes", _kill_pods)
    if record.containerd_socket and containerd_running():
        step("removed containers", remove_containers)
    step("stopped containerd", lambda: stop("containerd"))
    for proc in live.values():  # anything else started through the backend
        proc.stop()
    if record.containerd_socket:
        step("killed shims", kill_shims)
    step("unmounted", lambda: _unmount_all(record.state_dirs, record.baseline.netns))
    for ns in _listdir("/run/netns"):
        if _ours(ns, record.baseline.netns):
            step(f"removed netns {ns}", functools.partial(_remove_path, f"/run/netns/{ns}"))
    kube_proxy = kube_proxy or NodeBinaries.in_cache().kube_proxy
    if kube_proxy.is_file():
        step("kube-proxy --cleanup", proxy_cleanup)
    step("removed iptables chains", lambda: len(_remove_chains(record.baseline.chains)))
    if record.bridge and Path(f"/sys/class/net/{record.bridge}").exists():
        step(f"deleted {record.bridge}", lambda: bool(_run(["ip", "link", "del", record.bridge]) or True))
    step("removed kubepods cgroups", _remove_cgroups)
    for name, value in record.baseline.sysctls.items():
        if _read_sysctl(name) != value:
            step(f"restored {name}={value}", functools.partial(_restore_sysctl, name, value))
    for path in _leftover_paths(record.baseline):
        step(f"removed {path}", functools.partial(_remove_path, path))
    if errors:
        raise TestbedError("real-node teardown left things behind:\n  " + "\n  ".join(errors))
    shutil.rmtree(run_dir, ignore_errors=True)
    return done


def runs_for_another(state_dir: Path, run_dir: Path = RUN_DIR) -> list[str]:
    """The state dirs of the recorded real node when it is alive and not under ``state_dir`` (another test
    bed's, e.g. a pytest session's beside `make cluster-down`); [] when it is this one's, dead or absent."""
    record = NodeRecord.load(run_dir)
    if record is None or not any(r.is_ours() for r in record.processes):
        return []
    mine = state_dir.resolve()
    if any(Path(d).resolve().is_relative_to(mine) for d in record.state_dirs):
        return []
    return record.state_dirs or [str(run_dir)]


def leftovers(bridge: str = BRIDGE) -> dict[str, list[str]]:
    """What of a real node exists on this machine now (for tests after teardown): processes of our
    binaries or shims, our mounts and netns, the bridge and veths, KUBE-/CNI- chains, kubepods cgroups."""
    binaries = NodeBinaries.in_cache()
    ours = {
        str(binaries.kubelet),
        str(binaries.kube_proxy),
        str(binaries.coredns),
        str(binaries.local_path_provisioner),
    }
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                exe = argv[0].decode(errors="replace")
                ours_containerd = argv[0].endswith(b"containerd") and any(
                    a.endswith(b"/realnode/containerd.toml") for a in argv
                )
                if exe in ours or ours_containerd or str(RUN_DIR).encode() in b" ".join(argv):
                    procs.append(f"{entry.name} {exe}")
    procs += [f"{pid} (in a kubepods cgroup)" for pid in sorted(_cgroup_pids(_kubepods_dirs()))]
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(RUN_DIR) in line.split()[4]
        or "/realnode/kubelet" in line.split()[4]
        or line.split()[4].startswith("/run/netns/cni-")
    ]
    links = [n for n in _listdir("/sys/class/net") if n == bridge or n.startswith("veth")]
    return {
        "processes": procs,
        "mounts": mounts,
        "netns": [n for n in _listdir("/run/netns") if n.startswith("cni-")],
        "links": links,
        "iptables": [" ".join(c) for c in _iptables_chains()]
        + [
            f"{fam} FORWARD rule"
            for fam in ("iptables", "ip6tables")
            if FIREWALL_COMMENT in _run([f"{fam}-save", "-t", "filter"], check=False)
        ],
        "cgroups": [str(d) for d in _kubepods_dirs()],
        "run_dir": [str(RUN_DIR)] if RUN_DIR.exists() else [],
    }
