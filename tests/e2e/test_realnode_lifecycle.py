"""The real node leaves nothing behind: neither after a normal teardown nor, once the next run has started,
after its owner was SIGKILLed (containers outlive containerd: their shims are detached).

These tests start real nodes of their own; tests/e2e/conftest.py runs them before the session's
`real_cluster` exists (one real node per machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed import realnode
from tests.testbed.cluster import RealNodeCluster, realnode_cluster
from tests.testbed.images import ImageManifest
from tests.testbed.processes import log_tail

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Seconds: a real node's startup plus a pod start (about 15 s), and a pod reaching Ready (its PVC's
# helper pod runs first; on a cold, loaded machine the pair has taken over 120 s).
START_TIMEOUT = 180.0
POD_TIMEOUT = 240.0
NOTHING: dict[str, list[str]] = {k: [] for k in realnode.leftovers()}


def workload(cluster: RealNodeCluster) -> list[dict[str, Any]]:
    """A long-running pod with a PVC, an emptyDir and a Service: containers, mounts, a netns, a veth,
    cgroups and iptables rules all exist while it runs."""
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "labels": {"app": "sleeper"}},
            "spec": {
                "terminationGracePeriodSeconds": 30,  # teardown must not depend on the pod stopping by itself
                "containers": [
                    {
                        "name": "main",
                        "image": cluster.image("base"),
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", "import time; time.sleep(3600)"],
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sleeper"},
            "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 80}]},
        },
    ]


def run_workload(cluster: RealNodeCluster) -> None:
    cluster.kubectl("apply", "-n", "default", "-f", "-", input=yaml.safe_dump_all(workload(cluster)))
    waited = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        "pod/sleeper",
        "-n",
        "default",
        f"--timeout={POD_TIMEOUT:.0f}s",
        check=False,
        timeout=POD_TIMEOUT + 30,
    )
    if waited.returncode != 0:
        found = cluster.diagnose("default", "sleeper")
        raise AssertionError(f"pod default/sleeper not Ready within {POD_TIMEOUT:g} s\n{found}")


def sysctls() -> dict[str, str | None]:
    return {name: realnode._read_sysctl(name) for name in realnode.SYSCTLS}


def test_teardown_leaves_no_process_mount_netns_interface_chain_or_cgroup() -> None:
    before = sysctls()
    with realnode_cluster(images=ImageManifest.load().only("base"), timeout=START_TIMEOUT) as cluster:
        run_workload(cluster)
        during = realnode.leftovers()
        # The check below can fail: while the node runs, each kind of trace exists.
        for kind in ("processes", "mounts", "netns", "links", "iptables", "cgroups", "run_dir"):
            assert during[kind], f"expected the running node to have {kind}, leftovers() saw none: {during}"
    assert realnode.leftovers() == NOTHING
    assert sysctls() == before


def test_next_start_removes_what_a_sigkilled_run_left(tmp_path: Path) -> None:
    # The owner's state dir holds the kubelet's sockets: tmp_path is too long a path for them.
    short_tmp = Path(tempfile.mkdtemp(prefix="rn-kill-"))
    owner = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from tests.testbed.cluster import realnode_cluster
        from tests.testbed.images import ImageManifest
        from tests.e2e.test_realnode_lifecycle import run_workload
        with realnode_cluster(images=ImageManifest.load().only("base")) as cluster:
            run_workload(cluster)
            print("READY", flush=True)
            time.sleep(3600)
        """
    )
    log = tmp_path / "owner.log"
    with log.open("w") as out:
        # Its state dir goes under short_tmp (TMPDIR), so it is removed with it whatever happens.
        env = dict(os.environ, TMPDIR=str(short_tmp))
        proc = subprocess.Popen(
            [sys.executable, "-c", owner], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT + POD_TIMEOUT
        while "READY" not in log.read_text().splitlines():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the node's owner process did not get ready (exit {proc.poll()}):\n{log_tail(log)}"
                )
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(1)  # the kernel delivers PR_SET_PDEATHSIG to the children
        left = realnode.leftovers()
        assert left["processes"], f"the pod's container should outlive its SIGKILLed owner: {left}"
        assert left["links"] and left["mounts"] and left["cgroups"], left
        removed = realnode.reclaim()  # what the next real node's start runs first
        assert removed, "reclaim() found nothing to remove after a SIGKILL"
        assert realnode.leftovers() == NOTHING, json.dumps(realnode.leftovers(), indent=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if (realnode.RUN_DIR / realnode.RECORD).exists():
            realnode.reclaim()  # the assertions failed: still leave the machine clean
        shutil.rmtree(short_tmp, ignore_errors=True)
