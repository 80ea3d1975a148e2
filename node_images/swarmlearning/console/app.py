"""The console's HTTP application: the REST API under /api/v1 (OpenAPI generated from console/models.py),
the live event stream, and the web UI's pages (console/pages.py). The server around it is console/main.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from swarmlearning.ledger import Record

from . import pages, views
from .auth import COOKIE, Authenticator, Principal, require, rights_list
from .kube import KubeAccess
from .models import ChainAudit, Network, Node, Problem, Round, Task, TaskDetail, WhoAmI
from .source import ModelUnavailable, SwarmSource, Unavailable

PREFIX = "/api/v1"
CONTRACT = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
"""The ledger's contract-name rule."""
KEEPALIVE_S = 15.0
"""Seconds between comment lines on an idle event stream (keeps proxies from closing it)."""
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no or invalid credentials"},
    403: {"model": Problem, "description": "the caller lacks the right"},
    422: {"model": Problem, "description": "a malformed parameter, named in the message"},
    503: {"model": Problem, "description": "the SN (ledger) cannot be read"},
}

Status = Annotated[Principal, Depends(require("status"))]
ModelRight = Annotated[Principal, Depends(require("model"))]
ContractPath = Annotated[str, Path(pattern=CONTRACT, description="training contract (SwarmTask's contract)")]
RoundPath = Annotated[int, Path(ge=1, le=10**18, description="round number, from 1")]


