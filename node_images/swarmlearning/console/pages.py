"""The console's web UI: the swarm page ``/`` and a task's page ``/tasks/{contract}``.

The pages are rendered with Jinja2 as the document's structure (headings, empty tables, chart frames);
their small scripts (``ui/static``, no framework, nothing from outside the console) fill them from the
REST API and keep them current from its event stream, so the browser shows exactly what the API serves
and a failed call (401, 403, 5xx, a dropped stream) is shown on the page. Every route needs the
``status`` right, like the API: nothing is served anonymously, not even the scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from swarmlearning.console import auth
from swarmlearning.ledger.client import check_contract_name

UI_DIR = Path(__file__).resolve().parent / "ui"
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"

_MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

# The pages load only the console's own scripts and styles and talk only to the console; the token in
# the sign-in URL must not leak through a Referer header.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=TEMPLATES_DIR)
router = APIRouter(include_in_schema=False)
Status = Annotated[Any, Depends(auth.require("status"))]
"""The caller's principal, once it is known to hold the ``status`` right (else 401/403, as the API)."""


def _static_files() -> dict[str, Path]:
    """The files ``/static/{name}`` serves: a fixed set, so no request path ever reaches the file system."""
    return {p.name: p for p in sorted(STATIC_DIR.iterdir()) if p.suffix in _MEDIA_TYPES}


STATIC_FILES = _static_files()


def _page(request: Request, template: str, context: dict[str, Any]) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context)
    response.headers.update(_PAGE_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def swarm_page(request: Request, _: Status) -> HTMLResponse:
    """The swarm: SN members, ledger and its audit, membership, tasks."""
    return _page(request, "swarm.html", {"title": "Swarm"})


@router.get("/tasks/{contract}", response_class=HTMLResponse)
def task_page(request: Request, contract: str, _: Status) -> HTMLResponse:
    """One training contract: live loss and metric curves per node, the round timeline, the model."""
    try:
        check_contract_name(contract)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"path parameter contract: {e}") from e
    return _page(request, "task.html", {"title": f"Task {contract}", "contract": contract})


@router.get("/static/{name}")
def static_file(name: str, _: Status) -> Response:
    """The pages' scripts and styles (``ui/static``); revalidated on every load (they are tiny)."""
    path = STATIC_FILES.get(name)
    if path is None:
        raise HTTPException(
            status_code=404, detail=f"path parameter name: no static file {name!r} in the console's UI"
        )
    return Response(
        path.read_bytes(),
        media_type=_MEDIA_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
