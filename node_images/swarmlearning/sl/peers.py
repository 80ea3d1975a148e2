"""SL-to-SL weights exchange over HTTPS with mutual TLS (port 30305 in clusters).

The one module that talks to peers. Every SL node serves, for the rounds it keeps in memory, its own
round input and every merged model it has (as leader or after fetching it):

    GET /v1/models/{contract}/{round}/{kind}     kind = input | merged
        200: safetensors bytes, header ``X-Swarm-Digest`` = sha256 hex of the body; on inputs also
             ``X-Swarm-Final`` and, when its ML process reported them, ``X-Swarm-Loss`` /
             ``X-Swarm-Metric`` (its latest validation loss and metric, decimal floats)
        404: not (or no longer) held here
    GET /v1/health                                200 ``{"node": name}``

TLS: the server presents the node certificate and requires a client certificate signed by the swarm CA
(``pki.server_ssl_context``), so a client without one is refused during the handshake and never sees a
byte of a model. Clients present their node certificate and check the server's against the same CA.
"""

from __future__ import annotations

import logging
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from swarmlearning import pki
from swarmlearning.sl.progress import Progress, finite
from swarmlearning.sl.weights import digest

log = logging.getLogger("swarmlearning.sl.peers")

KINDS = ("input", "merged")
DIGEST_HEADER = "X-Swarm-Digest"
FINAL_HEADER = "X-Swarm-Final"
"""``1`` on an input its node sent after training ended (``on_train_end``)."""
LOSS_HEADER = "X-Swarm-Loss"
METRIC_HEADER = "X-Swarm-Metric"
"""Latest validation loss / metric of the input's node; absent when it reported none."""
KEEP_ROUNDS = 8
"""Models kept per kind: enough for late fetchers and leader retries, bounded memory."""


class PeerError(RuntimeError):
    """A peer could not deliver a model (unreachable, refused, missing, or digest mismatch)."""


@dataclass(frozen=True)
class ModelKey:
    contract: str
    round_no: int
    kind: str


@dataclass(frozen=True)
class HeldModel:
    data: bytes
    digest: str
    final: bool = False
    progress: Progress = Progress()
    """The node's latest validation loss/metric, kept with its round input."""


class ModelStore:
    """Models this node serves, the newest ``KEEP_ROUNDS`` per (contract, kind)."""

    def __init__(self) -> None:
        self._items: OrderedDict[ModelKey, HeldModel] = OrderedDict()

    def put(
        self, key: ModelKey, data: bytes, *, final: bool = False, progress: Progress | None = None
    ) -> str:
        """Store ``data`` under ``key`` (with the node's ``progress`` for inputs); returns its digest."""
        d = digest(data)
        self._items[key] = HeldModel(data, d, final, progress or Progress())
        self._items.move_to_end(key)
        same = [k for k in self._items if k.contract == key.contract and k.kind == key.kind]
        for old in sorted(same, key=lambda k: k.round_no)[:-KEEP_ROUNDS]:
            del self._items[old]
        return d

    def get(self, key: ModelKey) -> HeldModel | None:
        return self._items.get(key)


class PeerServer:
    """HTTPS server for this node's models; requires client certificates from the swarm CA."""

    def __init__(self, node: pki.NodeCert, store: ModelStore, host: str, port: int) -> None:
        self.node, self.store, self.host, self.port = node, store, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with ``port=0``)."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/models/{contract}/{round}/{kind}", self._model)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=pki.server_ssl_context(self.node))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"node": self.node.name})

    async def _model(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        try:
            round_no = int(request.match_info["round"])
        except ValueError:
            return web.Response(status=400, text="round must be an integer")
        if kind not in KINDS:
            return web.Response(status=400, text=f"kind must be one of {', '.join(KINDS)}")
        held = self.store.get(ModelKey(request.match_info["contract"], round_no, kind))
        if held is None:
            return web.Response(
                status=404, text=f"{self.node.name} holds no {kind} model for round {round_no}"
            )
        headers = {DIGEST_HEADER: held.digest, FINAL_HEADER: "1" if held.final else "0"}
        headers.update(progress_headers(held.progress))
        return web.Response(body=held.data, content_type="application/octet-stream", headers=headers)


class PeerClient:
    """Fetches models from other SL nodes, presenting this node's certificate."""

    def __init__(self, node: pki.NodeCert) -> None:
        self._ssl: ssl.SSLContext = pki.client_ssl_context(node)
        self._session: aiohttp.ClientSession | None = None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self,
        endpoint: str,
        contract: str,
        round_no: int,
        kind: str,
        *,
        timeout: float,
        expected_digest: str | None = None,
    ) -> HeldModel:
        """GET a model from the SL server at ``endpoint`` (``host:port``) within ``timeout`` seconds;
        returns its bytes, digest, whether its node had finished training and the node's reported
        progress (untrusted: only finite values are kept).

        Raises PeerError when unreachable, refused, missing, or when the body's digest differs from the
        served header or from ``expected_digest`` (the digest recorded in the ledger).
        """
        url = f"https://{endpoint}/v1/models/{contract}/{round_no}/{kind}"
        session = await self._get_session()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    text = (await resp.text())[:200]
                    raise PeerError(f"{url}: HTTP {resp.status}: {text}")
                body = await resp.read()
                served = resp.headers.get(DIGEST_HEADER, "")
                final = resp.headers.get(FINAL_HEADER) == "1"
                progress = parse_progress_headers(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{url}: {type(exc).__name__}: {exc}") from exc
        actual = digest(body)
        if served != actual:
            raise PeerError(f"{url}: body digest {actual[:12]} differs from the served header {served[:12]}")
        if expected_digest is not None and actual != expected_digest:
            raise PeerError(f"{url}: digest {actual[:12]} differs from the ledger's {expected_digest[:12]}")
        return HeldModel(body, actual, final, progress)


def progress_headers(progress: Progress) -> dict[str, str]:
    """HTTP headers for the values ``progress`` has (``repr`` round-trips a float exactly)."""
    out: dict[str, str] = {}
    for header, value in ((LOSS_HEADER, progress.loss), (METRIC_HEADER, progress.metric)):
        if (v := finite(value)) is not None:
            out[header] = repr(v)
    return out


def parse_progress_headers(headers: Mapping[str, str]) -> Progress:
    """The peer's progress from response ``headers``; missing, malformed or non-finite values are None."""
    return Progress(finite(headers.get(LOSS_HEADER)), finite(headers.get(METRIC_HEADER)))
