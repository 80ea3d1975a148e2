"""`swarm-console`: the console server (TLS always; see docs/console.md for flags and access)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from swarmlearning import pki

from .app import create_app
from .auth import TLS_CERT_STATE, Authenticator, read_tokens
from .source import SwarmSource

log = logging.getLogger("swarmlearning.console")
DEFAULT_PORT = 30306


class ClientCertProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, also handing the connection's client certificate (DER, verified by
    the handshake against the swarm's CA) to every request on it as ``request.state.tls_client_cert``:
    uvicorn does not pass TLS details to the application otherwise."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, TLS_CERT_STATE: der}


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"SWARM_CONSOLE_{name.upper().replace('-', '_')}", default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="swarm-console",
        description="The swarm console: REST API, live events and web UI over TLS (docs/console.md). "
        "Every flag also reads SWARM_CONSOLE_<FLAG>.",
    )
    p.add_argument("--sn", default=_env("sn"), help="SN API endpoints host:port[,host:port…]")
    p.add_argument("--ca", default=_env("ca"), help="the swarm CA certificate (PEM)")
    p.add_argument("--cert", default=_env("cert"), help="the console's certificate (role operator), PEM")
    p.add_argument("--key", default=_env("key"), help="its private key, PEM")
    p.add_argument("--host", default=_env("host", "0.0.0.0"), help="address to listen on (default 0.0.0.0)")
    p.add_argument(
        "--port", type=int, default=int(_env("port", DEFAULT_PORT)), help="port (default 30306; 0 = any free)"
    )
    p.add_argument(
        "--network", default=_env("network", "swarm"), help="the SwarmNetwork's name (default swarm)"
    )
    p.add_argument("--namespace", default=_env("namespace"), help="its namespace (with --kubernetes)")
    p.add_argument(
        "--kubernetes",
        action="store_true",
        default=_env("kubernetes", "") in ("1", "true"),
        help="in a cluster: check bearer tokens with TokenReview/SubjectAccessReview, show SwarmTasks",
    )
    p.add_argument("--token-file", default=_env("token_file"), help="static bearer tokens, one per line")
    p.add_argument(
        "--model-roles",
        default=_env("model_roles", "admin,sl"),
        help="certificate roles that may download models",
    )
    p.add_argument(
        "--model-readers", default=_env("model_readers", ""), help="certificate CNs that may download models"
    )
    p.add_argument(
        "--port-file", default=_env("port_file"), help="write the port listened on here once serving"
    )
    a = p.parse_args(argv)
    missing = [f"--{n}" for n in ("sn", "ca", "cert", "key") if not getattr(a, n)]
    if missing:
        p.error(f"missing {', '.join(missing)} (or SWARM_CONSOLE_{missing[0][2:].upper()})")
    if not 0 <= a.port <= 65535:
        p.error(f"--port={a.port} must be 0-65535")
    if a.kubernetes and not a.namespace:
        p.error("--kubernetes needs --namespace")
    return a


def _identity(a: argparse.Namespace) -> pki.NodeCert:
    """The console's certificate (its files may live anywhere, e.g. a mounted Secret), checked
    against the swarm's CA."""
    identity = pki.NodeCert.from_files(a.cert, a.key, a.ca)
    pki.check_cert(identity.cert_pem(), identity.ca_pem())
    return identity


class _Server(uvicorn.Server):
    """Writes the bound port to ``port_file`` once listening (port 0 picks a free one)."""

    def __init__(self, config: uvicorn.Config, port_file: str | None) -> None:
        super().__init__(config)
        self.port_file = port_file

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            log.info("console serving on https://%s:%d/", self.config.host, port)
            if self.port_file:
                tmp = Path(f"{self.port_file}.tmp")
                tmp.write_text(str(port))
                tmp.replace(self.port_file)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    try:
        identity = _identity(a)
    except (OSError, pki.PKIError) as exc:
        print(f"swarm-console: {exc}", file=sys.stderr)
        return 2
    kube = None
    if a.kubernetes:
        from .kube import KubeAccess

        kube = KubeAccess(a.namespace, a.network)
    tokens = read_tokens(Path(a.token_file).read_text().splitlines()) if a.token_file else frozenset()
    auth = Authenticator(
        tokens=tokens,
        model_roles=frozenset(r for r in a.model_roles.split(",") if r),
        model_readers=frozenset(r for r in a.model_readers.split(",") if r),
        kubernetes=kube,
    )
    source = SwarmSource(a.sn.split(","), identity, network=a.network, namespace=a.namespace)
    config = uvicorn.Config(
        create_app(source, auth, kube),
        host=a.host,
        port=a.port,
        ssl_certfile=a.cert,
        ssl_keyfile=a.key,
        ssl_ca_certs=a.ca,
        ssl_cert_reqs=ssl.CERT_OPTIONAL,  # a certificate, when sent, must be the swarm CA's; else a token
        http=ClientCertProtocol,
        lifespan="on",
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, a.port_file)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