def create_app(source: SwarmSource, auth: Authenticator, kube: KubeAccess | None = None) -> FastAPI:
    """The console for one swarm. ``source`` is started and stopped with the application."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await source.start()
        try:
            yield
        finally:
            await source.stop()

    app = FastAPI(
        title="Swarm console",
        version="1",
        description="Read-only view of one swarm: its ledger, rounds, members and merged models.",
        openapi_url=None,  # served below, behind authentication
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.auth = auth
    app.state.source = source

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """JSON for the API; a short readable page for a browser asking for one of the UI's pages."""
        headers = dict(exc.headers or {})
        if request.url.path.startswith(PREFIX) or "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
        return HTMLResponse(_error_page(exc.status_code, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(ModelUnavailable)
    async def _no_model(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.middleware("http")
    async def _token_login(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """``?token=`` on a page sets the UI's cookie and redirects to the same page without it."""
        token = request.query_params.get("token")
        if token is None or request.method != "GET" or request.url.path.startswith(PREFIX):
            return await call_next(request)
        try:
            await auth.from_token(token)
        except HTTPException as exc:
            return await _http_error(request, exc)
        resp = RedirectResponse(request.url.path, status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict")
        return resp

    async def records() -> list[Record]:
        return await source.current()

    async def find_round(contract: str, round_no: int) -> Round:
        for r in views.rounds(await records(), contract):
            if r.round == round_no:
                return r
        raise HTTPException(404, f"round {round_no} of contract {contract!r} is not on the ledger")

    async def with_kubernetes(tasks: list[Task]) -> list[Task]:
        if kube is None:
            return tasks
        refs = {t.contract: t for t in await kube.tasks()}
        return [
            t.model_copy(update={"swarm_task": refs[t.contract].name, "phase": refs[t.contract].phase})
            if t.contract in refs
            else t
            for t in tasks
        ]

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False)
    async def openapi(_: Status) -> dict[str, Any]:
        return app.openapi()

    @app.get(f"{PREFIX}/whoami", responses=ERRORS)
    async def whoami(p: Status) -> WhoAmI:
        return WhoAmI(principal=p.name, method=p.method, rights=rights_list(p.rights))

    @app.get(f"{PREFIX}/network", responses=ERRORS)
    async def network(_: Status) -> Network:
        return await source.network()

    @app.get(f"{PREFIX}/nodes", responses=ERRORS)
    async def nodes(_: Status) -> list[Node]:
        recs = await records()
        return views.nodes(recs, await source.live_members())

    @app.get(f"{PREFIX}/tasks", responses=ERRORS)
    async def tasks(_: Status) -> list[Task]:
        return await with_kubernetes(views.tasks(await records()))

    @app.get(f"{PREFIX}/tasks/{{contract}}", responses={**ERRORS, 404: {"model": Problem}})
    async def task(contract: ContractPath, _: Status) -> TaskDetail:
        found = views.task(await records(), contract)
        if found is None:
            raise HTTPException(404, f"contract {contract!r} is not on the ledger")
        (t,) = await with_kubernetes([found[0]])
        return TaskDetail(**t.model_dump(), rounds=found[1])

    @app.get(f"{PREFIX}/tasks/{{contract}}/rounds", responses=ERRORS)
    async def rounds(
        contract: ContractPath,
        _: Status,
        since: Annotated[int, Query(ge=0, le=10**18, description="only rounds after this one")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="at most this many rounds")] = 1000,
    ) -> list[Round]:
        return [r for r in views.rounds(await records(), contract) if r.round > since][:limit]

    @app.get(
        f"{PREFIX}/tasks/{{contract}}/rounds/{{round_no}}", responses={**ERRORS, 404: {"model": Problem}}
    )
    async def one_round(contract: ContractPath, round_no: RoundPath, _: Status) -> Round:
        return await find_round(contract, round_no)

    model_responses: dict[int | str, dict[str, Any]] = {
        **ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors bytes"},
        404: {"model": Problem, "description": "no such round, or no live SL node holds its model"},
    }

    async def model_response(rnd: Round) -> Response:
        m = await source.model(rnd)
        name = f"{rnd.contract}-round-{rnd.round}.safetensors"
        return Response(
            m.data,
            media_type="application/octet-stream",
            headers={
                "X-Swarm-Digest": m.digest,
                "X-Swarm-Served-By": m.served_by,
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )

    @app.get(
        f"{PREFIX}/tasks/{{contract}}/rounds/{{round_no}}/model",
        response_class=Response,
        responses=model_responses,
    )
    async def round_model(contract: ContractPath, round_no: RoundPath, _: ModelRight) -> Response:
        return await model_response(await find_round(contract, round_no))

    @app.get(f"{PREFIX}/tasks/{{contract}}/model", response_class=Response, responses=model_responses)
    async def task_model(contract: ContractPath, _: ModelRight) -> Response:
        committed = [r for r in views.rounds(await records(), contract) if r.result == "round"]
        if not committed:
            raise HTTPException(404, f"contract {contract!r} has no committed round")
        return await model_response(committed[-1])

    @app.get(f"{PREFIX}/ledger", responses=ERRORS)
    async def ledger(_: Status) -> dict[str, Any]:
        """The ledger export: records, the certificates that signed them, the chain head."""
        return (await source.snapshot()).to_json()

    @app.get(f"{PREFIX}/ledger/verify", responses=ERRORS)
    async def verify(_: Status) -> ChainAudit:
        report = await source.verify()
        return ChainAudit(
            ok=report.ok,
            count=report.count,
            bad_seq=report.bad_seq,
            reason=report.reason,
            message=report.message(),
        )

    @app.get(
        f"{PREFIX}/events",
        response_class=StreamingResponse,
        responses={
            **ERRORS,
            200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
        },
    )
    async def events(
        _: Status,
        contract: Annotated[
            str | None, Query(pattern=CONTRACT, description="only this contract's events")
        ] = None,
        last_event_id: Annotated[
            int | None, Header(ge=-1, le=10**18, description="resume after this record seq (SSE reconnects)")
        ] = None,
    ) -> StreamingResponse:
        """Server-sent events as records commit: `round` (a round closed or got its result, the round's
        JSON), `member` (an SL node joined), `contract` (a task began). Each event's id is its record's
        seq."""
        queue = source.subscribe()
        backlog = [r for r in source.records if last_event_id is not None and r.seq > last_event_id]
        return StreamingResponse(
            _stream(source, queue, backlog, contract),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.include_router(pages.router)
    return app


def _error_page(status: int, detail: str) -> str:
    hint = (
        "<p>Open the console with the URL it printed (<code>…/?token=…</code>), or present a client "
        "certificate of the swarm's CA.</p>"
        if status == 401
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Swarm console: '
        f"{status}</title></head><body><h1>{status}</h1><p>{html.escape(detail)}</p>{hint}</body></html>"
    )


async def _stream(
    source: SwarmSource, queue: asyncio.Queue[Record], backlog: list[Record], contract: str | None
) -> AsyncIterator[str]:
    try:
        yield "retry: 3000\n\n"
        pending = list(backlog)
        while True:
            if pending:
                rec = pending.pop(0)
            else:
                try:
                    rec = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
            event = _event(source, rec, contract)
            if event is not None:
                data = json.dumps(event[1], separators=(",", ":"))
                yield f"id: {rec.seq}\nevent: {event[0]}\ndata: {data}\n\n"
    finally:
        source.unsubscribe(queue)


def _event(source: SwarmSource, rec: Record, contract: str | None) -> tuple[str, Any] | None:
    """The event of ``rec``, as the ledger stood when it was written (a close is an open round)."""
    upto = source.records[: rec.seq + 1]
    if rec.kind == "member":
        return "member", {
            "name": rec.author,
            "organisation": rec.body.get("organisation", ""),
            "time": rec.time,
        }
    if contract is not None and rec.contract != contract:
        return None
    if rec.kind == "contract":
        found = views.task(upto, rec.contract)
        return ("contract", found[0].model_dump()) if found else None
    if rec.kind in ("close", "round", "abandon"):
        n = rec.body.get("round")
        for r in views.rounds(upto, rec.contract):
            if r.round == n:
                return "round", r.model_dump()
    return None
