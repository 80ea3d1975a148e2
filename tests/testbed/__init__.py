"""The test bed: a real Kubernetes control plane on 127.0.0.1 for the `cluster` tests and `make cluster-up`.

Binaries come from `make testbed` (tests/testbed/build.sh); see ``ControlPlane`` for the processes and
``Cluster`` for the handle tests use.
"""

from tests.testbed.binaries import (
    HELM_VERSION,
    KUBERNETES_VERSION,
    KWOK_VERSION,
    Binaries,
    TestbedError,
    cache_root,
)
from tests.testbed.cluster import Cluster, testbed_cluster
from tests.testbed.controlplane import ControlPlane
from tests.testbed.nodes import DEFAULT_FAKE_NODES, GPU_RESOURCE, FakeNodeSpec, KwokNodes, NodeBackend

__all__ = [
    "DEFAULT_FAKE_NODES",
    "GPU_RESOURCE",
    "HELM_VERSION",
    "KUBERNETES_VERSION",
    "KWOK_VERSION",
    "Binaries",
    "Cluster",
    "ControlPlane",
    "FakeNodeSpec",
    "KwokNodes",
    "NodeBackend",
    "TestbedError",
    "cache_root",
    "testbed_cluster",
]
