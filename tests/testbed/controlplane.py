"""A real Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and node
backends (kwok by default; a real node, realnode.py), each process a child in its own process group.

Everything listens on 127.0.0.1, except the API server with a real node: it binds to and advertises the
node's bridge address, so pods reach it through the ``kubernetes`` Service.

Layout of ``state_dir``: ``pki/`` (CA, certs, service-account key), ``etcd/`` (data), ``logs/<name>.log``,
``*.kubeconfig`` (``admin.kubeconfig`` is the one for users), ``state.json`` (PIDs, for ``down``).
"""

from __future__ import annotations

import atexit
import base64
import json
import ssl
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from tests.testbed.api import ApiClient
from tests.testbed.binaries import Binaries
from tests.testbed.nodes import KwokNodes, NodeBackend, NodeContext
from tests.testbed.pki import FRONT_PROXY_CLIENT, CertPair, ClusterPki, create_pki
from tests.testbed.processes import ManagedProcess, ProcessRecord, free_ports, stop_group, wait_for

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
STATE_FILE = "state.json"
# Seconds kube-apiserver gets after SIGTERM: on shutdown it waits up to 20 s to remove its own address from
# the `kubernetes` Service's endpoints (a real node), which is pointless for a throw-away cluster.
APISERVER_GRACE = 3.0


