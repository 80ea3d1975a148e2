"""Loading a peer's certificate: ``pki.check_cert`` (and ``fingerprint``, ``NodeCert.load``) accept
exactly the certificates the swarm CA issues and end in PKIError, naming the problem, for everything
else: garbage, odd or missing fields, wrong key types, huge SAN lists, expired, other CAs."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from swarmlearning import pki
from swarmlearning.limits import Limits

from tests.fuzz.certificates import Spec, build
from tests.fuzz.conftest import Swarm
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.unit


@fuzz(300)
@given(st.binary(max_size=600))
def test_garbage_bytes(swarm: Swarm, data: bytes) -> None:
    with pytest.raises(pki.PKIError):
        pki.check_cert(data, swarm.ca_pem)
    with pytest.raises(pki.PKIError):
        pki.fingerprint(data)


def _pem(der: bytes) -> bytes:
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n").encode()


@fuzz(300)
@given(st.data())
def test_mutated_der_of_a_real_certificate(swarm: Swarm, data: st.DataObject) -> None:
    """Byte flips inside a valid certificate's DER (lazily parsed fields, signature, lengths)."""
    pem = swarm.nodes["alice"].cert_pem()
    der = bytearray(base64.b64decode(b"".join(pem.splitlines()[1:-1])))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    mutated = _pem(bytes(der[:cut]))
    try:
        info = pki.check_cert(mutated, swarm.ca_pem)
    except pki.PKIError as exc:
        assert str(exc)
    else:  # a flip the CA signature does not cover (e.g. in the outer signature algorithm encoding)
        assert info.name == "alice"


_cn = st.one_of(
    st.none(),
    st.sampled_from(["node-1", "alice", "", "Node_1", "-x", "a" * 64]),
    st.text(min_size=1, max_size=20),
)
_ou = st.one_of(st.none(), st.sampled_from([*pki.ROLES, "root", ""]), st.text(min_size=1, max_size=8))


@fuzz(120)
@given(
    st.builds(
        Spec,
        # Half of the names valid, so that both outcomes are frequent.
        cn=st.booleans().flatmap(lambda ok: st.just("node-1") if ok else _cn),
        ou=st.booleans().flatmap(lambda ok: st.just("sl") if ok else _ou),
        key=st.sampled_from(["p256", "p256", "p256", "p384", "rsa", "ed25519"]),
        sans=st.sampled_from([0, 1, 50]),
        not_before_days=st.sampled_from([-10, -10, 0, 3]),
        not_after_days=st.sampled_from([-2, 0, 30, 30]),
        signer=st.sampled_from(["ca", "ca", "ca", "other", "self"]),
    )
)
def test_odd_certificates_are_accepted_exactly_when_valid(swarm: Swarm, spec: Spec) -> None:
    try:
        pem = build(swarm, spec)
    except ValueError:  # cryptography refuses to build it at all (e.g. an empty CN string)
        event("not buildable")
        return
    event(f"expected valid: {spec.expected_valid()}")
    if spec.expected_valid():
        assert pki.check_cert(pem, swarm.ca_pem).name == spec.cn
    else:
        with pytest.raises(pki.PKIError) as err:
            pki.check_cert(pem, swarm.ca_pem)
        assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Spec(None, "sl", "p256", 0, -1, 30, "ca"), "has no CN"),  # regression: accepted with name ""
        (Spec("Node_1", "sl", "p256", 0, -1, 30, "ca"), "certificate CN='Node_1' is not allowed"),
        (Spec("node-1", None, "p256", 0, -1, 30, "ca"), "role OU=''"),
        (Spec("node-1", "sl", "rsa", 0, -1, 30, "ca"), "RSAPublicKey key: expected ECDSA P-256"),
        (Spec("node-1", "sl", "ed25519", 0, -1, 30, "ca"), "expected ECDSA P-256"),
        (Spec("node-1", "sl", "p384", 0, -1, 30, "ca"), "secp384r1 key: expected ECDSA P-256"),
        (Spec("node-1", "sl", "p256", 0, -10, -2, "ca"), "is not valid at .* \\(valid "),
        (Spec("node-1", "sl", "p256", 0, -1, 30, "other"), "bad CA signature"),
        (Spec("node-1", "sl", "p256", 0, -1, 30, "self"), "not issued by this swarm CA"),
    ],
)
def test_each_problem_is_named(swarm: Swarm, spec: Spec, message: str) -> None:
    with pytest.raises(pki.PKIError, match=message):
        pki.check_cert(build(swarm, spec), swarm.ca_pem)


