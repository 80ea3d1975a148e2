"""Fixtures shared by every test: the Kubernetes cluster (`cluster`, `namespace`) and the one-marker rule.

`cluster` starts the test bed (tests/testbed: real etcd, kube-apiserver, controller-manager, scheduler and
kwok nodes on 127.0.0.1) once per session, or uses $KUBECONFIG with SWARM_TEST_EXISTING_CLUSTER=1.
SWARM_TESTBED_KEEP=1 keeps the test bed's state dir (logs, etcd data) after the session for debugging.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from tests.testbed import Binaries, Cluster, TestbedError, testbed_cluster

# gRPC's C core logs every refused TLS handshake at INFO (tests refuse foreign certificates on purpose).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# TensorFlow and triton (torch's compiler, which transformers' Trainer imports) both register LLVM
# options; in one process triton must come first or it aborts ("LLVM ERROR: inconsistency in registered
# CommandLine options"). The Keras and Hugging Face tests share a session, in any order.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

TEST_KINDS = ("unit", "integration", "cluster", "e2e")
# The pytest-xdist unit of work of every test under E2E_DIR (one worker: a machine runs one real node).
REAL_NODE_GROUP = "real-node"
E2E_DIR = "tests/e2e/"
# Seconds to wait for a fresh namespace's `default` service account (pods are rejected until it exists).
NAMESPACE_READY_TIMEOUT = 60.0


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `pytest -n N` (what `make test` runs): each test is its own unit of work, except the e2e tier,
    one unit that a single worker runs in order, because a machine has one real node. (xdist's own
    `--dist loadgroup` cannot do this on pytest 9.2: it renames items through an attribute pytest no
    longer reads.) Units go out largest first, so the e2e tier, the longest piece of the run, starts at
    once while the other workers share out the rest."""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist other than plain load is the caller's choice
    from xdist.scheduler import LoadScopeScheduling

    class RealNodeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return REAL_NODE_GROUP if nodeid.startswith(E2E_DIR) else nodeid

    return RealNodeScheduling(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    kinds = sorted({m.name for m in item.iter_markers() if m.name in TEST_KINDS})
    if len(kinds) != 1:
        pytest.fail(
            f"{item.nodeid} must carry exactly one of the markers {TEST_KINDS}, has {kinds}", pytrace=False
        )
    if (kinds == ["e2e"]) != item.nodeid.startswith(E2E_DIR):
        pytest.fail(f"{item.nodeid}: e2e tests, and only they, live in {E2E_DIR}", pytrace=False)


@contextlib.contextmanager
def _sigterm_runs_teardown() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so pytest's teardown (and atexit) still stop the test bed."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A reachable cluster with matching kubectl/helm; the test bed unless SWARM_TEST_EXISTING_CLUSTER=1."""
    # pytest.fail is called outside the `except` blocks so the report shows the message once, unchained.
    problem = ""
    if os.environ.get("SWARM_TEST_EXISTING_CLUSTER") == "1":
        try:
            external = Cluster.from_environment()
        except TestbedError as e:
            problem = str(e)
        if problem:
            pytest.fail(problem, pytrace=False)
        yield external
        return
    with contextlib.ExitStack() as stack:
        try:
            Binaries.in_cache().require()
            stack.enter_context(_sigterm_runs_teardown())
            started = time.monotonic()
            handle = stack.enter_context(
                testbed_cluster(keep_state=os.environ.get("SWARM_TESTBED_KEEP") == "1")
            )
        except TestbedError as e:
            problem = str(e)
        if problem:
            pytest.fail(f"the Kubernetes test bed did not start: {problem}", pytrace=False)
        print(f"\ntest bed: control plane ready in {time.monotonic() - started:.1f} s ({handle.kubeconfig})")
        yield handle


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "test"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (its `default` service account exists); deleted without waiting."""
    name = _namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    try:
        deadline = time.monotonic() + NAMESPACE_READY_TIMEOUT
        while not cluster.kubectl(
            "get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name"
        ).stdout.strip():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"service account 'default' in namespace {name} not created within "
                    f"{NAMESPACE_READY_TIMEOUT:.0f} s (kube-controller-manager's serviceaccount controller)",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield name
    finally:
        # Namespace deletion finishes in the background (finalizers); tests must not wait on it.
        cluster.kubectl(
            "delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False, timeout=30
        )