def write_kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """A self-contained kubeconfig (certificates embedded), context ``testbed``."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "testbed", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)},
            }
        ],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": user}}],
        "current-context": "testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool | None:
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:
        return True if resp.status == 200 else None


class ControlPlane:
    """Start with ``start()``, stop with ``stop()`` (idempotent; also registered with atexit).

    ``die_with_parent=True`` (tests): children are SIGKILLed by the kernel if this Python process dies.
    ``die_with_parent=False`` (``make cluster-up``): children outlive it; ``stop_recorded`` stops them later.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        binaries: Binaries | None = None,
        nodes: NodeBackend | Sequence[NodeBackend] | None = None,
        die_with_parent: bool = True,
        audit_log: bool = False,
    ) -> None:
        """``nodes``: one backend or several (started in order; at most one may ask for an API address),
        default ``KwokNodes()``. ``audit_log``: the API server writes an audit log (level Metadata, one
        JSON line per request when it completes: user, user agent, verb, URI) to ``audit_log_path``."""
        self.state_dir = state_dir
        self.binaries = binaries or Binaries.in_cache()
        if nodes is None:
            nodes = [KwokNodes()]
        self.backends: list[NodeBackend] = [nodes] if not isinstance(nodes, Sequence) else list(nodes)
        if not self.backends:
            raise ValueError("nodes: give at least one node backend")
        self.nodes: NodeBackend = self.backends[0]  # the first backend (compatibility with one backend)
        self.api_ip = "127.0.0.1"  # where the API server listens (a real node's bridge address with one)
        self.die_with_parent = die_with_parent
        self.audit_log = audit_log
        self.audit_log_path = state_dir / "logs" / "audit.log"
        self.log_dir = state_dir / "logs"
        self.kubeconfig = state_dir / "admin.kubeconfig"
        self.server = ""
        self.processes: list[ManagedProcess] = []
        self._prepared: list[NodeBackend] = []  # backends to stop()
        self.startup_seconds = 0.0  # wall time of the last start(), for reports

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start every component and wait until the cluster can run pods; ``timeout`` (s) bounds each wait.

        On failure everything already started is stopped and TestbedError says what did not come up.
        """
        self.binaries.require()
        if self.die_with_parent:
            atexit.register(self.stop)  # also on a normal interpreter exit after an unhandled error
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop components in reverse start order (node backends first, etcd last)."""
        while self._prepared:
            self._prepared.pop().stop()
        while self.processes:
            proc = self.processes.pop()
            proc.stop(APISERVER_GRACE if proc.name == "kube-apiserver" else 10.0)

    def records(self) -> list[ProcessRecord]:
        return [p.record() for p in self.processes]

    # -- internals ---------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.log_dir / f"{name}.log", die_with_parent=self.die_with_parent)
        self.processes.append(proc)
        return proc

    def _start(self, timeout: float) -> None:
        started = time.monotonic()
        for sub in ("logs", "apiserver", "controller-manager", "scheduler"):  # etcd creates its dir 0700
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        addresses = []
        for backend in self.backends:
            self._prepared.append(backend)
            address = backend.api_address()
            if address is not None:
                addresses.append(address)
        if len(addresses) > 1:
            raise ValueError(f"nodes: at most one backend may set the API server's address, got {addresses}")
        self.api_ip = addresses[0] if addresses else "127.0.0.1"
        extra_ips = (self.api_ip,) if addresses else ()
        pki = create_pki(self.state_dir / "pki", service_ip=SERVICE_IP, extra_ips=extra_ips)
        etcd_port, peer_port, api_port, kcm_port, sched_port = free_ports(5)
        self.server = f"https://{self.api_ip}:{api_port}"
        write_kubeconfig(self.kubeconfig, self.server, pki.ca.cert, pki.admin, "admin")
        kcm_kubeconfig = write_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.controller_manager,
            "system:kube-controller-manager",
        )
        sched_kubeconfig = write_kubeconfig(
            self.state_dir / "scheduler.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.scheduler,
            "system:kube-scheduler",
        )
        node_kubeconfig = write_kubeconfig(
            self.state_dir / "node-agent.kubeconfig", self.server, pki.ca.cert, pki.node_agent, "node-agent"
        )

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = self._spawn("etcd", self._etcd_argv(etcd_url, f"http://127.0.0.1:{peer_port}"))
        wait_for(
            f"etcd health at {etcd_url}/health",
            lambda: _http_ok(f"{etcd_url}/health"),
            timeout=timeout,
            watch=[etcd],
        )

        apiserver = self._spawn("kube-apiserver", self._apiserver_argv(pki, etcd_url, api_port))
        api = ApiClient(self.server, pki.ca, pki.admin)
        wait_for(
            f"kube-apiserver {self.server}/readyz to answer ok",
            lambda: True if api.get("/readyz") == "ok" else None,
            timeout=timeout,
            watch=[etcd, apiserver],
        )

        kcm = self._spawn(
            "kube-controller-manager", self._controller_manager_argv(pki, kcm_kubeconfig, kcm_port)
        )
        sched = self._spawn("kube-scheduler", self._scheduler_argv(sched_kubeconfig, sched_port))
        node_procs: list[ManagedProcess] = []
        for backend in self.backends:
            ctx = NodeContext(
                state_dir=self.state_dir / backend.name,
                log_dir=self.log_dir,
                kubeconfig=node_kubeconfig,
                api=api,
                binaries=self.binaries,
                die_with_parent=self.die_with_parent,
                server=self.server,
                pki=pki,
                service_cidr=SERVICE_CIDR,
            )
            started_procs = backend.start(ctx)
            self.processes.extend(started_procs)
            node_procs.extend(started_procs)
        core = [etcd, apiserver, kcm, sched]

        # The components' own serving certs are self-signed; /healthz is all we read from them.
        insecure = ssl._create_unverified_context()
        wait_for(
            f"kube-scheduler /healthz on 127.0.0.1:{sched_port}",
            lambda: _http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure),
            timeout=timeout,
            watch=[*core, *node_procs],
            log=sched.log,
        )
        names = tuple(n for b in self.backends for n in b.node_names())
        wait_for(
            f"nodes {', '.join(names)} to be Ready ({', '.join(b.name for b in self.backends)} backend)",
            lambda: True if self._ready_nodes(api) >= set(names) else None,
            timeout=timeout,
            watch=[*core, *node_procs],
            log=node_procs[0].log if node_procs else None,
        )
        # Created by kube-controller-manager's serviceaccount controller; pods are rejected until it exists.
        wait_for(
            "service account default/default (created by kube-controller-manager)",
            lambda: api.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=timeout,
            watch=[*core, *node_procs],
            log=kcm.log,
        )
        self.startup_seconds = time.monotonic() - started
        self._save_state()

    @staticmethod
    def _ready_nodes(api: ApiClient) -> set[str]:
        ready = set()
        for node in api.get("/api/v1/nodes")["items"]:
            for cond in node.get("status", {}).get("conditions") or []:
                if cond.get("type") == "Ready" and cond.get("status") == "True":
                    ready.add(node["metadata"]["name"])
        return ready

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "server": self.server,
            "backends": [b.name for b in self.backends],
            "kubeconfig": str(self.kubeconfig),
            "processes": [asdict(r) for r in self.records()],
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _etcd_argv(self, client_url: str, peer_url: str) -> list[str]:
        return [
            str(self.binaries.etcd),
            "--name=testbed",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}",
            "--initial-cluster-state=new",
            # Throw-away data: skipping fsync makes the control plane much faster on slow disks.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(self, pki: ClusterPki, etcd_url: str, port: int) -> list[str]:
        if self.api_ip == "127.0.0.1":
            # The `kubernetes` Service cannot point at 127.0.0.1 (Endpoints reject loopback addresses) and
            # nothing runs inside the cluster network, so it gets no endpoints instead of failing every 10 s.
            network = ["--endpoint-reconciler-type=none"]
        else:
            # A real node: the default (lease) reconciler makes the bridge address the `kubernetes`
            # Service's endpoint; logs/exec reach the kubelet by its InternalIP (a node name may not resolve).
            network = ["--kubelet-preferred-address-types=InternalIP,Hostname"]
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.api_ip}",
            f"--advertise-address={self.api_ip}",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'apiserver'}",
            f"--tls-cert-file={pki.apiserver.cert}",
            f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Aggregation layer, as in a kubeadm cluster (controllers read this CA for delegated authn).
            f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
            f"--proxy-client-key-file={pki.front_proxy_client.key}",
            *network,
            *self._audit_argv(),
            "--allow-privileged=true",
            "--profiling=false",
        ]

    def _audit_argv(self) -> list[str]:
        if not self.audit_log:
            return []
        policy = self.state_dir / "audit-policy.yaml"
        # One event per request, at ResponseComplete (a watch: when it ends), without bodies.
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived", "ResponseStarted"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log_path}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",  # never rotate: readers take byte offsets of one file
        ]

    def _controller_manager_argv(self, pki: ClusterPki, kubeconfig: Path, port: int) -> list[str]:
        return [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'controller-manager'}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.service_account_key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # "*" = every default controller, among them garbage-collector and serviceaccount-token.
            "--controllers=*",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _scheduler_argv(self, kubeconfig: Path, port: int) -> list[str]:
        return [
            str(self.binaries.kube_scheduler),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.state_dir / 'scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
        ]


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The ``state.json`` of a cluster started with ``die_with_parent=False``, or None."""
    path = state_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def running_records(state_dir: Path) -> list[ProcessRecord]:
    """Recorded processes that still run (same PID, same executable)."""
    state = read_state(state_dir) or {"processes": []}
    return [r for r in (ProcessRecord(**p) for p in state["processes"]) if r.is_ours()]


def stop_recorded(state_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop the processes recorded in ``state_dir`` (reverse start order); return the names stopped."""
    stopped = []
    for record in reversed(running_records(state_dir)):
        stop_group(record.pid, min(grace, APISERVER_GRACE) if record.name == "kube-apiserver" else grace)
        stopped.append(record.name)
    return stopped
