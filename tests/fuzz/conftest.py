"""Shared fixtures for the fuzz tests: a throwaway swarm CA with node certificates."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from swarmlearning import pki

# Hypothesis keeps caches (constants, unicode tables) in ./.hypothesis by default: keep them out of the repo.
set_hypothesis_home_dir(Path.home() / ".cache" / "swarm-learning" / "hypothesis")


@dataclass(frozen=True)
class Swarm:
    """A throwaway CA and three SL node certificates (alice, bob, carol) in a temp dir."""

    ca_dir: Path
    ca_pem: bytes
    nodes: dict[str, pki.NodeCert]


@pytest.fixture(scope="session")
def swarm() -> Iterator[Swarm]:
    # Not tmp_path_factory: with the retention policy "none" pytest removes its directories after each
    # test, and the node key files must outlive the first test that uses them.
    with tempfile.TemporaryDirectory(prefix="swarm-fuzz-pki-") as tmp:
        root = Path(tmp)
        pki.create_ca(root / "ca")
        nodes = {
            name: pki.issue_node_cert(root / "ca", root / name, name, "org-" + name, "sl")
            for name in ("alice", "bob", "carol")
        }
        yield Swarm(root / "ca", (root / "ca" / pki.CA_CERT).read_bytes(), nodes)
