"""Certificates and keys for the test control plane (a throw-away CA per cluster, ECDSA P-256)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for a persistent `make cluster-up` cluster; the CA dies with the state dir anyway.
_VALIDITY = dt.timedelta(days=365)
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class CertPair:
    """PEM files of one certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPki:
    """Every credential the control plane needs, as files in one directory."""

    ca: CertPair
    apiserver: CertPair  # serving cert of kube-apiserver
    apiserver_kubelet_client: CertPair  # kube-apiserver -> kubelet (logs, exec on a real node)
    admin: CertPair  # system:masters
    controller_manager: CertPair  # system:kube-controller-manager
    scheduler: CertPair  # system:kube-scheduler
    node_agent: CertPair  # the node backend (kwok), system:masters because it patches any node/pod status
    front_proxy_ca: CertPair  # requestheader CA of the aggregation layer (own CA, as kubeadm does)
    front_proxy_client: CertPair  # kube-apiserver -> aggregated API servers
    service_account_key: Path  # signs service-account tokens (kube-apiserver, kube-controller-manager)
    service_account_pub: Path  # verifies them (kube-apiserver)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _issue(
    directory: Path,
    stem: str,
    subject: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> CertPair:
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if (server_names or server_ips) else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names or server_ips:
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def _new_ca(
    directory: Path, stem: str, common_name: str
) -> tuple[CertPair, ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = _new_key()
    now = dt.datetime.now(dt.UTC)
    ca_subject = _name(common_name)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pair = CertPair(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    pair.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, pair.key)
    return pair, ca_key, ca_cert


def issue_cert(
    ca: CertPair,
    directory: Path,
    stem: str,
    common_name: str,
    organization: str | None = None,
    *,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> CertPair:
    """Issue one more certificate from the CA in ``ca`` (PEM files): a client certificate, or a serving
    one when ``server_names``/``server_ips`` are given. Node backends use it for their agents' identities."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected an EC private key, got {type(ca_key).__name__}")
    directory.mkdir(parents=True, exist_ok=True)
    return _issue(
        directory,
        stem,
        _name(common_name, organization),
        ca_key,
        ca_cert,
        server_names=server_names,
        server_ips=server_ips,
    )


def create_pki(directory: Path, *, service_ip: str, extra_ips: tuple[str, ...] = ()) -> ClusterPki:
    """Create a fresh CA and all control-plane credentials in ``directory``.

    ``service_ip`` is the first address of the service CIDR (the ``kubernetes`` Service), which the
    apiserver's serving certificate must cover for in-cluster clients; ``extra_ips`` are further addresses
    it serves on (a real node's bridge address).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = _new_ca(directory, "ca", "swarm-learning-testbed-ca")
    front_proxy_ca, fp_key, fp_cert = _new_ca(
        directory, "front-proxy-ca", "swarm-learning-testbed-front-proxy-ca"
    )

    def client(stem: str, cn: str, org: str | None = None) -> CertPair:
        return _issue(directory, stem, _name(cn, org), ca_key, ca_cert)

    apiserver = _issue(
        directory,
        "apiserver",
        _name("kube-apiserver"),
        ca_key,
        ca_cert,
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", service_ip, *extra_ips),
    )
    sa_key = _new_key()
    sa_key_path = directory / "service-account.key"
    _write_key(sa_key, sa_key_path)
    sa_pub_path = directory / "service-account.pub"
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPki(
        ca=ca,
        apiserver=apiserver,
        apiserver_kubelet_client=client(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"
        ),
        admin=client("admin", "swarm-testbed-admin", "system:masters"),
        controller_manager=client("controller-manager", "system:kube-controller-manager"),
        scheduler=client("scheduler", "system:kube-scheduler"),
        node_agent=client("node-agent", "swarm-testbed-node-agent", "system:masters"),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_issue(
            directory, "front-proxy-client", _name(FRONT_PROXY_CLIENT), fp_key, fp_cert
        ),
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )
