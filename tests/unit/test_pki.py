"""The swarm PKI: certificates, mTLS contexts, signatures."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from swarmlearning import pki

pytestmark = pytest.mark.unit


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    pki.create_ca(tmp_path / "ca", "unit-ca")
    return tmp_path / "ca"


def test_node_certificate_carries_identity_roles_and_sans(ca: Path, tmp_path: Path) -> None:
    nc = pki.issue_node_cert(ca, tmp_path / "alice", "alice", "org-a", "sl", hosts=("10.0.0.5", "alice.svc"))
    cert = x509.load_pem_x509_certificate(nc.cert_pem())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "org-a"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "sl"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["alice.svc"]  # no SN peer marker on an SL cert
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert (nc.key_path.stat().st_mode & 0o777) == 0o600
    assert pki.NodeCert.load(tmp_path / "alice") == nc
    assert nc.fingerprint == pki.fingerprint(nc.cert_pem()) and len(nc.fingerprint) == 64


def test_sn_certificates_get_the_peer_marker(ca: Path, tmp_path: Path) -> None:
    nc = pki.issue_node_cert(ca, tmp_path / "sn-0", "sn-0", "org", "sn")
    san = (
        x509.load_pem_x509_certificate(nc.cert_pem())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert pki.SN_PEER_NAME in san.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize(
    ("field", "kwargs", "message"),
    [
        ("name", {"name": "Bad_Name"}, "name='Bad_Name' is not allowed"),
        ("role", {"role": "king"}, "role='king' is not allowed: use one of sn, sl, admin, operator"),
        ("organisation", {"organisation": ""}, "organisation='': must be 1-64 characters"),
        ("days", {"days": 0}, "days=0: must be >= 1"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    ca: Path, tmp_path: Path, field: str, kwargs: dict, message: str
) -> None:
    args = {"name": "n", "organisation": "o", "role": "sl", **kwargs}
    with pytest.raises(pki.PKIError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pki.issue_node_cert(
            ca, tmp_path / "x", args.pop("name"), args.pop("organisation"), args.pop("role"), **args
        )


def test_create_ca_refuses_to_overwrite(ca: Path) -> None:
    with pytest.raises(pki.PKIError, match="refusing to overwrite"):
        pki.create_ca(ca)


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(pki.PKIError, match="missing tls.crt"):
        pki.NodeCert.load(tmp_path)


def test_check_cert_accepts_own_ca_and_refuses_another(ca: Path, tmp_path: Path) -> None:
    nc = pki.issue_node_cert(ca, tmp_path / "a", "a", "o", "sl")
    info = pki.check_cert(nc.cert_pem(), nc.ca_pem())
    assert (info.name, info.organisation, info.role) == ("a", "o", "sl")
    other = tmp_path / "other"
    pki.create_ca(other, "unit-ca")  # same subject name, different key
    with pytest.raises(pki.PKIError, match="bad CA signature"):
        pki.check_cert(nc.cert_pem(), (other / pki.CA_CERT).read_bytes())


def test_signatures_verify_only_for_the_signer_and_the_data(ca: Path, tmp_path: Path) -> None:
    a = pki.issue_node_cert(ca, tmp_path / "a", "a", "o", "sl")
    b = pki.issue_node_cert(ca, tmp_path / "b", "b", "o", "sl")
    sig = pki.sign(a.key_path, b"record")
    assert pki.verify_signature(a.cert_pem(), b"record", sig)
    assert not pki.verify_signature(a.cert_pem(), b"recorD", sig)
    assert not pki.verify_signature(b.cert_pem(), b"record", sig)


def _handshake(server: pki.NodeCert, client: pki.NodeCert) -> tuple[list[str], bytes]:
    """mTLS over a real loopback socket: (CNs the server accepted, bytes the client received)."""

    async def go() -> tuple[list[str], bytes]:
        seen: list[str] = []

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(pki.peer_name(w.get_extra_info("ssl_object")))
            w.write(b"hi")
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=pki.server_ssl_context(server))
        port = srv.sockets[0].getsockname()[1]
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=pki.client_ssl_context(client)), 10
            )
            got = await asyncio.wait_for(r.read(), 10)
            w.close()
        except (ssl.SSLError, ConnectionError):
            got = b""
        finally:
            srv.close()
            await srv.wait_closed()
        return seen, got

    return asyncio.run(go())


def test_mtls_contexts_accept_swarm_certificates_and_refuse_others(ca: Path, tmp_path: Path) -> None:
    server = pki.issue_node_cert(ca, tmp_path / "srv", "srv", "o", "sl")
    client = pki.issue_node_cert(ca, tmp_path / "cli", "cli", "o", "sl")
    assert _handshake(server, client) == (["cli"], b"hi")
    pki.create_ca(tmp_path / "other", "other")
    stranger = pki.issue_node_cert(tmp_path / "other", tmp_path / "x", "cli", "o", "sl")
    assert _handshake(server, stranger) == ([], b"")  # the client refuses the server (other trust root)
    # Trusting the swarm CA but presenting a stranger's certificate: the server refuses the client.
    impostor = dataclasses.replace(stranger, ca_path=client.ca_path)
    assert _handshake(server, impostor) == ([], b"")


def test_swarmctl_certs_init_creates_a_ca_and_node_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmlearning.cli.swarmctl import main

    assert (
        main(["certs", "init", str(tmp_path), "--node", "alice:org-a", "--node", "bob", "--sn", "sn-0"]) == 0
    )
    loaded = {n: pki.NodeCert.load(tmp_path / n) for n in ("root", "alice", "bob", "sn-0")}
    assert {n: (c.organisation, c.role) for n, c in loaded.items()} == {
        "root": ("swarm-local", "admin"),
        "alice": ("org-a", "sl"),
        "bob": ("swarm-local", "sl"),
        "sn-0": ("swarm-local", "sn"),
    }
    ca = (tmp_path / "ca" / pki.CA_CERT).read_bytes()
    assert all(pki.check_cert(c.cert_pem(), ca).name == n for n, c in loaded.items())
    # Running again adds nodes with the same CA instead of replacing it.
    assert main(["certs", "init", str(tmp_path), "--node", "carol"]) == 0
    assert pki.check_cert(pki.NodeCert.load(tmp_path / "carol").cert_pem(), ca).name == "carol"
    assert main(["certs", "init", str(tmp_path), "--node", "Bad Name"]) == 2
    assert "--node/--sn Bad Name: name='Bad Name' is not allowed" in capsys.readouterr().err
