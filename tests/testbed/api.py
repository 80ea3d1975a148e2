"""A minimal HTTPS/JSON client for the test bed's own bootstrap calls (readiness, nodes, service accounts).

The test bed talks to kube-apiserver directly (no kubectl process per poll) with the admin client cert.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from tests.testbed.pki import CertPair


class ApiError(RuntimeError):
    """A non-2xx answer; ``status`` is the HTTP status code."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> HTTP {status}: {body[:500]}")
        self.status = status


class ApiClient:
    """JSON requests to ``server`` (``https://host:port``), verified against ``ca``, as ``client``."""

    def __init__(self, server: str, ca: CertPair, client: CertPair, timeout: float = 10.0) -> None:
        self.server = server
        self.timeout = timeout
        self._ctx = ssl.create_default_context(cafile=str(ca.cert))
        self._ctx.load_cert_chain(str(client.cert), str(client.key))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; return the decoded JSON (or text for non-JSON answers like /readyz)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout) as resp:
                raw = resp.read().decode()
                if resp.headers.get_content_type() == "application/json":
                    return json.loads(raw)
                return raw
        except urllib.error.HTTPError as e:
            raise ApiError(method, self.server + path, e.code, e.read().decode(errors="replace")) from e

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Any:
        """GET, or None when the object does not exist (404)."""
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> Any:
        """POST; an already existing object (409) counts as success (the caller may run twice)."""
        try:
            return self.request("POST", path, body)
        except ApiError as e:
            if e.status == 409:
                return None
            raise
