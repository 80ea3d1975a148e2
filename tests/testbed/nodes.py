"""Node backends: what makes Node objects exist and pods on them run.

The control plane asks each backend for the address the API server must serve on (``api_address``, before
the API server starts), hands it a ``NodeContext`` (``start``), waits until the backend's nodes are Ready,
and calls ``stop`` before it stops the processes ``start`` returned. ``KwokNodes`` (simulated nodes: pods
become Running with IPs, no containers run) and ``RealNode`` (realnode.py: kubelet, containerd, CNI
bridge, kube-proxy, CoreDNS, dynamic PVCs) are the backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.testbed.api import ApiClient
from tests.testbed.binaries import Binaries
from tests.testbed.pki import ClusterPki
from tests.testbed.processes import ManagedProcess

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeContext:
    """What a node backend gets from the control plane."""

    state_dir: Path  # the backend's own work directory
    log_dir: Path  # where every component's log goes (<name>.log)
    kubeconfig: Path  # credentials for the node agent
    api: ApiClient  # admin access, to create Node objects
    binaries: Binaries
    die_with_parent: bool  # child processes die with the Python process (tests) or outlive it (cluster-up)
    server: str = ""  # the API server's URL (https://ip:port)
    pki: ClusterPki | None = None  # the cluster CA (to issue node identities) and the other credentials
    service_cidr: str = ""  # the Service CIDR (kube-proxy, pod routes)


class NodeBackend(Protocol):
    """Starts the node agents and registers the nodes; the control plane waits for them to be Ready."""

    name: str

    def node_names(self) -> tuple[str, ...]: ...

    def api_address(self) -> str | None:
        """Called before the API server starts: prepare what the address needs (a bridge) and return the IP
        the API server must bind to and advertise, or None for 127.0.0.1."""
        ...

    def start(self, ctx: NodeContext) -> list[ManagedProcess]: ...

    def stop(self) -> None:
        """Called before the control plane stops the processes ``start`` returned (stopping them again is a
        no-op): stop in the backend's own order and remove what is not a process. Idempotent."""
        ...


@dataclass(frozen=True)
class FakeNodeSpec:
    """A simulated node.

    ``cpu`` in cores, ``memory`` a Kubernetes quantity, ``gpus`` whole ``nvidia.com/gpu`` devices,
    ``internal_ip`` the address shown in the node status (nothing listens there).
    """

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    gpus: int = 0
    internal_ip: str = "10.250.0.1"

    def manifest(self) -> dict[str, Any]:
        resources: dict[str, str] = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "100Gi",
        }
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
        }
        if self.gpus:
            resources[GPU_RESOURCE] = str(self.gpus)
            labels["nvidia.com/gpu.present"] = "true"
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            },
            # A Node keeps the status it is created with; kwok's node-initialize stage keeps these sizes, and
            # keeps the addresses only when both InternalIP and Hostname are given.
            "status": {
                "allocatable": resources,
                "capacity": resources,
                "addresses": [
                    {"type": "InternalIP", "address": self.internal_ip},
                    {"type": "Hostname", "address": self.name},
                ],
            },
        }


DEFAULT_FAKE_NODES = (
    FakeNodeSpec("kwok-node-0", internal_ip="10.250.0.1"),
    FakeNodeSpec("kwok-node-1", internal_ip="10.250.0.2"),
    FakeNodeSpec("kwok-gpu-node-0", gpus=2, internal_ip="10.250.0.3"),
)


class KwokNodes:
    """Simulated nodes: one kwok process manages every node annotated ``kwok.x-k8s.io/node=fake``."""

    name = "kwok"

    def __init__(self, nodes: tuple[FakeNodeSpec, ...] = DEFAULT_FAKE_NODES, pod_cidr: str = "10.244.0.0/16"):
        self.nodes = nodes
        self.pod_cidr = pod_cidr

    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def api_address(self) -> str | None:
        return None  # kwok talks to the API server on 127.0.0.1; nothing runs in a pod network

    def stop(self) -> None:
        pass  # kwok is one process; the control plane stops it

    def start(self, ctx: NodeContext) -> list[ManagedProcess]:
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        kwok = ManagedProcess(
            "kwok",
            [
                str(ctx.binaries.kwok),
                f"--kubeconfig={ctx.kubeconfig}",
                f"--config={ctx.binaries.kwok_stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
                f"--cidr={self.pod_cidr}",
                "--node-lease-duration-seconds=40",
            ],
            ctx.log_dir / "kwok.log",
            # kwok reads ~/.kwok/kwok.yaml when present: point its work dir into our state dir instead.
            env={"PATH": "/usr/bin:/bin", "HOME": str(ctx.state_dir), "KWOK_WORKDIR": str(ctx.state_dir)},
            die_with_parent=ctx.die_with_parent,
        )
        for node in self.nodes:
            ctx.api.create("/api/v1/nodes", node.manifest())
        return [kwok]
