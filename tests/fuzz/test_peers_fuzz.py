"""The SL peer endpoint over real mTLS on loopback (a throwaway CA): garbage requests get a 4xx or a
closed connection and the server keeps serving; malicious servers make the client raise PeerError
without reading past the model limit. Rejections are logged naming the peer and counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from swarmlearning import pki
from swarmlearning.limits import Limits
from swarmlearning.sl.peers import (
    DIGEST_HEADER,
    ModelKey,
    ModelStore,
    PeerClient,
    PeerError,
    PeerServer,
)
from swarmlearning.sl.weights import digest

from tests.fuzz.conftest import Swarm
from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.integration

MODEL = b"model-bytes" * 100
WAIT_S = 10.0


@dataclass
class Served:
    server: PeerServer
    loop: asyncio.AbstractEventLoop
    port: int


@pytest.fixture(scope="module")
def served(swarm: Swarm) -> Iterator[Served]:
    """alice's PeerServer on 127.0.0.1 (any port), holding one round input, in its own loop thread."""
    store = ModelStore()
    store.put(ModelKey("c", 1, "input"), MODEL)
    # Unfinished requests are closed after a second here (15s by default) so the fuzzing stays fast.
    server = PeerServer(swarm.nodes["alice"], store, "127.0.0.1", 0, limits=Limits(peer_idle_seconds=1))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="peer-server", daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(WAIT_S)
        yield Served(server, loop, port)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(WAIT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()
        assert not thread.is_alive(), "the peer server's loop did not stop within 10s"


def _exchange(port: int, data: bytes, ctx: ssl.SSLContext) -> bytes:
    """Send ``data`` over a fresh TLS connection and return what the server sent up to the end of the
    status line (or b"" when it closed without answering). Fails if it does neither within 10s."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        # The server may close before reading everything (e.g. after a 400).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            tls.sendall(data)
        got = b""
        deadline = time.monotonic() + WAIT_S
        while b"\r\n" not in got:
            if time.monotonic() > deadline:
                pytest.fail(f"the server neither answered nor closed within {WAIT_S}s; got {got[:80]!r}")
            try:
                chunk = tls.recv(4096)
            except TimeoutError:
                pytest.fail(f"the server neither answered nor closed within {WAIT_S}s; got {got[:80]!r}")
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            got += chunk
        return got


def _status(response: bytes) -> int | None:
    if not response:
        return None
    m = re.match(rb"HTTP/\d\.\d (\d{3}) ", response)  # aiohttp echoes the request's version
    assert m, f"not an HTTP answer: {response[:80]!r}"
    return int(m.group(1))


def _assert_still_serving(port: int, ctx: ssl.SSLContext) -> None:
    got = _exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", ctx)
    assert _status(got) == 200, f"health check after a bad request answered {got[:80]!r}"


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_S}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def bob_ctx(swarm: Swarm) -> ssl.SSLContext:
    return pki.client_ssl_context(swarm.nodes["bob"])


@fuzz(120)
@given(st.binary(min_size=1, max_size=2048))
def test_raw_garbage_gets_4xx_or_close(served: Served, bob_ctx: ssl.SSLContext, data: bytes) -> None:
    status = _status(_exchange(served.port, data + b"\r\n\r\n", bob_ctx))
    assert status is None or 400 <= status < 500, f"answered {status} to garbage"
    _assert_still_serving(served.port, bob_ctx)


_token = st.text(st.characters(codec="utf-8"), max_size=30)
_path = st.one_of(
    st.builds(
        lambda c, r, k: f"/v1/models/{c}/{r}/{k}",
        _token,
        _token,
        st.sampled_from(["input", "merged", "x", ""]),
    ),
    st.builds(lambda n: "/" + "a" * n, st.integers(0, 20_000)),
    _token,
)
_header = st.tuples(
    st.one_of(
        st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect"]), _token
    ),
    st.one_of(_token, st.builds(lambda n: "v" * n, st.integers(0, 20_000)), st.integers().map(str)),
)


@fuzz(80)
@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PRI", "G\x00T", ""]),
    _path,
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "FOO", ""]),
    st.lists(_header, max_size=150),
)
def test_absurd_requests_never_get_a_5xx(
    served: Served,
    bob_ctx: ssl.SSLContext,
    method: str,
    path: str,
    version: str,
    headers: list[tuple[str, str]],
) -> None:
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    status = _status(_exchange(served.port, head.encode() + b"\r\n", bob_ctx))
    assert status is None or status < 500, f"answered {status}"
    _assert_still_serving(served.port, bob_ctx)


@pytest.mark.parametrize(
    ("request_head", "status", "kind"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 400, "bad-http"),  # request line over 8190
        (b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n", 400, "bad-http"),  # header line
        (b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)), 400, "bad-http"),
        (b"\x16\x03\x01garbage\r\n", 400, "bad-http"),
        (b"GET /v1/models/c/abc/input HTTP/1.1\r\n", 400, "bad-round"),
        (b"GET /v1/models/c/1_0/input HTTP/1.1\r\n", 400, "bad-round"),  # int() would take it
        (b"GET /v1/models/c/%D9%A1/input HTTP/1.1\r\n", 400, "bad-round"),  # Arabic-Indic 1: int() takes it
        (b"GET /v1/models/c/" + b"9" * 30 + b"/input HTTP/1.1\r\n", 400, "bad-round"),
        (b"GET /v1/models/c/1/weights HTTP/1.1\r\n", 400, "bad-kind"),
        (b"GET /v1/secrets HTTP/1.1\r\n", 404, "unknown-path"),
        (b"POST /v1/health HTTP/1.1\r\nContent-Length: 0\r\n", 405, "method-not-allowed"),
    ],
)
def test_rejections_are_answered_logged_with_the_peer_and_counted(
    served: Served,
    bob_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    request_head: bytes,
    status: int,
    kind: str,
) -> None:
    before = served.server.rejections[kind]
    with caplog.at_level(logging.WARNING, logger="swarmlearning.sl.peers"):
        got = _exchange(served.port, request_head + b"Host: x\r\nConnection: close\r\n\r\n", bob_ctx)
        assert _status(got) == status
        _wait_for(lambda: served.server.rejections[kind] == before + 1, f"rejections[{kind!r}] to count it")
        _wait_for(
            lambda: any("rejected a request from bob" in r.getMessage() and f"({kind})" in r.getMessage()
                        for r in caplog.records),
            "a WARNING naming bob and the reason",
        )  # fmt: skip
    _assert_still_serving(served.port, bob_ctx)


@pytest.mark.parametrize(
    "unfinished",
    [b"PRI /v1/models///input HTTP/1.1\r\n\r\n", b"GET /v1/health HTTP/1.1\r\nHost: x", b""],
)
def test_unfinished_requests_are_closed_after_the_idle_limit(
    served: Served, bob_ctx: ssl.SSLContext, unfinished: bytes
) -> None:
    """Regression: "PRI ..." (the server then waits for an HTTP/2 preface) or a request without its
    blank line kept the connection open for aiohttp's default hour."""
    started = time.monotonic()
    assert _exchange(served.port, unfinished, bob_ctx) == b""
    assert time.monotonic() - started < WAIT_S
    _assert_still_serving(served.port, bob_ctx)


def test_a_model_not_held_is_not_a_rejection(served: Served, bob_ctx: ssl.SSLContext) -> None:
    before = sum(served.server.rejections.values())
    got = _exchange(
        served.port, b"GET /v1/models/c/7/input HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", bob_ctx
    )
    assert _status(got) == 404
    time.sleep(0.2)  # the access log runs after the answer; give a wrong count the chance to appear
    assert sum(served.server.rejections.values()) == before


def test_a_client_without_a_certificate_is_refused_and_the_server_keeps_serving(
    served: Served, swarm: Swarm, bob_ctx: ssl.SSLContext
) -> None:
    anonymous = ssl.create_default_context(cafile=str(swarm.nodes["bob"].ca_path))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        got = _exchange(served.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", anonymous)
        assert got == b"", got  # TLS 1.3: the alert may arrive only on the first read
        raise ssl.SSLError("closed without an answer")
    _assert_still_serving(served.port, bob_ctx)


def test_good_fetch_after_garbage(served: Served, swarm: Swarm, bob_ctx: ssl.SSLContext) -> None:
    for junk in (b"\x00" * 5000, b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 500, b"GET /" + b"%" * 10_000):
        _exchange(served.port, junk + b"\r\n\r\n", bob_ctx)

    async def go() -> bytes:
        client = PeerClient(swarm.nodes["bob"])
        try:
            held = await client.fetch(
                f"127.0.0.1:{served.port}", "c", 1, "input", timeout=WAIT_S, expected_digest=digest(MODEL)
            )
        finally:
            await client.close()
        return held.data

    assert asyncio.run(go()) == MODEL


# ---------------------------------------------------------------- the client against malicious servers


async def _fetch_from(
    swarm: Swarm, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], limits: Limits
) -> tuple[PeerClient, BaseException | bytes]:
    """Serve ``handler`` as bob (real mTLS), fetch from it as alice; the client and the outcome."""
    app = web.Application()
    app.router.add_get("/v1/models/{contract}/{round}/{kind}", handler)
    # shutdown_timeout: the stalling handlers below sleep; cleanup must not wait for them.
    runner = web.AppRunner(
        app, access_log=None, max_field_size=1 << 20, max_line_size=1 << 20, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_ssl_context(swarm.nodes["bob"]))
    await site.start()
    port = runner.addresses[0][1]
    client = PeerClient(swarm.nodes["alice"], limits=limits)
    try:
        held = await client.fetch(f"127.0.0.1:{port}", "c", 1, "input", timeout=WAIT_S)
        return client, held.data
    except PeerError as exc:
        return client, exc
    finally:
        await client.close()
        await runner.cleanup()


def test_endless_body_is_cut_at_the_model_limit(swarm: Swarm, caplog: pytest.LogCaptureFixture) -> None:
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={DIGEST_HEADER: "a" * 64})
        await resp.prepare(request)
        chunk = b"\0" * (1 << 16)
        while sent[0] < 1 << 32:  # 4 GiB: never reached when the client stops at its limit
            await resp.write(chunk)
            sent[0] += len(chunk)
        return resp

    with caplog.at_level(logging.WARNING, logger="swarmlearning.sl.peers"):
        client, outcome = asyncio.run(_fetch_from(swarm, endless, Limits(model_bytes=1 << 20)))
    assert isinstance(outcome, PeerError)
    assert "body exceeds the limit of 1048576 bytes (SWARM_MAX_MODEL_BYTES); stopped reading" in str(outcome)
    assert client.rejections["too-large"] == 1
    assert sent[0] < 64 << 20, f"the server got to send {sent[0]} bytes: the client kept reading"
    assert any("rejected a response from bob" in r.getMessage() for r in caplog.records)


