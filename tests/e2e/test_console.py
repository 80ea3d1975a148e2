"""The operator runs the swarm console on the real node, and the `<network>-rest` Service answers it.

`helm install` the chart, apply a one-member SwarmNetwork with `spec.rest.enabled` (no sites, no training:
the console's reads of a swarm in training are the console's own tests), wait for ConsoleReady, then talk
to the Service's ClusterIP from the host (kube-proxy's rules apply to the host's own connections) over
TLS checked against the swarm's CA and the Service's DNS name:

- a client certificate of the swarm's CA: `GET /api/v1/network` is 200 and lists the SN member;
- a ServiceAccount token bound to `swarm-learning-console-viewer` in the namespace: 200;
- a ServiceAccount token without a binding: 403; no credentials at all: 401.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_swarm import Swarm, installed_swarm, poll
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

NS = "e2e-console"
NETWORK = "web"
REST_PORT = 30306
READY_TIMEOUT = 240.0
"""Seconds for the SN member and the console pod to be Ready after the network is applied (pod start, image
already in containerd)."""
LEDGER_ACCESS_TIMEOUT = 90.0
"""Seconds for ConsoleLedgerAccess once the console answers: the background etcd user creation, then the
reconcile that reports it (the operator resyncs every 30 s)."""
REQUEST_TIMEOUT = 20.0

MANIFESTS = yaml.safe_dump_all(
    [
        {
            "apiVersion": "swarmlearning.dev/v1alpha1",
            "kind": "SwarmNetwork",
            "metadata": {"name": NETWORK},
            "spec": {"members": 1, "storage": {"persistent": False}, "rest": {"enabled": True}},
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "viewer-console"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "swarm-learning-console-viewer",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": NS}],
        },
    ]
)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(http.client.HTTPSConnection):
    """HTTPS to an address (the ClusterIP) checking the certificate against a DNS name (the Service's)."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext) -> None:
        super().__init__(address, port, context=context, timeout=REQUEST_TIMEOUT)
        self.server_name = server_name
        self.tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls_context.wrap_socket(raw, server_hostname=self.server_name)


@dataclass
class Console:
    swarm: Swarm
    address: str
    server_name: str
    ca: Path
    client: Path
    """Folder with tls.crt/tls.key: a certificate of the swarm CA (role admin)."""

    def context(self, client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            ctx.load_cert_chain(self.client / "tls.crt", self.client / "tls.key")
        return ctx

    def get(self, path: str, *, client_cert: bool = False, token: str | None = None) -> Answer:
        conn = _Connection(self.address, REST_PORT, self.server_name, self.context(client_cert))
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def token(self, service_account: str) -> str:
        return self.swarm.cluster.kubectl(
            "create", "token", service_account, "-n", self.swarm.ns, "--duration=10m"
        ).stdout.strip()


def _condition(swarm: Swarm, kind: str) -> dict[str, Any]:
    st = swarm.get("swarmnetwork", NETWORK).get("status") or {}
    return next((c for c in st.get("conditions") or () if c["type"] == kind), {})


def _console_ready(swarm: Swarm) -> bool:
    st = swarm.get("swarmnetwork", NETWORK).get("status") or {}
    return _condition(swarm, "ConsoleReady").get("status") == "True" and st.get("phase") == "Ready"


@pytest.fixture(scope="module")
def console(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    from swarmlearning import pki

    work = tmp_path_factory.mktemp("e2e-console")
    with installed_swarm(real_cluster, work, NS, MANIFESTS) as swarm:
        poll(f"SwarmNetwork {NETWORK} Ready with ConsoleReady", lambda: _console_ready(swarm), READY_TIMEOUT,
             swarm.diagnose)  # fmt: skip
        secret = swarm.get("secret", f"{NETWORK}-ca")
        ca_dir = work / "ca"
        ca_dir.mkdir()
        for key in ("ca.crt", "ca.key"):
            (ca_dir / key).write_bytes(base64.b64decode(secret["data"][key]))
        pki.issue_node_cert(ca_dir, work / "admin", "e2e-admin", "e2e", "admin")
        service = swarm.get("service", f"{NETWORK}-rest")
        yield Console(
            swarm,
            service["spec"]["clusterIP"],
            f"{NETWORK}-rest.{NS}.svc",
            ca_dir / "ca.crt",
            work / "admin",
        )


def test_the_rest_service_answers_a_client_certificate_with_the_network(console: Console) -> None:
    answer = console.get("/api/v1/network", client_cert=True)
    assert answer.status == 200, answer
    body = answer.json()
    assert body["name"] == NETWORK
    assert [m["name"] for m in body["sn_members"]] == [f"{NETWORK}-sn-0"]
    assert isinstance(body["ledger"]["height"], int), body
    # The console reads the ledger as its own etcd user, which the operator provisions in the background;
    # the condition turns True at the reconcile after the user exists (at the latest the next resync).
    poll(
        "ConsoleLedgerAccess True (the console's etcd user provisioned)",
        lambda: _condition(console.swarm, "ConsoleLedgerAccess").get("status") == "True",
        LEDGER_ACCESS_TIMEOUT,
        console.swarm.diagnose,
    )


def test_a_service_account_token_needs_the_viewer_binding(console: Console) -> None:
    viewer = console.get("/api/v1/network", token=console.token("viewer"))
    assert viewer.status == 200, viewer
    assert viewer.json()["name"] == NETWORK
    nobody = console.get("/api/v1/network", token=console.token("nobody"))
    assert nobody.status == 403, nobody
    assert b"status" in nobody.body, "the 403 names the missing right"


def test_no_credentials_get_401_asking_for_a_bearer_token(console: Console) -> None:
    answer = console.get("/api/v1/network")
    assert answer.status == 401, answer
    assert answer.headers.get("www-authenticate", "").startswith("Bearer")
