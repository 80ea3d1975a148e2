"""Who is asking, and may they: client certificates of the swarm's CA, static bearer tokens (local
runs), Kubernetes bearer tokens (TokenReview + SubjectAccessReview). No request is served anonymously.

Rights: ``status`` (everything but models) and ``model`` (merged model downloads). docs/console.md has
the table of who gets which.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import HTTPException, Request

Right = Literal["status", "model"]
RIGHTS: tuple[Right, ...] = ("status", "model")
COOKIE = "swarm_console_token"
"""Cookie the web UI carries the bearer token in (set from ``/?token=…``; HttpOnly, Secure,
SameSite=Strict)."""
TLS_CERT_STATE = "tls_client_cert"
"""Key of the request state under which the server puts the client certificate (DER) of the connection."""
_BEARER_HINT = (
    "send a client certificate of the swarm's CA, or `Authorization: Bearer <token>` "
    "(a console token, or a Kubernetes token in a cluster)"
)


@dataclass(frozen=True)
class Principal:
    name: str
    method: Literal["certificate", "token", "kubernetes"]
    rights: frozenset[str]


class TokenReviewer(Protocol):
    """Checks a Kubernetes bearer token: its user, then each right (see console/kube.py)."""

    async def review(self, token: str) -> Principal | None: ...


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="swarm-console"'})


@dataclass
class Authenticator:
    """``tokens``: static bearer tokens (each grants every right); ``model_roles``/``model_readers``:
    certificate roles (OU) and names (CN) that may download models; ``kubernetes``: a TokenReviewer
    for bearer tokens that are not static ones (None outside a cluster)."""

    tokens: frozenset[str] = frozenset()
    model_roles: frozenset[str] = frozenset({"admin", "sl"})
    model_readers: frozenset[str] = frozenset()
    kubernetes: TokenReviewer | None = None
    cache_s: float = 30.0
    """How long a Kubernetes review's answer is reused (seconds)."""

    def __post_init__(self) -> None:
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def from_certificate(self, der: bytes) -> Principal:
        """A certificate the TLS handshake already verified against the swarm's CA."""
        cert = x509.load_der_x509_certificate(der)
        cn = _attr(cert, NameOID.COMMON_NAME)
        role = _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
        rights = {"status"}
        if role in self.model_roles or cn in self.model_readers:
            rights.add("model")
        return Principal(cn, "certificate", frozenset(rights))

    async def from_token(self, token: str) -> Principal:
        if any(hmac.compare_digest(token, t) for t in self.tokens):
            return Principal("token", "token", frozenset(RIGHTS))
        if self.kubernetes is None:
            raise unauthorized("the bearer token is not valid for this console")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > self.cache_s:
            hit = (now, await self.kubernetes.review(token))
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= self.cache_s}
            self._cache[key] = hit
        if hit[1] is None:
            raise unauthorized("the Kubernetes API server did not accept the bearer token (TokenReview)")
        return hit[1]

    async def authenticate(self, request: Request) -> Principal:
        der = request.scope.get("state", {}).get(TLS_CERT_STATE)
        if der:
            return self.from_certificate(der)
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized(f"the Authorization header must be `Bearer <token>`; {_BEARER_HINT}")
            return await self.from_token(token.strip())
        cookie = request.cookies.get(COOKIE)
        if cookie:
            return await self.from_token(cookie)
        raise unauthorized(f"no credentials: {_BEARER_HINT}")


def require(right: Right) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, once it is known to hold ``right`` (else 401/403)."""

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.auth
        principal = await auth.authenticate(request)
        if right not in principal.rights:
            raise HTTPException(403, f"{principal.name} ({principal.method}) lacks the right {right!r}")
        return principal

    return dependency


def read_tokens(lines: Iterable[str]) -> frozenset[str]:
    """Tokens of a token file: one per line, blank lines and ``#`` comments skipped."""
    return frozenset(t for line in lines if (t := line.strip()) and not t.startswith("#"))


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def rights_list(rights: Collection[str]) -> list[Right]:
    return [r for r in RIGHTS if r in rights]
