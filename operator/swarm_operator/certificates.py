"""Certificates the operator issues, through `swarmlearning.pki` (which works on directories).

Key material only passes through a private temporary directory and ends up in Secrets.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmlearning import pki

OPERATOR_CN = "swarm-operator"
"""CN of the operator's own client certificate (etcd user with the read-only `swarm-reader` role)."""


@dataclass(frozen=True)
class KeyPair:
    """PEM certificate and private key (plus the CA certificate for node certificates)."""

    cert: bytes
    key: bytes
    ca: bytes = b""


def new_ca(name: str) -> KeyPair:
    """A fresh swarm CA (ECDSA P-256, 10 years)."""
    with tempfile.TemporaryDirectory(prefix="swarm-ca-") as tmp:
        d = Path(tmp) / "ca"
        pki.create_ca(d, name=name)
        return KeyPair(cert=(d / pki.CA_CERT).read_bytes(), key=(d / pki.CA_KEY).read_bytes())


def issue(ca: KeyPair, name: str, organisation: str, role: str, hosts: Sequence[str]) -> KeyPair:
    """A node certificate for `name` (CN, max 63 chars) signed by `ca`; `role` one of pki.ROLES."""
    with tempfile.TemporaryDirectory(prefix="swarm-cert-") as tmp:
        ca_dir = Path(tmp) / "ca"
        ca_dir.mkdir(mode=0o700)
        (ca_dir / pki.CA_CERT).write_bytes(ca.cert)
        fd = os.open(ca_dir / pki.CA_KEY, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ca.key)
        nc = pki.issue_node_cert(ca_dir, Path(tmp) / "node", name, organisation[:64], role, hosts)
        return KeyPair(cert=nc.cert_pem(), key=nc.key_pem(), ca=nc.ca_pem())


def signed_by(cert: bytes, ca_cert: bytes) -> bool:
    """True when `cert` is valid now and was issued by `ca_cert` (a rotated CA means re-issue)."""
    try:
        pki.check_cert(cert, ca_cert)
    except (pki.PKIError, ValueError):
        return False
    return True
