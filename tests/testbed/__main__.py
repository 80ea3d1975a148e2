"""`python -m tests.testbed up|down|status`: a persistent test-bed cluster (make cluster-up).

``--nodes`` (default ``$SWARM_CLUSTER_NODES``, else ``kwok``; `make cluster-up` passes ``real`` unless
``NODES=`` says otherwise): ``real`` runs the real node (kubelet, containerd, CNI bridge, kube-proxy, CoreDNS,
dynamic PVCs) and imports the images of `make images` when they exist; ``kwok`` the three simulated nodes;
``both`` the real node plus the kwok nodes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tests.testbed import realnode
from tests.testbed.binaries import KUBERNETES_VERSION, Binaries, TestbedError
from tests.testbed.cluster import import_images, load_images_or_none
from tests.testbed.controlplane import ControlPlane, running_records, stop_recorded
from tests.testbed.images import ImageManifest
from tests.testbed.nodes import KwokNodes, NodeBackend

NODE_CHOICES = ("real", "kwok", "both")


def default_state_dir() -> Path:
    """``$SWARM_CLUSTER_STATE``, default ``~/.cache/swarm-learning/cluster``."""
    return Path(os.environ.get("SWARM_CLUSTER_STATE") or Path.home() / ".cache/swarm-learning/cluster")


def _usage(state_dir: Path) -> str:
    bins = Binaries.in_cache()
    kubeconfig = state_dir / "admin.kubeconfig"
    return (
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  export PATH={bins.kubectl.parent}:{bins.helm.parent}:$PATH   # pinned kubectl and helm\n"
        f"  kubectl get nodes                # {realnode.DEFAULT_NODE_NAME} (real) and/or 3 kwok nodes\n"
        "  make test-cluster                # the cluster tests against this cluster\n"
        f"Logs: {state_dir / 'logs'}/   Stop: make cluster-down"
    )


def up(state_dir: Path, nodes: str = "real") -> int:
    if running_records(state_dir):
        print(f"The test-bed cluster in {state_dir} is already running.")
        print(_usage(state_dir))
        return 0
    stop_recorded(state_dir)  # leftovers of a half-dead cluster
    shutil.rmtree(state_dir, ignore_errors=True)  # every `up` starts from a fresh etcd and CA
    images: ImageManifest | None = None
    backends: list[NodeBackend] = []
    node: realnode.RealNode | None = None
    if nodes in ("real", "both"):
        images = load_images_or_none()
        node = realnode.RealNode(helper_image=images.images.get("base") if images else None)
        backends.append(node)
    if nodes in ("kwok", "both"):
        backends.append(KwokNodes())
    plane = ControlPlane(state_dir, nodes=backends, die_with_parent=False)
    names = ", ".join(b.name for b in backends)
    print(
        f">>> Starting Kubernetes {KUBERNETES_VERSION} "
        f"(etcd, apiserver, controller-manager, scheduler; {names})"
    )
    plane.start()
    print(f"The test-bed cluster is up ({plane.startup_seconds:.1f} s), API server {plane.server}")
    if node is not None and images is None:
        print(
            f"No images manifest ({ImageManifest.default_path()}): run `make images`, then "
            "`make cluster-down` and `make cluster-up`; "
            "until then pods have no images and PVCs do not provision (the helper pod uses the base image)."
        )
    elif node is not None and images is not None:
        try:
            for result in import_images(node, images):
                state = "imported" if result.imported else "already present"
                print(f"  image {result.ref}: {state} ({result.seconds:.1f} s)")
        except TestbedError as e:  # the cluster runs; say so, and what to fix
            print(f"error: the cluster runs, but its images are incomplete: {e}", file=sys.stderr)
            print(_usage(state_dir))
            return 1
    print(_usage(state_dir))
    return 0


def down(state_dir: Path) -> int:
    # The real node first: it stops its own processes in its own order and removes mounts, iptables chains,
    # the bridge and cgroups, which stopping the processes alone would leave behind. A live real node of
    # another test bed (a test session's) is not this cluster's to stop.
    others = realnode.runs_for_another(state_dir)
    if others:
        print(f"Real node of another test bed left running (state {', '.join(others)}).")
    removed = [] if others else realnode.teardown()
    stopped = stop_recorded(state_dir)
    if removed:
        print(f"Real node: {'; '.join(removed)}.")
    if stopped:
        print(f"Stopped {', '.join(stopped)}.")
    elif not removed:
        print(f"No test-bed cluster is running in {state_dir}.")
    return 0


def status(state_dir: Path) -> int:
    records = running_records(state_dir)
    for r in records:
        print(f"{r.name:<24} pid {r.pid}")
    if not records:
        print(f"No test-bed cluster is running in {state_dir}.")
    return 0 if records else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--nodes",
        choices=NODE_CHOICES,
        default=os.environ.get("SWARM_CLUSTER_NODES") or "kwok",
        help="node backends for `up`: the real node, the kwok nodes, or both (default: %(default)s, "
        "or $SWARM_CLUSTER_NODES)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the cluster keeps its PKI, etcd data, logs and PIDs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.nodes not in NODE_CHOICES:  # a default from the environment escapes argparse's check
        parser.error(f"SWARM_CLUSTER_NODES must be one of {', '.join(NODE_CHOICES)}, got {args.nodes!r}")
    try:
        if args.command == "up":
            return up(args.state_dir, args.nodes)
        return {"down": down, "status": status}[args.command](args.state_dir)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
