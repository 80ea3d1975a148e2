"""The swarm PKI: one CA, one certificate per node, used for mTLS on every link and for ledger signing.

Files (Kubernetes TLS-Secret names, so a Secret can be mounted as is):

- CA directory: ``ca.crt``, ``ca.key``.
- Node directory: ``tls.crt`` (node certificate), ``tls.key`` (its private key), ``ca.crt`` (the CA).

A node certificate has CN = node name (also the node's etcd user name), O = organisation,
OU = role (one of :data:`ROLES`), SANs for its hosts, and both serverAuth and clientAuth EKUs.
SN certificates also carry the DNS SAN :data:`SN_PEER_NAME`; etcd only accepts peers presenting it
(``--peer-cert-allowed-hostname``), because the one CA also signs SL, admin and operator certificates.
Keys are ECDSA P-256; the node's TLS key is also its ledger signing key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import re
import shutil
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from swarmlearning.limits import Limits, describe

ROLES = ("sn", "sl", "admin", "operator")
"""Allowed certificate roles (the OU): SN node, SL node, swarm admin (etcd root), operator (reader)."""

SN_PEER_NAME = "sn-peer.swarm.invalid"
"""DNS SAN that marks a certificate as an SN peer; etcd is told to accept only peers presenting it."""

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "tls.crt"
NODE_KEY = "tls.key"

_PARSE_ERRORS = (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm)
"""What cryptography raises for malformed certificate bytes: ValueError, and also (found by fuzzing) a
TypeError for a name attribute of the wrong ASN.1 type, InvalidVersion for a bad version field, and
UnsupportedAlgorithm for an unknown key algorithm."""

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_DEFAULT_DAYS = 365


class PKIError(Exception):
    """A certificate, key or signature problem; the message names the file or field."""


@dataclass(frozen=True)
class NodeCert:
    """Paths to one node's certificate, key and CA certificate, plus the certificate's facts."""

    name: str
    """Certificate CN: node name and etcd user name."""
    organisation: str
    role: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    fingerprint: str
    """sha256 of the certificate's DER encoding, lowercase hex."""

    @classmethod
    def load(cls, node_dir: str | os.PathLike[str]) -> NodeCert:
        """Read ``tls.crt``, ``tls.key`` and ``ca.crt`` from ``node_dir``.

        Raises PKIError naming a missing file."""
        d = Path(node_dir)
        paths = [d / NODE_CERT, d / NODE_KEY, d / CA_CERT]
        for p in paths:
            if not p.is_file():
                raise PKIError(
                    f"certificate directory {d}: missing {p.name} (expected tls.crt, tls.key, ca.crt)"
                )
        return cls.from_files(*paths)

    @classmethod
    def from_files(
        cls,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        ca_path: str | os.PathLike[str],
    ) -> NodeCert:
        """The same from files anywhere (e.g. a mounted Secret's). Raises PKIError naming a bad file."""
        paths = [Path(cert_path), Path(key_path), Path(ca_path)]
        for p in paths:
            if not p.is_file():
                raise PKIError(f"{p}: no such file")
        pem = paths[0].read_bytes()
        cert = _load_pem(pem, str(paths[0]))
        try:
            return cls(
                name=_attr(cert, NameOID.COMMON_NAME),
                organisation=_attr(cert, NameOID.ORGANIZATION_NAME),
                role=_attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME),
                cert_path=paths[0],
                key_path=paths[1],
                ca_path=paths[2],
                fingerprint=fingerprint(pem),
            )
        except _PARSE_ERRORS as e:  # cryptography parses the subject lazily
            raise PKIError(f"{paths[0]}: malformed subject: {e}") from e

    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()


@dataclass(frozen=True)
class CertInfo:
    """What a verifier learns from a certificate checked against the CA."""

    name: str
    organisation: str
    role: str
    fingerprint: str