def test_declared_length_over_the_limit_is_refused_before_reading(swarm: Swarm) -> None:
    async def liar(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={DIGEST_HEADER: "a" * 64})
        resp.content_length = 10 << 30
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await asyncio.sleep(WAIT_S * 2)  # a client waiting for the body would time out instead
        return resp

    client, outcome = asyncio.run(_fetch_from(swarm, liar, Limits(model_bytes=1 << 20)))
    assert isinstance(outcome, PeerError)
    assert "body of 10737418240 bytes exceeds the limit of 1048576 bytes (SWARM_MAX_MODEL_BYTES)" in str(
        outcome
    )
    assert client.rejections["too-large"] == 1


def test_huge_error_body_is_not_read(swarm: Swarm) -> None:
    """Regression: a non-200 answer was read whole (``resp.text()``) to quote 200 characters of it."""

    async def big_404(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=404)
        resp.content_length = 4 << 30
        await resp.prepare(request)
        await resp.write(b"e" * 1000)
        await asyncio.sleep(WAIT_S * 2)
        return resp

    _, outcome = asyncio.run(_fetch_from(swarm, big_404, Limits(model_bytes=1 << 20)))
    assert isinstance(outcome, PeerError) and "HTTP 404: 'eeee" in str(outcome) and len(str(outcome)) < 400


