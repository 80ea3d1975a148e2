"""The handle tests get for a Kubernetes cluster (the `cluster` fixture): kubeconfig, kubectl, helm; and
``RealNodeCluster`` (the e2e `real_cluster` fixture): the same plus the real node's address, images and
pod helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed.binaries import Binaries, TestbedError
from tests.testbed.controlplane import ControlPlane, running_records
from tests.testbed.images import Ctr, ImageManifest, ImportResult, import_manifest
from tests.testbed.nodes import KwokNodes, NodeBackend
from tests.testbed.processes import log_tail
from tests.testbed.realnode import RealNode, reclaim


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

    def kubectl_shown(self, *args: str, tail: int = 4000) -> str:
        """``$ kubectl <args>`` and the last ``tail`` characters of what it printed (failing or not), for
        the diagnostics of a failed test."""
        got = self.kubectl(*args, check=False)
        return f"$ kubectl {' '.join(args)}\n{(got.stdout + got.stderr)[-tail:]}"

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster; ``timeout`` in seconds. Raises AssertionError if check fails."""
        return self._run([str(self.helm_bin), *args], None, check, timeout)


@dataclass(frozen=True)
class RealNodeCluster(Cluster):
    """A test-bed cluster whose pods run on a real node: ``node_name``, ``host_ip`` (the bridge address:
    the API server, CoreDNS and the node's kubelet listen there; pods reach it), ``images`` (the manifest
    whose images were imported, None when none was), ``timings`` (seconds per startup phase)."""

    node_name: str = ""
    host_ip: str = ""
    images: ImageManifest | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def image(self, name: str) -> str:
        """The ref of image ``name`` (base, operator, sn, sl, ml) for a pod spec; TestbedError naming
        `make images` when it was not built."""
        if self.images is None:
            raise TestbedError(
                f"no images manifest was found, so image {name!r} is missing: run `make images`"
            )
        return self.images.get(name).ref

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The pod object (kubectl get -o json)."""
        return dict(json.loads(self.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout))

    def wait_for_pod(
        self,
        namespace: str,
        name: str,
        phases: tuple[str, ...] = ("Succeeded", "Failed"),
        timeout: float = 120,
    ) -> dict[str, Any]:
        """Poll until the pod's phase is one of ``phases``; return the pod; AssertionError naming the pod,
        the phases and its last status after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pod: dict[str, Any] = {}
        while time.monotonic() < deadline:
            got = self.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
            if got.returncode == 0:
                pod = json.loads(got.stdout)
                if pod.get("status", {}).get("phase") in phases:
                    return pod
            time.sleep(0.5)
        raise AssertionError(
            f"pod {namespace}/{name} did not reach {'/'.join(phases)} within {timeout:g} s; "
            f"last status: {json.dumps(pod.get('status', {}))[:1500]}\n{self.diagnose(namespace, name)}"
        )

    def diagnose(self, namespace: str, pod: str | None = None) -> str:
        """What a person would look at when pods do not start: objects, the pod's description, events and
        the node's logs (kubelet, containerd, local-path-provisioner)."""
        commands: list[tuple[str, ...]] = [("get", "pods,pvc,pv,nodes", "-A", "-o", "wide")]
        if pod:
            commands.append(("describe", "pod", pod, "-n", namespace))
        commands.append(("get", "events", "-A", "--sort-by=.lastTimestamp"))
        parts = [self.kubectl_shown(*args) for args in commands]
        logs = self.kubeconfig.parent / "logs"
        for name in ("kubelet", "containerd", "local-path-provisioner"):
            parts.append(f"--- {name}.log\n{log_tail(logs / f'{name}.log', lines=30)}")
        return "\n".join(parts)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """The pod's (or one container's) log, as the kubelet serves it."""
        args = ["logs", name, "-n", namespace] + ([f"--container={container}"] if container else [])
        return self.kubectl(*args).stdout

    @staticmethod
    def exit_code(pod: dict[str, Any], container: str | None = None) -> int | None:
        """The terminated exit code of ``container`` (default: the first), None while it has none."""
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if container in (None, status["name"]):
                terminated = (status.get("state") or {}).get("terminated")
                return int(terminated["exitCode"]) if terminated else None
        return None


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
def _started_plane(
    nodes: list[NodeBackend] | None, keep_state: bool, timeout: float
) -> Iterator[ControlPlane]:
    """A control plane with ``nodes`` started in a fresh temporary state dir; stopped and the dir removed
    on exit (unless ``keep_state``), also when the teardown reports leftovers."""
    remove_stale_state_dirs()
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix=STATE_DIR_PREFIX)), nodes=nodes)
    try:
        plane.start(timeout=timeout)
        yield plane
    finally:
        try:
            plane.stop()
        finally:
            if not keep_state:
                shutil.rmtree(plane.state_dir, ignore_errors=True)


@contextlib.contextmanager
def testbed_cluster(
    *, keep_state: bool = False, timeout: float = 120.0, nodes: list[NodeBackend] | None = None
) -> Iterator[Cluster]:
    """Start a fresh test-bed control plane in a temporary state dir; stop it and remove the dir on exit.

    ``keep_state`` keeps the dir (logs, etcd data) for debugging; ``timeout`` (s) bounds each startup wait;
    ``nodes`` are the node backends (default: the kwok nodes).
    """
    with _started_plane(nodes, keep_state, timeout) as plane:
        yield Cluster.for_testbed(plane.kubeconfig, plane.binaries, plane.state_dir)


testbed_cluster.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, when imported by tests


def load_images_or_none() -> ImageManifest | None:
    """The images manifest, or None when `make images` has not written one (other errors propagate)."""
    try:
        return ImageManifest.load()
    except TestbedError:
        if not ImageManifest.default_path().is_file():
            return None
        raise


def import_images(node: RealNode, manifest: ImageManifest) -> list[ImportResult]:
    """Import the manifest's images into the running real node's containerd (skips ones already there)."""
    return import_manifest(Ctr(node.socket), manifest)


@contextlib.contextmanager
def realnode_cluster(
    *,
    images: ImageManifest | None,
    with_kwok: bool = False,
    keep_state: bool = False,
    timeout: float = 180.0,
) -> Iterator[RealNodeCluster]:
    """A fresh control plane with the real node (plus the kwok nodes when ``with_kwok``), ``images``
    imported into its containerd (its base image also serves local-path-provisioner's helper pods);
    everything stopped and removed on exit. ``timeout`` (s) bounds each startup wait."""
    node = RealNode(helper_image=images.images.get("base") if images else None)
    backends: list[NodeBackend] = [node, KwokNodes()] if with_kwok else [node]
    removed = reclaim()  # before stale state dirs go: a SIGKILLed node may still have mounts in one
    if removed:
        print(f"real node: removed what an earlier run left: {', '.join(removed)}")
    with _started_plane(backends, keep_state, timeout) as plane:
        timings = dict(node.timings, control_plane_and_node=plane.startup_seconds)
        if images is not None:
            started = time.monotonic()
            results = import_images(node, images)
            timings["image_import"] = time.monotonic() - started
            timings.update({f"import_{r.name}": r.seconds for r in results})
        base = Cluster.for_testbed(plane.kubeconfig, plane.binaries, plane.state_dir)
        yield RealNodeCluster(
            kubeconfig=base.kubeconfig,
            bin_dir=base.bin_dir,
            helm_bin=base.helm_bin,
            helm_home=base.helm_home,
            node_name=node.node_name,
            host_ip=node.bridge_ip,
            images=images,
            timings=timings,
        )


realnode_cluster.__test__ = False  # type: ignore[attr-defined]
