"""Fixtures for the e2e tests: real pods on a real node (tests/testbed/realnode.py) of the test bed.

`real_cluster` (session) starts a control plane with the real node only (no kwok nodes: every pod lands on
the real node), imports the images of `make images` (manifest in ``$SWARM_IMAGE_CACHE``, default
``~/.cache/swarm-learning/images/images.json``) and yields a ``RealNodeCluster``: the ``Cluster`` handle of
the cluster tests plus ``host_ip``, ``image(name)``, ``wait_for_pod``, ``logs``, ``exit_code``. In this
directory `cluster` *is* `real_cluster`, so `namespace` (tests/conftest.py) makes namespaces on it.

The lifecycle tests (test_realnode_lifecycle.py) start and kill real nodes of their own; only one real
node can run on a machine, so they are moved before every other e2e test (before `real_cluster` starts).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

from tests.conftest import _sigterm_runs_teardown as sigterm_runs_teardown
from tests.testbed import Binaries, Cluster, TestbedError
from tests.testbed.binaries import NodeBinaries
from tests.testbed.cluster import RealNodeCluster, realnode_cluster
from tests.testbed.images import ImageManifest

LIFECYCLE_MODULE = "test_realnode_lifecycle.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the lifecycle tests first: they need the machine's one real node while no session node runs."""
    lifecycle = [i for i in items if i.path.name == LIFECYCLE_MODULE]
    if lifecycle:
        rest = [i for i in items if i.path.name != LIFECYCLE_MODULE]
        items[:] = lifecycle + rest


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealNodeCluster]:
    """The real-node test bed with the images of `make images` imported, for the whole session."""
    problem = ""
    with contextlib.ExitStack() as stack:
        try:
            Binaries.in_cache().require()
            NodeBinaries.in_cache().require()
            images = ImageManifest.load()
            stack.enter_context(sigterm_runs_teardown())
            started = time.monotonic()
            handle = stack.enter_context(
                realnode_cluster(images=images, keep_state=os.environ.get("SWARM_TESTBED_KEEP") == "1")
            )
        except TestbedError as e:
            problem = str(e)
        if problem:
            pytest.fail(f"the real-node test bed did not start: {problem}", pytrace=False)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in handle.timings.items())
        print(f"\nreal node: ready in {time.monotonic() - started:.1f} s ({timings}); {handle.kubeconfig}")
        yield handle


@pytest.fixture(scope="session")
def cluster(real_cluster: RealNodeCluster) -> Cluster:
    """In e2e tests the cluster is the real-node one (so `namespace` and other helpers use it)."""
    return real_cluster
