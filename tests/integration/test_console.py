"""The swarm console against a real local swarm: every endpoint, the access rules, live updates, and
the API fuzzed from its own OpenAPI document (schemathesis: no 5xx, no hang).

One swarm serves the whole module (3 digits sites, one of them sending NaN weights so rounds carry a
rejection); tests that need it running come first, the ones about the finished run after
``test_after_the_run``'s wait.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from safetensors.numpy import load as load_safetensors
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from swarmlearning import pki
from swarmlearning.cli import swarmctl
from swarmlearning.local.runner import LocalSwarm

from tests.integration.test_swarm import DIGITS, POISON, small_config, wait_for

pytestmark = pytest.mark.integration

CONTRACT = "defaultbb.cqdb.sml.hpe"
"""The contract HPE's scripts (and the digits example) train under when they name none."""
WAIT_S = 120.0


@dataclasses.dataclass
class Console:
    swarm: LocalSwarm
    base: str
    token: str
    ca: str
    certs: Path

    def session(self, *, token: str | None = None, cert: str | None = None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would replace the swarm's CA
        s.verify = self.ca
        if token is not None:
            s.headers["Authorization"] = f"Bearer {token}"
        if cert is not None:
            d = self.certs / cert
            s.cert = (str(d / pki.NODE_CERT), str(d / pki.NODE_KEY))
        return s

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session(token=self.token).get(self.base + path.lstrip("/"), timeout=30, **kw)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    cfg = small_config(3, train={"epochs": 5})
    run = tmp_path_factory.mktemp("console") / "run"
    ml = {"node-3": [sys.executable, str(POISON), "--kind", "nan", str(DIGITS / "train.py")]}
    with LocalSwarm(cfg, run, ml_command=ml, console=True) as swarm:
        swarm.prepare()
        certs = run / "clients"
        pki.issue_node_cert(swarm.ca_dir, certs / "alice", "alice", "org-viewers", "operator")
        pki.issue_node_cert(swarm.ca_dir, certs / "site-admin", "site-admin", "org-1", "sl")
        pki.create_ca(run / "other-ca", "someone-else")
        pki.issue_node_cert(run / "other-ca", certs / "mallory", "mallory", "org-x", "sl")
        swarm.start_all()
        c = swarm.local_console
        yield Console(swarm, c.base, c.token, str(c.ca), certs)


def _rounds(console: Console) -> list[dict[str, Any]]:
    r = console.get(f"/api/v1/tasks/{CONTRACT}/rounds")
    return r.json() if r.status_code == 200 else []


def test_rounds_arrive_as_server_sent_events(console: Console) -> None:
    """A live stream gets each round as it closes and commits, with the round's JSON."""
    s = console.session(token=console.token)
    seen: list[dict[str, Any]] = []
    with s.get(console.base + f"api/v1/events?contract={CONTRACT}", stream=True, timeout=(10, 30)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + WAIT_S
        event = ""
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "round":
                seen.append(json.loads(line[6:]))
                if sum(1 for e in seen if e["result"] == "round") >= 2:
                    break
            assert time.monotonic() < deadline, f"no two committed rounds in {WAIT_S:g}s: {seen}"
    committed = [e for e in seen if e["result"] == "round"]
    assert committed[0]["contract"] == CONTRACT and committed[0]["leader"] in committed[0]["participants"]
    assert committed[-1]["round"] > committed[0]["round"]
    # Resuming after an event id replays what came after it, from the ledger.
    first = committed[0]["seq"]
    with s.get(
        console.base + f"api/v1/events?contract={CONTRACT}",
        headers={"Last-Event-ID": str(first - 1)},
        stream=True,
        timeout=(10, 30),
    ) as r:
        ids = []
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) >= 2:
                    break
    assert ids[0] == first and ids[1] > first


def test_the_merged_model_downloads_with_its_ledger_digest(console: Console) -> None:
    committed = wait_for(
        "a merged round",
        lambda: [r for r in _rounds(console) if r["result"] == "round" and r["round"] > 1],
        WAIT_S,
        console.swarm,
    )
    r = console.get(f"/api/v1/tasks/{CONTRACT}/model")
    assert r.status_code == 200, r.text
    rounds = {x["round"]: x for x in _rounds(console)}
    digests = {x["merged_digest"] for x in rounds.values()}
    assert r.headers["X-Swarm-Digest"] in digests
    tensors = load_safetensors(r.content)
    assert tensors and all(v.size for v in tensors.values())
    assert "attachment" in r.headers["Content-Disposition"]
    one = committed[0]
    r = console.get(f"/api/v1/tasks/{CONTRACT}/rounds/{one['round']}/model")
    assert r.status_code in (200, 404), r.text  # rounds beyond the last 8 are no longer held in memory
    if r.status_code == 200:
        assert r.headers["X-Swarm-Digest"] == one["merged_digest"]


def test_access_rules(console: Console) -> None:
    url = console.base + "api/v1/network"
    model = console.base + f"api/v1/tasks/{CONTRACT}/model"
    anonymous = console.session().get(url, timeout=30)
    assert anonymous.status_code == 401 and "Bearer" in anonymous.headers["WWW-Authenticate"]
    assert "client certificate" in anonymous.json()["detail"]
    assert console.session(token="wrong").get(url, timeout=30).status_code == 401
    basic = console.session().get(url, headers={"Authorization": "Basic YTpi"}, timeout=30)
    assert basic.status_code == 401 and "Bearer" in basic.json()["detail"]
    # A certificate of the swarm's CA: status for any role, the model only for admin/sl roles.
    alice = console.session(cert="alice")
    assert alice.get(url, timeout=30).status_code == 200
    who = alice.get(console.base + "api/v1/whoami", timeout=30).json()
    assert who == {"principal": "alice", "method": "certificate", "rights": ["status"]}
    denied = alice.get(model, timeout=30)
    assert denied.status_code == 403 and "model" in denied.json()["detail"]
    site = console.session(cert="site-admin").get(console.base + "api/v1/whoami", timeout=30).json()
    assert site["rights"] == ["status", "model"]
    # Another CA's certificate does not get through the handshake (TLS 1.3: the server's alert comes
    # after the client's side of it, so the client may see an SSL error or the connection dropped).
    with pytest.raises(requests.exceptions.ConnectionError):
        console.session(cert="mallory").get(url, timeout=30)
    assert alice.get(url, timeout=30).status_code == 200
    # The UI's login: ?token= sets an HttpOnly cookie and redirects without the token.
    s = console.session()
    r = s.get(console.base + f"?token={console.token}", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie
    assert s.get(url, timeout=30).status_code == 200
    assert (
        console.session().get(console.base + "?token=nope", allow_redirects=False, timeout=30).status_code
        == 401
    )
    # The OpenAPI document is not anonymous either.
    assert console.session().get(console.base + "api/v1/openapi.json", timeout=30).status_code == 401


def test_malformed_requests_get_4xx_naming_the_parameter(console: Console) -> None:
    for path, name in [
        ("/api/v1/tasks/Bad_Name!", "contract"),
        (f"/api/v1/tasks/{CONTRACT}/rounds/0", "round_no"),
        (f"/api/v1/tasks/{CONTRACT}/rounds?limit=0", "limit"),
        (f"/api/v1/tasks/{CONTRACT}/rounds?since=-1", "since"),
        ("/api/v1/events?contract=UPPER", "contract"),
    ]:
        r = console.get(path)
        assert r.status_code == 422 and name in r.json()["detail"], (path, r.status_code, r.text)
    r = console.get("/api/v1/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 422 and "last-event-id" in r.json()["detail"]
    assert console.get("/api/v1/tasks/no-such-task").status_code == 404
    assert console.get(f"/api/v1/tasks/{CONTRACT}/rounds/999999").status_code == 404


def test_after_the_run(console: Console) -> None:
    """Once training ends: the views agree with the ledger, and the audit is swarmctl's."""
    codes = console.swarm.wait_ml(timeout=WAIT_S)
    assert codes == {"node-1": 0, "node-2": 0, "node-3": 0}, codes
    net = console.get("/api/v1/network").json()
    assert [m["name"] for m in net["sn_members"]] == ["sn-1"] and net["ledger"]["height"] > 10
    nodes = {n["name"]: n for n in console.get("/api/v1/nodes").json()}
    assert set(nodes) == {"node-1", "node-2", "node-3"}
    assert {n["organisation"] for n in nodes.values()} == {"org-1", "org-2", "org-3"}
    assert all(len(n["fingerprint"]) == 64 and n["last_round"].get(CONTRACT, 0) > 0 for n in nodes.values())
    (task,) = console.get("/api/v1/tasks").json()
    assert task["contract"] == CONTRACT and task["finished"] and task["params"]["mergeMethod"] == "mean"
    detail = console.get(f"/api/v1/tasks/{CONTRACT}").json()
    rounds = detail["rounds"]
    assert len(rounds) == task["rounds_committed"] >= 5 and rounds[-1]["final"]
    rejected = [r for r in rounds if "node-3" in r["rejected"]]
    assert rejected and "non-finite" in rejected[0]["rejected"]["node-3"]
    merged = [r for r in rounds if r["round"] > 1]
    assert all(r["duration_s"] >= 0 and r["loss"] and r["merge_method"] == "mean" for r in merged)
    one = console.get(f"/api/v1/tasks/{CONTRACT}/rounds/{rounds[2]['round']}").json()
    assert one == rounds[2]
    page = console.get(f"/api/v1/tasks/{CONTRACT}/rounds?since={rounds[1]['round']}&limit=2").json()
    assert [r["round"] for r in page] == [rounds[2]["round"], rounds[3]["round"]]
    # The export is swarmctl's format, and the console's audit is swarmctl's audit of it.
    export = console.get("/api/v1/ledger").json()
    assert len(export["records"]) == export["head"]["seq"] + 1 >= net["ledger"]["height"]
    path = console.swarm.run_dir / "exported.json"
    path.write_text(json.dumps(export))
    assert swarmctl.main(["ledger", "verify", "--file", str(path), "--ca", console.ca]) == 0
    audit = console.get("/api/v1/ledger/verify").json()
    assert audit["ok"] and audit["count"] == len(export["records"]) and audit["message"].startswith("OK")
    # Every SL node has exited: nobody holds the model any more, which a 404 says.
    wait_for(
        "every SL node to exit",
        lambda: all(not n.sl or not n.sl.running() for n in console.swarm.nodes.values()),
        WAIT_S,
        console.swarm,
    )
    r = console.get(f"/api/v1/tasks/{CONTRACT}/model")
    assert r.status_code == 404 and "no SL node serves" in r.json()["detail"]


FUZZ_EXAMPLES = 40
"""Generated requests per operation and mode (positive: valid by the document; negative: invalid)."""


def test_api_fuzz_keeps_to_its_openapi_document(console: Console) -> None:
    """Every operation of the served OpenAPI document, with valid and invalid requests: never a 5xx,
    never a hang (each call has a timeout), every answer as documented. The event stream never ends,
    so it is tested above instead."""
    doc = console.get("/api/v1/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc).exclude(path="/api/v1/events")
    session = console.session(token=console.token)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11, [op.label for op in operations]
    for op in operations:
        for mode in GenerationMode:

            @hypothesis.settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                response = case.call(
                    base_url=console.base.rstrip("/"), session=session, verify=console.ca, timeout=30
                )
                statuses[response.status_code] += 1
                try:  # schemathesis's default checks: no 5xx, status, content type, headers and body
                    # as the document says, invalid requests refused, valid ones accepted
                    case.validate_response(response)
                except FailureGroup as exc:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query}: "
                        f"{response.status_code} {response.text[:200]}: {str(exc)[:300]}"
                    )

            try:
                call()
            except hypothesis.errors.Unsatisfiable:
                # An operation without parameters has no invalid form; its valid one ran above.
                assert mode is GenerationMode.NEGATIVE, op.label
    print(
        f"fuzzed {sum(statuses.values())} requests over {len(operations)} operations: "
        f"{dict(sorted(statuses.items()))}"
    )
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses.values()) >= len(operations) * 20
