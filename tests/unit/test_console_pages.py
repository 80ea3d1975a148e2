"""The web UI's routes (console/pages.py) in-process: what they serve, to whom, and their errors.

The pages' behaviour in a browser against a real swarm is tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from swarmlearning.console import pages
from swarmlearning.console.auth import COOKIE, Authenticator

pytestmark = pytest.mark.unit

TOKEN = "s3cret-token"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    app.state.auth = Authenticator(tokens=frozenset({TOKEN}))
    app.include_router(pages.router)
    return TestClient(app)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", ["/", "/tasks/digits", "/static/console.js"])
def test_nothing_is_served_anonymously(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_pages_render_with_their_scripts_and_a_strict_policy(client: TestClient) -> None:
    swarm = client.get("/", headers=AUTH)
    assert swarm.status_code == 200
    assert swarm.headers["content-type"].startswith("text/html")
    assert '<script src="/static/swarm.js" defer></script>' in swarm.text
    assert 'data-testid="status-banner"' in swarm.text
    csp = swarm.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert swarm.headers["referrer-policy"] == "no-referrer"  # the sign-in URL carries the token

    client.cookies.set(COOKIE, TOKEN)  # as the UI's sign-in sets it
    task = client.get("/tasks/defaultbb.cqdb.sml.hpe")
    assert task.status_code == 200
    assert 'data-contract="defaultbb.cqdb.sml.hpe"' in task.text
    assert "/static/task.js" in task.text and "/static/chart.js" in task.text


def test_every_referenced_static_file_is_served(client: TestClient) -> None:
    for name in ("console.js", "swarm.js", "task.js", "chart.js", "console.css"):
        resp = client.get(f"/static/{name}", headers=AUTH)
        assert resp.status_code == 200, name
        assert resp.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/console.css", headers=AUTH).headers["content-type"].startswith("text/css")
    assert client.get("/static/task.js", headers=AUTH).headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize("name", ["nope.js", "pages.py", "console.css.bak"])
def test_unknown_static_file_is_404_naming_the_parameter(client: TestClient, name: str) -> None:
    resp = client.get(f"/static/{name}", headers=AUTH)
    assert resp.status_code == 404
    assert "path parameter name" in resp.json()["detail"]


def test_static_paths_never_reach_the_file_system(client: TestClient) -> None:
    for path in ("/static/..%2Fpages.py", "/static/../pages.py", "/static/%2E%2E/app.py"):
        resp = client.get(path, headers=AUTH)
        assert resp.status_code == 404, path
        assert "import" not in resp.text, path


def test_bad_contract_name_is_422_naming_the_rule(client: TestClient) -> None:
    resp = client.get("/tasks/Not_Valid", headers=AUTH)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "contract" in detail and "lowercase" in detail