@pytest.mark.parametrize(
    ("headers", "body", "kind", "message"),
    [
        ({DIGEST_HEADER: "not-hex"}, b"m", "bad-header", "is not sha256 hex"),
        ({}, b"m", "bad-header", "is not sha256 hex"),
        ({DIGEST_HEADER: "a" * 64}, b"m", "bad-digest", "differs from the served header"),
        ({DIGEST_HEADER: digest(b"m"), "X-Big": "v" * 10_000}, b"m", "bad-header", "ClientResponseError"),
        (
            {DIGEST_HEADER: digest(b"m"), **{f"X-{i}": "1" for i in range(200)}},
            b"m",
            "bad-header",
            "ClientResponseError",
        ),
    ],
)
def test_bad_responses(swarm: Swarm, headers: dict[str, str], body: bytes, kind: str, message: str) -> None:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, headers=headers)

    client, outcome = asyncio.run(_fetch_from(swarm, serve, Limits()))
    assert isinstance(outcome, PeerError) and message in str(outcome), outcome
    assert client.rejections[kind] == 1


@fuzz(60)
@given(st.binary(max_size=1024))
def test_raw_garbage_responses(swarm: Swarm, answer: bytes) -> None:
    async def go() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=pki.server_ssl_context(swarm.nodes["bob"])
        )
        port = srv.sockets[0].getsockname()[1]
        client = PeerClient(swarm.nodes["alice"])
        try:
            await client.fetch(f"127.0.0.1:{port}", "c", 1, "input", timeout=WAIT_S)
        except PeerError as exc:
            assert str(exc)
        else:
            pytest.fail(f"accepted a model from the garbage answer {answer[:80]!r}")
        finally:
            await client.close()
            srv.close()
            await srv.wait_closed()

    asyncio.run(asyncio.wait_for(go(), WAIT_S * 2))
