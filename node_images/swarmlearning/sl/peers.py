"""SL-to-SL weights exchange over HTTPS with mutual TLS (port 30305 in clusters).

The one module that talks to peers. Every SL node serves, for the rounds it keeps in memory, its own
round input and every merged model it has (as leader or after fetching it):

    GET /v1/models/{contract}/{round}/{kind}     kind = input | merged
        200: safetensors bytes, header ``X-Swarm-Digest`` = sha256 hex of the body; on inputs also
             ``X-Swarm-Final`` and, when its ML process reported them, ``X-Swarm-Loss`` /
             ``X-Swarm-Metric`` / ``X-Swarm-Epsilon`` (its latest validation loss and metric, the ε
             its DP-SGD spent; decimal floats)
        404: not (or no longer) held here
    GET /v1/health                                200 ``{"node": name}``

TLS: the server presents the node certificate and requires a client certificate signed by the swarm CA
(``pki.server_ssl_context``), so a client without one is refused during the handshake and never sees a
byte of a model. Clients present their node certificate and check the server's against the same CA.

Both directions read bytes another party controls, bounded by :class:`swarmlearning.limits.Limits`:
the server's HTTP parser by the request line / header field / header count limits (a bad request gets a
4xx and the connection stays usable or is closed), the client's by the same limits on the response and
by ``model_bytes`` on the body, checked while reading (never after buffering it). Every rejection is
logged at WARNING naming the peer (certificate CN, else address) and counted in ``rejections``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import ssl
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from swarmlearning import pki
from swarmlearning.limits import Limits, describe
from swarmlearning.sl.kinds import CHUNKS, FAMILIES, chunk_kind, chunk_range, family_of, frame_chunks
from swarmlearning.sl.metrics import SLMetrics
from swarmlearning.sl.progress import Progress, finite
from swarmlearning.weights_format import digest  # torch-free: the console imports this module

log = logging.getLogger("swarmlearning.sl.peers")
_http_log = logging.getLogger("swarmlearning.sl.peers.http")
"""aiohttp's own server log: its tracebacks for unparsable requests are dropped (they are logged as
rejections instead); anything else it reports (a failing handler) stays."""


class _DropParseErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


_http_log.addFilter(_DropParseErrors())

KINDS = FAMILIES
DIGEST_HEADER = "X-Swarm-Digest"
FINAL_HEADER = "X-Swarm-Final"
"""``1`` on an input its node sent after training ended (``on_train_end``)."""
LOSS_HEADER = "X-Swarm-Loss"
METRIC_HEADER = "X-Swarm-Metric"
EPSILON_HEADER = "X-Swarm-Epsilon"
"""Latest validation loss / metric / DP-SGD ε of the input's node; absent when it reported none."""
KEEP_ROUNDS = 8
"""Models kept per kind: enough for late fetchers and leader retries, bounded memory."""
KEEP_CHUNK_ROUNDS = 2
"""Chunks and manifests are needed only while their round runs (slice leader retries)."""
ROUND_RE = re.compile(r"[0-9]{1,18}")
"""A round number in a path: ASCII digits only (``int`` would also take ``" 1"``, ``"1_0"``, ``"١"``)."""
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
ERROR_BODY_BYTES = 200
"""Bytes of a peer's error response quoted in a PeerError (the rest is never read)."""
_CLIENT_MAX_HEADERS = "max_headers" in inspect.signature(aiohttp.ClientSession.__init__).parameters
"""aiohttp >= 3.13.4 can bound the number of response headers; older ones (pyproject allows 3.9) cannot."""
_HANDLED: Any = (
    web.ResponseKey("swarm_rejection", str) if hasattr(web, "ResponseKey") else "swarm_rejection"
)  # a typed key where aiohttp has them (3.13+), else the string key older versions use
"""Response key set by the handlers: the access log leaves those responses alone."""


