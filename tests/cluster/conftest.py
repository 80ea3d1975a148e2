"""Fixtures for tests against the real control plane: the project's CRDs, installed once per session.

`cluster` and `namespace` come from tests/conftest.py (the test bed, or the cluster in KUBECONFIG with
SWARM_TEST_EXISTING_CLUSTER=1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.testbed import Cluster

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_NAMES = (
    "swarmnetworks.swarmlearning.dev",
    "learningnodes.swarmlearning.dev",
    "swarmtasks.swarmlearning.dev",
)
# Seconds to wait for the API server to establish the CRDs (normally about one second).
ESTABLISH_TIMEOUT = 60.0


def established(cluster: Cluster) -> dict[str, bool]:
    """CRD name -> whether its Established condition is True (False when the CRD is missing)."""
    result = cluster.kubectl("get", "crd", *CRD_NAMES, "-o", "json", "--ignore-not-found", check=False)
    state = dict.fromkeys(CRD_NAMES, False)
    if result.returncode != 0 or not result.stdout.strip():
        return state
    for crd in json.loads(result.stdout).get("items", []):
        conditions = crd.get("status", {}).get("conditions", [])
        state[crd["metadata"]["name"]] = any(
            c["type"] == "Established" and c["status"] == "True" for c in conditions
        )
    return state


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> tuple[str, ...]:
    """Apply crds/ server-side and wait until all three CRDs are Established; returns their names.

    The CRDs stay installed after the session: on an existing cluster, deleting them would delete
    every SwarmNetwork, LearningNode and SwarmTask in it.
    """
    # --force-conflicts: take over fields another manager (helm, an earlier kubectl) owns.
    applied = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=swarm-tests",
        "-f",
        str(CRD_DIR),
        check=False,
    )
    assert applied.returncode == 0, f"kubectl apply -f crds/ failed:\n{applied.stderr}"
    deadline = time.monotonic() + ESTABLISH_TIMEOUT
    while not all((state := established(cluster)).values()):
        if time.monotonic() > deadline:
            missing = [name for name, ok in state.items() if not ok]
            pytest.fail(f"CRDs not Established after {ESTABLISH_TIMEOUT:.0f} s: {missing}")
        time.sleep(0.5)
    return CRD_NAMES
