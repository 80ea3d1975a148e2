"""The test bed: a real Kubernetes control plane for the `cluster` tests (kwok nodes), the `e2e` tests (a
real node: realnode.py) and `make cluster-up`.

Binaries come from `make testbed` (tests/testbed/build.sh); see ``ControlPlane`` for the processes,
``Cluster``/``RealNodeCluster`` for the handles tests use, images.py for the images of `make images`.
"""

from tests.testbed.binaries import (
    HELM_VERSION,
    KUBERNETES_VERSION,
    KWOK_VERSION,
    Binaries,
    TestbedError,
    cache_root,
)
from tests.testbed.cluster import Cluster, RealNodeCluster, realnode_cluster, testbed_cluster
from tests.testbed.controlplane import ControlPlane
from tests.testbed.images import ImageManifest, ImageRef
from tests.testbed.nodes import DEFAULT_FAKE_NODES, GPU_RESOURCE, FakeNodeSpec, KwokNodes, NodeBackend
from tests.testbed.realnode import RealNode

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
    "ImageManifest",
    "ImageRef",
    "KwokNodes",
    "NodeBackend",
    "RealNode",
    "RealNodeCluster",
    "TestbedError",
    "cache_root",
    "realnode_cluster",
    "testbed_cluster",
]