class PeerError(RuntimeError):
    """A peer could not deliver a model (unreachable, refused, missing, or digest mismatch).

    ``kind``: the client's rejection kind (``too-large``, ``bad-digest``, ``bad-header``) when the peer
    answered with something this node refused, "" when it could not deliver at all."""

    def __init__(self, message: str, kind: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        """The HTTP status of a peer that answered without the model (404: not held yet), else 0."""


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
    reader: str = ""
    """The one peer (certificate CN) this may be served to; "" = any peer of the swarm."""


class ModelStore:
    """Models this node serves, the newest ``KEEP_ROUNDS`` per (contract, kind)."""

    def __init__(self) -> None:
        self._items: OrderedDict[ModelKey, HeldModel] = OrderedDict()

    def put(
        self,
        key: ModelKey,
        data: bytes,
        *,
        final: bool = False,
        progress: Progress | None = None,
        reader: str = "",
    ) -> str:
        """Store ``data`` under ``key`` (with the node's ``progress`` for inputs; only for peer ``reader``
        when given); returns its digest."""
        d = digest(data)
        self._items[key] = HeldModel(data, d, final, progress or Progress(), reader)
        self._items.move_to_end(key)
        family = family_of(key.kind)
        keep = KEEP_ROUNDS if family in ("input", "merged") else KEEP_CHUNK_ROUNDS
        same = [k for k in self._items if k.contract == key.contract and family_of(k.kind) == family]
        rounds = sorted({k.round_no for k in same})[:-keep]
        for old in same:
            if old.round_no in rounds:
                del self._items[old]
        return d

    def chunks(self, contract: str, round_no: int, family: str, first: int, stop: int) -> HeldModel | None:
        """Chunks ``first`` .. ``stop - 1`` of ``family`` as one framed body (see ``kinds.frame_chunks``),
        with the first chunk's finished flag and progress; None unless every one is held."""
        held = [
            self._items.get(ModelKey(contract, round_no, chunk_kind(family, i))) for i in range(first, stop)
        ]
        if any(h is None for h in held):
            return None
        parts = [h for h in held if h is not None]
        body = frame_chunks([h.data for h in parts])
        return HeldModel(body, digest(body), parts[0].final, parts[0].progress)

    def drop(self, key: ModelKey) -> None:
        """Forget ``key`` (e.g. a round input whose round is merged sharded: nobody fetches it whole)."""
        self._items.pop(key, None)

    def get(self, key: ModelKey) -> HeldModel | None:
        return self._items.get(key)


class PeerServer:
    """HTTPS server for this node's models; requires client certificates from the swarm CA.

    ``rejections`` counts refused requests by kind: ``bad-http`` (unparsable, or over a request line /
    header limit), ``unknown-path``, ``method-not-allowed``, ``bad-round``, ``bad-kind`` and ``http-<status>``
    for other 4xx answers. A model that is simply not held (404) is not a rejection. ``metrics``: counts
    the model bytes served (and the merged models' distribution)."""

    def __init__(
        self,
        node: pki.NodeCert,
        store: ModelStore,
        host: str,
        port: int,
        *,
        limits: Limits | None = None,
        metrics: SLMetrics | None = None,
    ) -> None:
        self.node, self.store, self.host, self.port = node, store, host, port
        self.limits = limits or Limits.from_env()
        self.metrics = metrics
        self.rejections: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (useful with ``port=0``)."""
        app = web.Application(client_max_size=1024)
        app.router.add_get("/v1/health", self._health)
        app.router.add_get("/v1/models/{contract}/{round}/{kind}", self._model)
        self._runner = web.AppRunner(
            app,
            access_log=log,
            access_log_class=_rejection_log(self),
            logger=_http_log,
            max_line_size=self.limits.request_line_bytes,
            max_field_size=self.limits.header_field_bytes,
            max_headers=self.limits.header_count,
            # Also closes a connection stuck in an unfinished request (e.g. "PRI ..." waiting for an
            # HTTP/2 preface), which aiohttp otherwise keeps for an hour.
            keepalive_timeout=float(self.limits.peer_idle_seconds),
        )
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
        return _handled(web.json_response({"node": self.node.name}))

    async def _model(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        raw_round = request.match_info["round"]
        if not ROUND_RE.fullmatch(raw_round):
            return self._reject(
                request, 400, "bad-round", f"round must be 1-18 ASCII digits, got {raw_round!r:.40}"
            )
        round_no = int(raw_round)
        if family_of(kind) is None:
            return self._reject(
                request,
                400,
                "bad-kind",
                f"kind must be one of {', '.join(KINDS)} (chunks as <kind>-<0..{CHUNKS - 1}>), "
                f"got {kind!r:.40}",
            )
        contract = request.match_info["contract"]
        held = self.store.get(ModelKey(contract, round_no, kind))
        if held is None and (span := chunk_range(kind)) is not None:
            held = self.store.chunks(contract, round_no, *span)
        if held is None:
            return _handled(
                web.Response(status=404, text=f"{self.node.name} holds no {kind} model for round {round_no}")
            )
        if held.reader and _peer_of(request) != held.reader:
            return self._reject(
                request, 403, "not-reader", f"{kind} of round {round_no} is for {held.reader} only"
            )
        headers = {DIGEST_HEADER: held.digest, FINAL_HEADER: "1" if held.final else "0"}
        headers.update(progress_headers(held.progress))
        if self.metrics is not None:
            self.metrics.model_sent(request.match_info["contract"], round_no, kind, len(held.data))
        return _handled(
            web.Response(body=held.data, content_type="application/octet-stream", headers=headers)
        )

    def _reject(self, request: web.BaseRequest, status: int, kind: str, reason: str) -> web.Response:
        self.record_rejection(_peer_of(request), kind, reason)
        return _handled(web.Response(status=status, text=reason), kind)

    def record_rejection(self, peer: str, kind: str, reason: str) -> None:
        """Log (WARNING) and count a refused request from ``peer`` (CN or address)."""
        self.rejections[kind] += 1
        log.warning("%s: rejected a request from %s: %s (%s)", self.node.name, peer, reason, kind)


def _handled(resp: web.Response, kind: str = "") -> web.Response:
    resp[_HANDLED] = kind
    return resp


def _peer_of(request: web.BaseRequest) -> str:
    """The peer's certificate CN when the TLS connection has one, else its address."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is not None:
        try:
            return pki.peer_name(ssl_object) or f"a peer without CN at {request.remote}"
        except pki.PKIError:
            pass
    return str(request.remote or "an unknown address")


def _rejection_log(server: PeerServer) -> type[AbstractAccessLogger]:
    """An access logger (aiohttp calls it for every response, also those to unparsable requests,
    which never reach a handler) that records 4xx answers the handlers did not produce themselves."""

    class RejectionLog(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            if response.status < 400 or _HANDLED in response:
                return
            kind = {400: "bad-http", 404: "unknown-path", 405: "method-not-allowed"}.get(
                response.status, f"http-{response.status}"
            )
            text = response.text if isinstance(response, web.Response) else None
            reason = " ".join((text or f"HTTP {response.status}").split())[:200]
            server.record_rejection(_peer_of(request), kind, reason)

    return RejectionLog


class PeerClient:
    """Fetches models from other SL nodes, presenting this node's certificate.

    ``rejections`` counts refused responses by kind: ``too-large`` (over ``limits.model_bytes``),
    ``bad-digest`` (body differs from the served header or the ledger), ``bad-header`` (unparsable
    response, a header over the limits, a malformed digest header). ``metrics``: counts the model bytes
    downloaded."""

    def __init__(
        self, node: pki.NodeCert, *, limits: Limits | None = None, metrics: SLMetrics | None = None
    ) -> None:
        self._ssl: ssl.SSLContext = pki.client_ssl_context(node)
        self._session: aiohttp.ClientSession | None = None
        self.limits = limits or Limits.from_env()
        self.metrics = metrics
        self.rejections: Counter[str] = Counter()

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            count = {"max_headers": self.limits.header_count} if _CLIENT_MAX_HEADERS else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
                max_line_size=self.limits.request_line_bytes,
                max_field_size=self.limits.header_field_bytes,
                auto_decompress=False,  # a model is never compressed; a "gzip" body could be a zip bomb
                **count,  # type: ignore[arg-type]
            )
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

        Raises PeerError when unreachable, refused, missing, when the body exceeds
        ``limits.model_bytes`` (reading stops there), or when the body's digest differs from the
        served header or from ``expected_digest`` (the digest recorded in the ledger).
        """
        url = f"https://{endpoint}/v1/models/{contract}/{round_no}/{kind}"
        limit = self.limits.model_bytes
        session = await self._get_session()
        peer = endpoint
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                peer = _server_name(resp) or endpoint
                if resp.status != 200:
                    text = (await resp.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")
                    raise PeerError(f"{url}: HTTP {resp.status}: {text!r}", status=resp.status)
                served = resp.headers.get(DIGEST_HEADER, "")
                if not DIGEST_RE.fullmatch(served):
                    raise self._rejected(
                        peer, "bad-header", f"{url}: {DIGEST_HEADER} {served[:80]!r} is not sha256 hex"
                    )
                declared = resp.content_length
                if declared is not None and declared > limit:
                    allowed = describe(self.limits, "model_bytes")
                    raise self._rejected(
                        peer, "too-large", f"{url}: body of {declared} bytes exceeds the limit of {allowed}"
                    )
                final = resp.headers.get(FINAL_HEADER) == "1"
                progress = parse_progress_headers(resp.headers)
                body = bytearray()
                hasher = hashlib.sha256()
                async for chunk in resp.content.iter_chunked(1 << 20):
                    if len(body) + len(chunk) > limit:
                        raise self._rejected(
                            peer,
                            "too-large",
                            f"{url}: body exceeds the limit of {describe(self.limits, 'model_bytes')}; "
                            "stopped reading",
                        )
                    body += chunk
                    hasher.update(chunk)
        except aiohttp.ClientResponseError as exc:  # includes an unparsable response or oversized headers
            raise self._rejected(
                peer, "bad-header", f"{url}: {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerError(f"{url}: {type(exc).__name__}: {str(exc)[:300]}") from exc
        actual = hasher.hexdigest()
        if served != actual:
            raise self._rejected(
                peer,
                "bad-digest",
                f"{url}: body digest {actual[:12]} differs from the served header {served[:12]}",
            )
        if expected_digest is not None and actual != expected_digest:
            raise self._rejected(
                peer,
                "bad-digest",
                f"{url}: digest {actual[:12]} differs from the ledger's {expected_digest[:12]}",
            )
        if self.metrics is not None:
            self.metrics.model_received(kind, len(body))
        return HeldModel(bytes(body), actual, final, progress)

    def _rejected(self, peer: str, kind: str, reason: str) -> PeerError:
        """Log (WARNING) and count a refused response from ``peer``; returns the error to raise."""
        self.rejections[kind] += 1
        log.warning("rejected a response from %s: %s (%s)", peer, reason, kind)
        return PeerError(reason, kind)


def _server_name(resp: aiohttp.ClientResponse) -> str:
    """CN of the server's (CA-verified) certificate, "" when unknown."""
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    try:
        return pki.peer_name(ssl_object)
    except pki.PKIError:
        return ""


def progress_headers(progress: Progress) -> dict[str, str]:
    """HTTP headers for the values ``progress`` has (``repr`` round-trips a float exactly)."""
    out: dict[str, str] = {}
    for header, value in (
        (LOSS_HEADER, progress.loss),
        (METRIC_HEADER, progress.metric),
        (EPSILON_HEADER, progress.epsilon),
    ):
        if (v := finite(value)) is not None:
            out[header] = repr(v)
    return out


def parse_progress_headers(headers: Mapping[str, str]) -> Progress:
    """The peer's progress from response ``headers``; missing, malformed or non-finite values are None."""
    return Progress(
        finite(headers.get(LOSS_HEADER)),
        finite(headers.get(METRIC_HEADER)),
        finite(headers.get(EPSILON_HEADER)),
    )
