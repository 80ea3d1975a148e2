"""Certificates with odd fields for the PKI fuzz tests: built with cryptography, signed by a chosen key."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.fuzz.conftest import Swarm

KEYS: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
"""Subject keys, made once (RSA generation is slow)."""
OTHER_CA_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Spec:
    """What a certificate carries; ``valid`` says whether pki.check_cert must accept it."""

    cn: str | None
    ou: str | None
    key: str
    sans: int
    not_before_days: int
    not_after_days: int
    signer: str
    """"ca" (the swarm CA), "other" (another key, same issuer name), "self"."""

    def expected_valid(self) -> bool:
        from swarmlearning.pki import _NAME_RE, ROLES

        return (
            self.cn is not None
            and bool(_NAME_RE.match(self.cn))
            and self.ou in ROLES
            and self.key == "p256"
            and self.signer == "ca"
            and self.not_before_days <= 0 <= self.not_after_days
        )


def build(swarm: Swarm, spec: Spec) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(swarm.ca_pem)
    ca_key = serialization.load_pem_private_key((swarm.ca_dir / "ca.key").read_bytes(), password=None)
    attrs = []
    if spec.cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.cn))
    if spec.ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, spec.ou))
    subject = x509.Name(attrs)
    key = KEYS[spec.key]
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if spec.signer == "self" else ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(
            now + dt.timedelta(days=spec.not_before_days, minutes=-1 if spec.not_before_days <= 0 else 1)
        )
        .not_valid_after(
            now + dt.timedelta(days=spec.not_after_days, minutes=1 if spec.not_after_days >= 0 else -1)
        )
    )
    if spec.sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"h{i}.example.invalid") for i in range(spec.sans)]),
            critical=False,
        )
    signer = {"ca": ca_key, "other": OTHER_CA_KEY}.get(spec.signer, key)
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(signer, algorithm)  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)