def _load_pem(cert_pem: bytes, what: str, limits: Limits | None = None) -> x509.Certificate:
    """Parse one PEM certificate of at most ``limits.certificate_bytes``; raises PKIError naming ``what``."""
    lim = limits or Limits.from_env()
    if not isinstance(cert_pem, bytes | bytearray):
        raise PKIError(f"{what}: expected PEM bytes, got a {type(cert_pem).__name__}")
    if len(cert_pem) > lim.certificate_bytes:
        raise PKIError(
            f"{what}: {len(cert_pem)} bytes exceeds the limit of {describe(lim, 'certificate_bytes')}"
        )
    try:
        return x509.load_pem_x509_certificate(bytes(cert_pem))
    except _PARSE_ERRORS as e:
        raise PKIError(f"{what}: not a PEM certificate: {str(e)[:200]}") from e


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _check_name(field: str, value: str) -> None:
    if not _NAME_RE.match(value):
        raise PKIError(
            f"{field}={value!r} is not allowed: use 1-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(ca_dir: str | os.PathLike[str], name: str = "swarm-ca", *, days: int = 3650) -> Path:
    """Create a self-signed ECDSA P-256 CA in ``ca_dir`` (``ca.crt``, ``ca.key``); returns ``ca.crt``.

    Refuses to overwrite an existing CA. ``days``: validity, default 3650.
    """
    d = Path(ca_dir)
    if (d / CA_KEY).exists():
        raise PKIError(f"{d / CA_KEY} exists already; refusing to overwrite a CA")
    if days < 1:
        raise PKIError(f"days={days}: must be >= 1")
    d.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(d / CA_KEY, _key_pem(key))
    (d / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return d / CA_CERT


def issue_node_cert(
    ca_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str,
    organisation: str,
    role: str,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    *,
    days: int = _DEFAULT_DAYS,
) -> NodeCert:
    """Issue a node certificate signed by the CA in ``ca_dir`` into ``out_dir`` (tls.crt, tls.key, ca.crt).

    ``name`` becomes the CN (and etcd user), ``organisation`` the O, ``role`` (one of :data:`ROLES`)
    the OU. ``hosts`` are SANs (IP addresses or DNS names) the node serves on; SN certificates get
    :data:`SN_PEER_NAME` added. ``days``: validity, default 365.
    """
    _check_name("name", name)
    if role not in ROLES:
        raise PKIError(f"role={role!r} is not allowed: use one of {', '.join(ROLES)}")
    if not organisation or len(organisation) > 64:
        raise PKIError(f"organisation={organisation!r}: must be 1-64 characters")
    if days < 1:
        raise PKIError(f"days={days}: must be >= 1")
    ca_d = Path(ca_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_d / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((ca_d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as e:
        raise PKIError(f"CA directory {ca_d}: missing {Path(str(e.filename)).name}") from e
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{ca_d / CA_KEY}: expected an ECDSA key")

    sans: list[x509.GeneralName] = []
    all_hosts = list(dict.fromkeys([*hosts, *([SN_PEER_NAME] if role == "sn" else [])]))
    for h in all_hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))

    key = _new_key()
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (out / NODE_CERT).write_bytes(cert_pem)
    _write_private(out / NODE_KEY, _key_pem(key))
    if (ca_d / CA_CERT).resolve() != (out / CA_CERT).resolve():
        shutil.copyfile(ca_d / CA_CERT, out / CA_CERT)
    return NodeCert(
        name=name,
        organisation=organisation,
        role=role,
        cert_path=out / NODE_CERT,
        key_path=out / NODE_KEY,
        ca_path=out / CA_CERT,
        fingerprint=fingerprint(cert_pem),
    )


def fingerprint(cert_pem: bytes) -> str:
    """sha256 of the certificate's DER encoding, lowercase hex. Raises PKIError on unreadable PEM."""
    cert = _load_pem(cert_pem, "certificate")
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_cert(
    cert_pem: bytes, ca_pem: bytes, *, at: dt.datetime | None = None, limits: Limits | None = None
) -> CertInfo:
    """Check a peer's certificate; raise PKIError saying what is wrong.

    It must be at most ``limits.certificate_bytes`` of PEM, signed by the CA, valid at ``at`` (default
    now), carry an ECDSA P-256 key, a CN that is a valid node name and a role OU from :data:`ROLES`
    (what :func:`issue_node_cert` issues)."""
    cert = _load_pem(cert_pem, "certificate", limits)
    ca = _load_pem(ca_pem, "CA certificate", limits)
    try:
        return _check_parsed(cert, ca, at or _now())
    except _PARSE_ERRORS as e:  # cryptography parses names and keys lazily: malformed DER shows up here
        raise PKIError(f"malformed certificate: {str(e)[:200]}") from e


def _check_parsed(cert: x509.Certificate, ca: x509.Certificate, when: dt.datetime) -> CertInfo:
    cn = _attr(cert, NameOID.COMMON_NAME)
    shown = repr(cn[:64])
    if cert.issuer != ca.subject:
        raise PKIError(f"certificate {shown} was not issued by this swarm CA")
    ca_key = ca.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise PKIError("the swarm CA key is not ECDSA")
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise PKIError(f"certificate {shown} has a bad CA signature (other CA?)") from e
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise PKIError(
            f"certificate {shown} is not valid at {when.isoformat()} (valid "
            f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )
    if not cn:
        raise PKIError("certificate has no CN (common name): a node certificate names its node there")
    _check_name("certificate CN", cn)
    role = _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if role not in ROLES:
        raise PKIError(f"certificate {shown} has role OU={role[:64]!r}: expected one of {', '.join(ROLES)}")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise PKIError(f"certificate {shown} has a {kind} key: expected ECDSA P-256 (secp256r1)")
    return CertInfo(
        name=cn,
        organisation=_attr(cert, NameOID.ORGANIZATION_NAME),
        role=role,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def server_ssl_context(nc: NodeCert) -> ssl.SSLContext:
    """TLS >= 1.2 server context presenting ``nc`` and requiring a client certificate from the swarm CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(nc.cert_path, nc.key_path)
    ctx.load_verify_locations(cafile=str(nc.ca_path))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(nc: NodeCert) -> ssl.SSLContext:
    """TLS >= 1.2 client context presenting ``nc``; the server must present a certificate from the swarm CA.

    Host names are checked against the server's SANs (connect to a host the server certificate names).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(nc.cert_path, nc.key_path)
    ctx.load_verify_locations(cafile=str(nc.ca_path))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def peer_name(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """CN of the (already CA-verified) peer certificate of an established TLS connection."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PKIError("the peer presented no certificate")
    try:
        return _attr(x509.load_der_x509_certificate(der), NameOID.COMMON_NAME)
    except _PARSE_ERRORS as e:
        raise PKIError(f"the peer's certificate cannot be read: {str(e)[:200]}") from e


def sign(key_path: str | os.PathLike[str], data: bytes) -> bytes:
    """ECDSA-SHA256 signature (DER) of ``data`` with the PEM private key at ``key_path``."""
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: expected an ECDSA private key")
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(cert_pem: bytes, data: bytes, sig: bytes) -> bool:
    """True if ``sig`` is a valid ECDSA-SHA256 signature of ``data`` by the key of ``cert_pem``.

    Raises PKIError when ``cert_pem`` cannot be read."""
    try:
        pub = _load_pem(cert_pem, "certificate").public_key()
    except _PARSE_ERRORS as e:
        raise PKIError(f"certificate has an unreadable public key: {str(e)[:200]}") from e
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        return False
    try:
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
