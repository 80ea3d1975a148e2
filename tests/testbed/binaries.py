"""Where `make testbed` (tests/testbed/build.sh) puts the pinned binaries, and checks that they are there."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Same pins as tests/testbed/build.sh.
KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "3.6.4"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
COREDNS_VERSION = "v1.15.0"
LOCALPATH_VERSION = "v0.0.30"
PAUSE_VERSION = "1"
PAUSE_IMAGE = f"swarmlearning/pause:testbed-{PAUSE_VERSION}"


class TestbedError(RuntimeError):
    """The test bed cannot be built, started or reached; the message says what and how to fix it."""

    __test__ = False  # not a pytest test class despite the name


def cache_root() -> Path:
    """``$SWARM_TESTBED_CACHE``, default ``~/.cache/swarm-learning/testbed`` (outside the repo)."""
    return Path(os.environ.get("SWARM_TESTBED_CACHE") or Path.home() / ".cache/swarm-learning/testbed")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every test-bed executable (and kwok's stage config)."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwok_stages: Path
    helm: Path

    @classmethod
    def in_cache(cls, root: Path | None = None) -> Binaries:
        root = root or cache_root()
        k8s = root / f"k8s-{KUBERNETES_VERSION}/bin"
        return cls(
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            etcd=k8s / "etcd",
            kwok=root / f"kwok-{KWOK_VERSION}/bin/kwok",
            kwok_stages=root / f"kwok-{KWOK_VERSION}/stages.yaml",
            helm=root / f"helm-{HELM_VERSION}/bin/helm",
        )

    def missing(self) -> list[Path]:
        """Paths that do not exist (or, for programs, are not executable)."""
        return [
            p
            for p in vars(self).values()
            if not (p.is_file() and (p == self.kwok_stages or os.access(p, os.X_OK)))
        ]

    def require(self) -> Binaries:
        """Return self, or raise TestbedError naming the missing files and the command that builds them."""
        missing = self.missing()
        if missing:
            listing = "\n  ".join(str(p) for p in missing)
            raise TestbedError(
                f"test-bed binaries are missing:\n  {listing}\n"
                "Build them with `make testbed` (tests/testbed/build.sh; cold build ~10-20 min on 2 cores)."
            )
        return self


@dataclass(frozen=True)
class NodeBinaries:
    """What the real node (realnode.py) runs besides the Debian packages: kubelet and kube-proxy (built with
    the control plane), CoreDNS, local-path-provisioner, and the pause image archive (containerd's sandbox
    image) with its image id."""

    kubelet: Path
    kube_proxy: Path
    coredns: Path
    local_path_provisioner: Path
    pause_archive: Path
    pause_id: Path

    @classmethod
    def in_cache(cls, root: Path | None = None) -> NodeBinaries:
        root = root or cache_root()
        k8s = root / f"k8s-{KUBERNETES_VERSION}/bin"
        pause = root / f"pause-{PAUSE_VERSION}"
        return cls(
            kubelet=k8s / "kubelet",
            kube_proxy=k8s / "kube-proxy",
            coredns=root / f"coredns-{COREDNS_VERSION}/bin/coredns",
            local_path_provisioner=root / f"localpath-{LOCALPATH_VERSION}/bin/local-path-provisioner",
            pause_archive=pause / "pause.tar",
            pause_id=pause / "id",
        )

    def require(self) -> NodeBinaries:
        """Return self, or raise TestbedError naming the missing files and the command that builds them."""
        data = (self.pause_archive, self.pause_id)
        missing = [
            p for p in vars(self).values() if not p.is_file() or (p not in data and not os.access(p, os.X_OK))
        ]
        if missing:
            listing = "\n  ".join(str(p) for p in missing)
            raise TestbedError(
                f"real-node binaries are missing:\n  {listing}\n"
                "Build them with `make testbed` (tests/testbed/build.sh)."
            )
        return self
