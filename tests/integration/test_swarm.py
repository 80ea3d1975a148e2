"""End-to-end swarm behaviour with real etcd, real SL/ML processes and mTLS on loopback.

Each test starts its own SN (etcd), SL nodes and ML processes (the digits example's train.py with
smaller settings) through :class:`swarmlearning.local.runner.LocalSwarm`, and tears all of it down
in the context manager, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from safetensors.torch import load_file
from swarmlearning import pki
from swarmlearning.local.config import RunConfig, load_config
from swarmlearning.local.runner import LocalSwarm, tail

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "local" / "digits"
POISON = ROOT / "tests" / "chaos" / "poison.py"
"""A training program whose SwarmCallback sends poisoned weights (see tests/chaos/poison.py)."""
T = TypeVar("T")


def small_config(nodes: int, *, train: dict[str, Any] | None = None, **swarm: Any) -> RunConfig:
    """The digits example, shortened: few epochs, short timeouts.

    ``full_quorum_wait`` is generous on purpose: a round closes as soon as every live member is ready,
    so it costs nothing on an idle machine, while a node slowed by CPU load still makes every round.
    """
    base = load_config(DIGITS)
    sw = {
        "sync_frequency": 4,
        "min_peers": 2,
        "merge_method": "mean",
        "full_quorum_wait": 10,
        "leader_failure_timeout": 6,
        "quorum_timeout": 30,
    } | swarm
    tr = {"epochs": 3, "batch_size": 32, "lr": 0.1} | (train or {})
    return dataclasses.replace(base, nodes=nodes, train=tr, swarm=sw, timeout_seconds=180)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, swarm: LocalSwarm | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    logs = ""
    if swarm is not None:
        logs = "\n".join(
            f"--- {p.name}\n{tail(p, 6)}" for p in sorted((swarm.run_dir / "logs").glob("*.log"))
        )
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{logs}")


def sl_log(swarm: LocalSwarm, name: str) -> str:
    return (swarm.run_dir / "logs" / f"{name}-sl.log").read_text(errors="replace")


def round_records(swarm: LocalSwarm) -> dict[int, Any]:
    return {int(r.body["round"]): r for r in swarm.ledger_snapshot().records if r.kind == "round"}


def close_records(swarm: LocalSwarm) -> dict[int, Any]:
    return {int(r.body["round"]): r for r in swarm.ledger_snapshot().records if r.kind == "close"}


def assert_all_succeeded(swarm: LocalSwarm, names: list[str]) -> None:
    codes = swarm.wait_ml(names, timeout=180)
    bad = {n: c for n, c in codes.items() if c != 0}
    assert not bad, "ML processes failed: " + "; ".join(
        f"{n} exit {c}:\n{tail(swarm.nodes[n].ml.log_path, 15)}"
        for n, c in bad.items()  # type: ignore[union-attr]
    )


def final_models(swarm: LocalSwarm, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(str(swarm.nodes[n].out_dir / "model.safetensors")) for n in names}


def assert_identical(models: dict[str, dict[str, torch.Tensor]]) -> None:
    first = next(iter(models.values()))
    for name, state in models.items():
        assert state.keys() == first.keys()
        for k in first:
            assert torch.equal(state[k], first[k]), f"{name}: final tensor {k} differs"
            assert torch.isfinite(state[k]).all(), f"{name}: final tensor {k} is not finite"


def test_four_node_digits_reaches_target_accuracy(tmp_path: Path) -> None:
    """The demo itself: swarm within 2 points of central, clearly above mean local-only."""
    from swarmlearning.local.cli import run_example

    lines: list[str] = []
    result = run_example(DIGITS, out=tmp_path / "run", emit=lines.append)
    assert result.ledger_ok, result.ledger_message
    assert result.final_models_identical
    assert result.swarm_accuracy >= result.central_accuracy - 0.02, lines[-6:]
    assert result.swarm_accuracy >= result.mean_local_only + 0.05, lines[-6:]
    run = Path(result.run_dir)
    for produced in (
        "model.safetensors",
        "metrics.csv",
        "curves.png",
        "ledger.json",
        "ledger-verify.txt",
        "local-models/node-1.safetensors",
        "logs/node-1-sl.log",
        "logs/node-1-ml.log",
    ):
        assert (run / produced).is_file(), produced
    assert any(line.startswith("round ") for line in lines)
    assert "OK" in (run / "ledger-verify.txt").read_text()


def test_killed_node_does_not_stop_the_swarm_and_rejoins(tmp_path: Path) -> None:
    """node-3 crashes, the swarm goes on without it, and the restarted node-3 rejoins from the ledger's
    latest merged model and takes part again.

    Nothing here depends on how fast the machine is: node-1/node-2 get far more rounds than the restart
    can take (while node-3 is a live member but not ready, each of their rounds waits
    ``full_quorum_wait`` for it), node-3 is restarted as soon as one round without it is committed,
    and its rejoined run is short, so it finishes while the others still train.
    """
    long_run = {"epochs": 30}  # about 90 rounds for node-1/node-2
    cfg = small_config(3, full_quorum_wait=2)
    args = {"node-1": long_run, "node-2": long_run, "node-3": long_run}
    with LocalSwarm(cfg, tmp_path / "run", node_args=args) as swarm:
        swarm.prepare()
        swarm.start_all()
        wait_for("round 4 to be committed", lambda: 4 in round_records(swarm), 120, swarm)
        swarm.kill_node("node-3")
        killed_at = max(round_records(swarm))

        def round_without_node_3() -> int | None:
            later = [
                n
                for n, r in round_records(swarm).items()
                if n > killed_at and "node-3" not in r.body["participants"]
            ]
            return min(later) if later else None

        # The swarm goes on with node-1 and node-2 (minPeers 2); node-3 comes back right away.
        without = wait_for("a round merged without node-3", round_without_node_3, 120, swarm)
        swarm.node_args = args | {"node-3": {"epochs": 2}}
        swarm.restart_node("node-3")
        assert swarm.nodes["node-1"].ml.running() and swarm.nodes["node-2"].ml.running(), (  # type: ignore[union-attr]
            "node-1/node-2 finished before node-3 was restarted; give them more epochs"
        )
        assert_all_succeeded(swarm, ["node-1", "node-2", "node-3"])
        rounds = round_records(swarm)
        rows = [r for r in swarm.metrics() if r["node"] == "node-3"]
        joins = [r for r in rows if r["event"] == "join"]
        assert joins, "restarted node-3 did not join from the latest merged model"
        joined = joins[-1]["round"]
        assert joined >= without, (joined, without)
        # What it loaded is exactly the merged model the ledger recorded for that round.
        assert joins[-1]["digest"] == rounds[joined].body["merged_digest"]
        assert f"joining from the merged model of round {joined}" in sl_log(swarm, "node-3")
        later = [
            n
            for n, c in close_records(swarm).items()
            if n > joined and "node-3" in [p["name"] for p in c.body["participants"]]
        ]
        assert later, "node-3 took part in no round after rejoining"
        assert "node-3" in rounds[max(rounds)].body["participants"]  # and in the final one
        assert_identical(final_models(swarm, ["node-1", "node-2", "node-3"]))


def test_below_quorum_waits_then_fails_clearly(tmp_path: Path) -> None:
    cfg = small_config(2, min_peers=3, quorum_timeout=10)
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_all()
        codes = swarm.wait_ml(timeout=90)
        assert all(c != 0 for c in codes.values()), codes
        for name in swarm.nodes:
            ml_log = (swarm.run_dir / "logs" / f"{name}-ml.log").read_text(errors="replace")
            assert "SwarmError" in ml_log
            assert "only 2 of the 3 peers needed were ready after 10" in ml_log
            assert "waiting for peers, 2 of 3 needed ready" in ml_log  # progress shown while waiting


def test_peer_with_nan_or_wrong_shapes_is_rejected_and_swarm_goes_on(tmp_path: Path) -> None:
    cfg = small_config(4, train={"epochs": 2})
    # Poisoned training programs (tests/chaos/poison.py): a site whose weights went NaN, one whose
    # model has another shape.
    ml = {
        n: [sys.executable, str(POISON), "--kind", kind, str(DIGITS / "train.py")]
        for n, kind in (("node-3", "nan"), ("node-4", "shape"))
    }
    with LocalSwarm(cfg, tmp_path / "run", ml_command=ml) as swarm:
        swarm.prepare()
        swarm.start_all()
        names = cfg.node_names()
        assert_all_succeeded(swarm, names)
        rounds = round_records(swarm)
        closes = close_records(swarm)
        assert len(rounds) >= 3
        seen = {"node-3": 0, "node-4": 0}
        for n, rec in rounds.items():
            if n == 1:
                continue
            rejected = rec.body["rejected"]
            assert set(rec.body["participants"]) <= {"node-1", "node-2"}, (n, rec.body["participants"])
            # A node slowed by load may miss a round; wherever a faulty node took part, it was rejected.
            present = {p["name"] for p in closes[n].body["participants"]}
            for bad, reason in (("node-3", "non-finite"), ("node-4", "shape")):
                if bad in present:
                    assert reason in rejected.get(bad, ""), (n, rejected)
                    seen[bad] += 1
        assert all(seen.values()), f"a faulty node took part in no round after round 1: {seen}"
        assert_identical(final_models(swarm, names))


def test_node_without_valid_certificate_cannot_join(tmp_path: Path) -> None:
    cfg = small_config(2, train={"epochs": 30})
    with LocalSwarm(cfg, tmp_path / "run") as swarm:
        swarm.prepare()
        swarm.start_sn()
        swarm.start_sl("node-1")
        swarm.wait_sl_ready(["node-1"])
        # node-2's identity, but issued by another CA: the SN refuses the TLS handshake.
        rogue = swarm.nodes["node-2"]
        pki.create_ca(tmp_path / "rogue-ca", "rogue-ca")
        for f in rogue.cert_dir.iterdir():
            f.unlink()
        pki.issue_node_cert(tmp_path / "rogue-ca", rogue.cert_dir, "node-2", "org-2", "sl")
        swarm.start_sl("node-2")
        assert rogue.sl is not None
        rogue.sl.popen.wait(timeout=60)
        assert rogue.sl.returncode != 0
        log = rogue.sl.log_path.read_text(errors="replace")
        assert "SL node node-2 stopped" in log and ("TLS" in log or "certificate" in log), log[-2000:]
        assert not rogue.socket_path.exists()
        members = asyncio.run(_members(swarm))
        assert [m.name for m in members] == ["node-1"]
        # Node-1's SL server refuses clients without a swarm-CA certificate, and serves one that has it.
        host, port = members[0].endpoint.rsplit(":", 1)
        real_ca = str(swarm.ca_dir / "ca.crt")
        ok = _raw_get(host, int(port), _client_ctx(real_ca, swarm.admin_cert_dir))
        assert ok.startswith(b"HTTP/1.1 404"), ok[:80]  # reached the server: no round-1 input yet
        for ctx in (_client_ctx(real_ca, rogue.cert_dir), _client_ctx(real_ca, None)):
            try:
                answer = _raw_get(host, int(port), ctx)
            except (ssl.SSLError, OSError):
                continue
            assert not answer.startswith(b"HTTP"), answer[:80]


def _client_ctx(ca: str, cert_dir: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert_dir is not None:
        ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return ctx


def _raw_get(host: str, port: int, ctx: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(
            b"GET /v1/models/defaultbb.cqdb.sml.hpe/1/input HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while chunk := tls.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


async def _members(swarm: LocalSwarm) -> list[Any]:
    from swarmlearning.ledger import Ledger

    ledger = await Ledger.connect(swarm.sn_endpoints, pki.NodeCert.load(swarm.admin_cert_dir))
    try:
        return await ledger.members()
    finally:
        await ledger.close()