def test_san_lists_up_to_the_size_limit(swarm: Swarm) -> None:
    pem = build(swarm, Spec("node-1", "sl", "p256", 3000, -1, 30, "ca"))
    assert len(pem) > Limits().certificate_bytes
    with pytest.raises(
        pki.PKIError, match=r"exceeds the limit of 65536 bytes \(SWARM_MAX_CERTIFICATE_BYTES\)"
    ):
        pki.check_cert(pem, swarm.ca_pem)
    assert pki.check_cert(pem, swarm.ca_pem, limits=Limits(certificate_bytes=1 << 20)).name == "node-1"
    small = build(swarm, Spec("node-1", "sl", "p256", 500, -1, 30, "ca"))
    assert len(small) < Limits().certificate_bytes and pki.check_cert(small, swarm.ca_pem).name == "node-1"


def test_unreadable_node_certificate_names_the_file(swarm: Swarm, tmp_path: Path) -> None:
    """Regression: NodeCert.load of a corrupt tls.crt raised cryptography's bare ValueError."""
    shutil.copytree(swarm.nodes["alice"].cert_path.parent, tmp_path / "alice")
    (tmp_path / "alice" / pki.NODE_CERT).write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(pki.PKIError, match="alice/tls.crt: not a PEM certificate"):
        pki.NodeCert.load(tmp_path / "alice")
    with pytest.raises(pki.PKIError, match="not a PEM certificate"):
        pki.fingerprint(b"garbage")
    with pytest.raises(pki.PKIError, match="not a PEM certificate"):
        pki.verify_signature(b"garbage", b"data", b"sig")


@fuzz(100)
@given(st.binary(max_size=100))
def test_garbage_signatures_are_just_invalid(swarm: Swarm, sig: bytes) -> None:
    assert pki.verify_signature(swarm.nodes["alice"].cert_pem(), b"record", sig) is False


def test_bad_version_field(swarm: Swarm) -> None:
    """Regression (atheris, target cert): X.509 version 18 made cryptography raise InvalidVersion,
    which is not a ValueError, out of check_cert and fingerprint."""
    pem = swarm.nodes["alice"].cert_pem()
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    version = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2 (= v3)
    assert der.count(version) == 1
    bad = _pem(der.replace(version, b"\xa0\x03\x02\x01\x12"))
    with pytest.raises(pki.PKIError, match="not a PEM certificate: 18 is not a valid X509 version"):
        pki.check_cert(bad, swarm.ca_pem)
    with pytest.raises(pki.PKIError, match="not a valid X509 version"):
        pki.fingerprint(bad)


def test_name_attribute_of_the_wrong_type(swarm: Swarm) -> None:
    """Regression (atheris, target cert): an issuer CN encoded as a BIT STRING made cryptography raise
    TypeError ("oid must be X500_UNIQUE_IDENTIFIER for BitString type") out of check_cert."""
    pem = swarm.nodes["alice"].cert_pem()
    der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
    issuer_cn = b"\x06\x03\x55\x04\x03\x0c\x08swarm-ca"  # OID 2.5.4.3, UTF8String "swarm-ca"
    assert der.count(issuer_cn) == 1
    bad = _pem(der.replace(issuer_cn, b"\x06\x03\x55\x04\x03\x03\x08swarm-ca"))  # ... BIT STRING
    with pytest.raises(pki.PKIError, match="malformed certificate: oid must be X500_UNIQUE_IDENTIFIER"):
        pki.check_cert(bad, swarm.ca_pem)
