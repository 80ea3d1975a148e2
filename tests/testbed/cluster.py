"""The handle tests get for a Kubernetes cluster (the `cluster` fixture): kubeconfig, kubectl, helm."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.binaries import Binaries, TestbedError
from tests.testbed.controlplane import ControlPlane, running_records


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster.

    ``bin_dir`` holds kubectl (the test bed's pinned build, or the kubectl found on PATH for an external
    cluster); ``helm_bin`` is the helm executable; ``helm_home`` (test bed only) keeps helm's config, cache
    and data out of the user's home; ``external`` is True for ``SWARM_TEST_EXISTING_CLUSTER=1``.
    """

    kubeconfig: Path
    bin_dir: Path
    helm_bin: Path
    helm_home: Path | None = None
    external: bool = False

    @classmethod
    def for_testbed(cls, kubeconfig: Path, binaries: Binaries, state_dir: Path) -> Cluster:
        return cls(
            kubeconfig=kubeconfig,
            bin_dir=binaries.kubectl.parent,
            helm_bin=binaries.helm,
            helm_home=state_dir / "helm",
        )

    @classmethod
    def from_environment(cls) -> Cluster:
        """The cluster in ``$KUBECONFIG``, kubectl and helm from PATH (helm falls back to the test bed's)."""
        kubeconfig = os.environ.get("KUBECONFIG", "")
        if not kubeconfig or os.pathsep in kubeconfig or not Path(kubeconfig).is_file():
            raise TestbedError(
                f"SWARM_TEST_EXISTING_CLUSTER=1 needs KUBECONFIG set to one existing file, got {kubeconfig!r}"
            )
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise TestbedError("SWARM_TEST_EXISTING_CLUSTER=1 needs kubectl on PATH")
        helm = shutil.which("helm") or str(Binaries.in_cache().helm)
        if not os.access(helm, os.X_OK):
            raise TestbedError(
                "SWARM_TEST_EXISTING_CLUSTER=1 needs helm on PATH (or `make testbed` builds the pinned one)"
            )
        return cls(
            kubeconfig=Path(kubeconfig), bin_dir=Path(kubectl).parent, helm_bin=Path(helm), external=True
        )

    @property
    def kubectl_bin(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, with kubectl's and helm's directories first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), str(self.helm_bin.parent), env.get("PATH", "")])
        if self.helm_home is not None:
            env["HELM_CONFIG_HOME"] = str(self.helm_home / "config")
            env["HELM_CACHE_HOME"] = str(self.helm_home / "cache")
            env["HELM_DATA_HOME"] = str(self.helm_home / "data")
        return env

    def _run(
        self, argv: list[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"timed out after {timeout:g} s: {shlex.join(argv)}") from e
        if check and result.returncode != 0:
            raise AssertionError(
                f"command failed with exit code {result.returncode}: {shlex.join(argv)}\n"
                f"stderr:\n{result.stderr.strip()}\nstdout:\n{result.stdout.strip()[-2000:]}"
            )
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; ``timeout`` in seconds. Raises AssertionError if check fails."""
        return self._run([str(self.kubectl_bin), *args], input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster; ``timeout`` in seconds. Raises AssertionError if check fails."""
        return self._run([str(self.helm_bin), *args], None, check, timeout)


STATE_DIR_PREFIX = "swarm-testbed-"
# Seconds after which an abandoned temporary state dir may be removed (a startup takes well under a minute).
STALE_STATE_AGE = 3600.0


def remove_stale_state_dirs() -> list[Path]:
    """Remove temporary state dirs of sessions that were SIGKILLed (teardown never ran; the kernel already
    killed their processes) once they are older than STALE_STATE_AGE and none of their processes runs."""
    removed = []
    for state_dir in Path(tempfile.gettempdir()).glob(f"{STATE_DIR_PREFIX}*"):
        try:
            age = time.time() - state_dir.stat().st_mtime
        except OSError:
            continue
        if age > STALE_STATE_AGE and not running_records(state_dir):
            shutil.rmtree(state_dir, ignore_errors=True)
            removed.append(state_dir)
    return removed


@contextlib.contextmanager
def testbed_cluster(*, keep_state: bool = False, timeout: float = 120.0) -> Iterator[Cluster]:
    """Start a fresh test-bed control plane in a temporary state dir; stop it and remove the dir on exit.

    ``keep_state`` keeps the dir (logs, etcd data) for debugging; ``timeout`` (s) bounds each startup wait.
    """
    remove_stale_state_dirs()
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX))
    plane = ControlPlane(state_dir)
    try:
        plane.start(timeout=timeout)
        yield Cluster.for_testbed(plane.kubeconfig, plane.binaries, state_dir)
    finally:
        plane.stop()
        if not keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)


testbed_cluster.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, when imported by tests
