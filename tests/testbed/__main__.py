"""`python -m tests.testbed up|down|status`: a persistent test-bed cluster (make cluster-up)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tests.testbed.binaries import KUBERNETES_VERSION, Binaries, TestbedError
from tests.testbed.controlplane import ControlPlane, running_records, stop_recorded


def default_state_dir() -> Path:
    """``$SWARM_CLUSTER_STATE``, default ``~/.cache/swarm-learning/cluster``."""
    return Path(os.environ.get("SWARM_CLUSTER_STATE") or Path.home() / ".cache/swarm-learning/cluster")


def _usage(state_dir: Path) -> str:
    bins = Binaries.in_cache()
    kubeconfig = state_dir / "admin.kubeconfig"
    return (
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  export PATH={bins.kubectl.parent}:{bins.helm.parent}:$PATH   # pinned kubectl and helm\n"
        "  kubectl get nodes                # 3 simulated (kwok) nodes, one with nvidia.com/gpu\n"
        "  make test-cluster                # the cluster tests against this cluster\n"
        f"Logs: {state_dir / 'logs'}/   Stop: make cluster-down"
    )


def up(state_dir: Path) -> int:
    if running_records(state_dir):
        print(f"The test-bed cluster in {state_dir} is already running.")
        print(_usage(state_dir))
        return 0
    stop_recorded(state_dir)  # leftovers of a half-dead cluster
    shutil.rmtree(state_dir, ignore_errors=True)  # every `up` starts from a fresh etcd and CA
    plane = ControlPlane(state_dir, die_with_parent=False)
    print(
        f">>> Starting Kubernetes {KUBERNETES_VERSION} (etcd, apiserver, controller-manager, scheduler, kwok)"
    )
    plane.start()
    print(f"The test-bed cluster is up ({plane.startup_seconds:.1f} s), API server {plane.server}")
    print(_usage(state_dir))
    return 0


def down(state_dir: Path) -> int:
    stopped = stop_recorded(state_dir)
    print(f"Stopped {', '.join(stopped)}." if stopped else f"No test-bed cluster is running in {state_dir}.")
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
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the cluster keeps its PKI, etcd data, logs and PIDs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status}[args.command](args.state_dir)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
