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
