"""Certificates the operator issues, through `swarmlearning.pki` (which works on directories).

Key material only passes through a private temporary directory and ends up in Secrets.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from swarmlearning import pki

OPERATOR_CN = "swarm-operator"
"""CN of the operator's own client certificate (etcd user with the read-only `swarm-reader` role)."""
CN_MAX = 64
"""X.509's upper bound on a common name; `cryptography` refuses longer ones."""


@dataclass(frozen=True)
class KeyPair:
    """PEM certificate and private key (plus the CA certificate for node certificates)."""

    cert: bytes
    key: bytes
    ca: bytes = b""


def new_ca(name: str) -> KeyPair:
    """A fresh swarm CA (ECDSA P-256, 10 years). `name` is its CN, cut to 64 characters (a network name
    and namespace can be longer; the CN only labels the CA, nothing looks it up)."""
    with tempfile.TemporaryDirectory(prefix="swarm-ca-") as tmp:
        d = Path(tmp) / "ca"
        pki.create_ca(d, name=name[:CN_MAX])
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


def ca_problem(cert: bytes, key: bytes) -> str | None:
    """Why `cert`/`key` (PEM) cannot serve as the swarm CA, or None when they can: both must parse, the
    key must be an unencrypted ECDSA key (what `swarmlearning.pki` signs with) and belong to the cert."""
    try:
        ca_cert = x509.load_pem_x509_certificate(cert)
    except ValueError:
        return "ca.crt is not a PEM certificate"
    try:
        ca_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        return "ca.key is not an unencrypted PEM private key"
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return "ca.key must be an ECDSA key"
    if ca_key.public_key() != ca_cert.public_key():
        return "ca.key does not belong to ca.crt"
    return None


def signed_by(cert: bytes, ca_cert: bytes) -> bool:
    """True when `cert` is valid now and was issued by `ca_cert` (a rotated CA means re-issue)."""
    try:
        pki.check_cert(cert, ca_cert)
    except (pki.PKIError, ValueError):
        return False
    return True
