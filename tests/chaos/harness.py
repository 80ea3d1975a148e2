"""A chaos run: one training of the digits example on network hosts, with faults drawn at random.

``python -m tests.chaos --seed 7 --faults 50`` (``make chaos``): 3 SN members and 5 sites, each on its own
network namespace (:mod:`tests.chaos.swarm`), then ``faults`` faults (:mod:`tests.chaos.faults`) injected
one after another at random gaps while the sites train; killed parts come back after a random delay (a
killed ML process restarts its program with fewer epochs, as a rescheduled pod would). Like a kubelet, the
harness also restarts a process that died on its own, and reports each such crash as a finding.

At the end it checks, and prints:

* the ledger verifies (signatures, hash chain, round rules);
* rounds are contiguous and each has exactly one close and one result (none committed twice or lost):
  a merge, or an ``abandon`` record when every participant of the round left before anyone merged
  (all of them killed at once), written by a later round's leader;
* every site's final model is the final round's merged model (its digest is the final record's);
* every restarted ML process rejoined with the latest merged model when it started;
* no process crashed on its own (the harness restarts such a process, as a kubelet would, so the run
  goes on, but the check fails);
* no process the run started is left, and no network namespace.

Figures: faults injected by kind, rounds, training time, recovery time per fault kind (p50/p95: from the
end of a fault, or its start for SN faults, to the next committed round the target took part in), and
the crash restarts. ``chaos-report.json`` and ``chaos.png`` (rounds over time with the faults) go to the
output folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import queue
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from swarmlearning import pki
from swarmlearning.etcd import EtcdClient, EtcdError
from swarmlearning.ledger import keys
from swarmlearning.local.config import RunConfig, load_config
from swarmlearning.local.runner import tail
from swarmlearning.sl.weights import digest, encode_state

from tests.chaos.faults import FREEZE, THAW, Fault, Planner
from tests.chaos.netns import SwarmNet
from tests.chaos.swarm import ChaosSwarm, attach_root

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "local" / "digits"
LEADER_WAIT_S = 12.0
"""How long a ``kill-leader`` fault waits for the next leadership key before it is drawn again."""


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Times in seconds."""

    seed: int = 0
    faults: int = 50
    sites: int = 5
    sn_members: int = 3
    epochs: int = 120
    """Epochs of each site's first run: enough rounds for every fault to land during training."""
    restart_epochs: int = 0
    """Epochs of an ML process restarted after a kill or a crash (0: a quarter of ``epochs``, >= 4)."""
    gap_s: tuple[float, float] = (1.5, 4.0)
    """Random pause between two injections."""
    duration_s: tuple[float, float] = (2.0, 8.0)
    """Random length of a transient fault (freeze, network fault) and delay before a restart."""
    timeout_s: float = 1800.0
    out: Path = Path("runs/chaos")

    def run_config(self) -> RunConfig:
        base = load_config(DIGITS)
        swarm = dict(base.swarm) | {
            "min_peers": 2,
            "full_quorum_wait": 5,
            "leader_failure_timeout": 10,
            "quorum_timeout": 300,
        }
        return dataclasses.replace(
            base,
            nodes=self.sites,
            seed=self.seed,
            train=dict(base.train) | {"epochs": self.epochs},
            swarm=swarm,
            timeout_seconds=self.timeout_s,
        )


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class ChaosReport:
    config: dict[str, Any]
    faults: list[Fault]
    rounds: int
    training_s: float
    crash_restarts: list[str]
    checks: list[Check]
    recovery: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "ok": self.ok,
            "rounds": self.rounds,
            "training_s": round(self.training_s, 1),
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "recovery_s": self.recovery,
            "crash_restarts": self.crash_restarts,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


class LeaderWatch:
    """Watches the ledger's leadership keys from a thread (an admin client), so ``kill-leader`` can
    strike the moment a leader takes its key, i.e. while it merges."""

    def __init__(self, endpoints: list[str], admin: pki.NodeCert) -> None:
        self.endpoints, self.admin = endpoints, admin
        self.events: queue.Queue[tuple[str, int, str]] = queue.Queue()
        """(node, round, what): ``what`` is the attempt of a round's leadership, ``s<slice>.<attempt>``
        of a slice's (sharded merge)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.events.get_nowait()

    def _run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                async with (
                    await EtcdClient.connect(self.endpoints, self.admin) as etcd,
                    etcd.watch(keys.NODES, prefix=True) as changes,
                ):
                    while not self._stop.is_set():
                        for e in await changes.get(timeout=0.5):
                            parts = e.kv.key[len(keys.NODES) :].split("/")
                            if e.type == "put" and len(parts) == 5 and parts[1] == "leader":
                                self.events.put((parts[0], int(parts[3]), parts[4]))
            except (EtcdError, OSError, TimeoutError):
                await asyncio.sleep(0.5)  # an SN fault: watch again through another member


class ChaosRun:
    """Drives one chaos run (see the module docstring); :meth:`run` returns the report."""

    def __init__(self, cfg: ChaosConfig, emit: Callable[[str], None] = print) -> None:
        self.cfg, self.emit = cfg, emit
        self.faults: list[Fault] = []
        self.active: list[Fault] = []
        self.crashes: list[str] = []
        self.restarts: list[tuple[str, float, int]] = []
        """(site, wall time, latest committed round then) of every ML process restart."""
        self.swarm: ChaosSwarm | None = None
        self.watch: LeaderWatch | None = None

    # ------------------------------------------------------------------ main

    def run(self) -> ChaosReport:
        cfg = self.cfg
        out = cfg.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        run_dir = out / f"s{cfg.seed}-{time.strftime('%m%d-%H%M%S')}"
        self.emit(
            f">>> chaos run: seed {cfg.seed}, {cfg.faults} faults, {cfg.sn_members} SN members, "
            f"{cfg.sites} sites (folder {run_dir})"
        )
        net_names: list[str] = []
        checks: list[Check] = []
        with SwarmNet(prefix="swchaos") as net:
            attach_root(net)
            swarm = ChaosSwarm(
                config=cfg.run_config(),
                run_dir=run_dir,
                net=net,
                sn_members=cfg.sn_members,
                sl_linger_seconds=60,
            )
            self.swarm = swarm
            try:
                swarm.prepare()
                self.emit(">>> starting 3 SN members and the sites, each on its own network namespace")
                swarm.start_all()
                self._wait_training(180)
                started = time.time()
                self.watch = LeaderWatch(swarm.sn_endpoints, pki.NodeCert.load(swarm.admin_cert_dir))
                self.watch.start()
                self._loop(started)
                training_s = time.time() - started
                self._end_every_fault()
                self.emit(">>> training over; waiting for the SL nodes to hand over the final model")
                self._wait_sl_exit(90)
                snapshot = swarm.ledger_snapshot()
                checks += self._checks(snapshot, (swarm.ca_dir / "ca.crt").read_bytes())
            finally:
                if self.watch is not None:
                    self.watch.stop()
                self._end_every_fault(quiet=True)
                swarm.close()
                net_names = [h.netns for h in net.hosts.values()] + [net.hub_netns]
        checks.append(
            Check(
                "no process crashed on its own",
                not self.crashes,
                "none" if not self.crashes else f"{len(self.crashes)}: {self.crashes}",
            )
        )
        checks.append(self._nothing_left(run_dir, net_names))
        records = snapshot.records
        rounds = {int(r.body["round"]): r for r in records if r.kind == "round"}
        report = ChaosReport(
            config={k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            faults=self.faults,
            rounds=len(rounds),
            training_s=training_s,
            crash_restarts=self.crashes,
            checks=checks,
            recovery=_recovery(self.faults, rounds),
        )
        (out / "chaos-report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        _plot(out / "chaos.png", rounds, self.faults, started)
        self._print(report, out)
        return report

    def _loop(self, started: float) -> None:
        cfg, swarm = self.cfg, self.swarm
        assert swarm is not None
        planner = Planner(
            cfg.seed, list(swarm.nodes), list(swarm.members), min_duration_s=cfg.duration_s[0],
            max_duration_s=cfg.duration_s[1],
        )  # fmt: skip
        next_at = time.time() + planner.gap(*cfg.gap_s)
        deadline = started + cfg.timeout_s
        while True:
            now = time.time()
            self._tick(now)
            codes = swarm.ml_exit_codes()
            if all(c == 0 for c in codes.values()) and not self.active:
                if len(self.faults) < cfg.faults:
                    raise AssertionError(
                        f"training ended after {len(self.faults)} of {cfg.faults} faults; raise --epochs"
                    )
                return
            if len(self.faults) < cfg.faults and now >= next_at:
                running = [n for n, node in swarm.nodes.items() if node.ml and node.ml.running()]
                fault = planner.draw(len(self.faults) + 1, self.active, running)
                if fault is not None and self._inject(fault, planner):
                    self.faults.append(fault)
                    self.emit(f"  {time.time() - started:6.1f}s  {fault.describe()}")
                next_at = time.time() + planner.gap(*cfg.gap_s)
            if now > deadline:
                raise AssertionError(f"training did not end within {cfg.timeout_s:g}s: ML exit codes {codes}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ faults

    def _inject(self, f: Fault, planner: Planner) -> bool:
        swarm = self.swarm
        assert swarm is not None and swarm.net is not None
        now = time.time()
        f.start, f.due = now, now + planner.duration()
        node = swarm.nodes.get(f.target)
        if f.kind == "kill-leader":
            leader = self._next_leader()
            if leader is None or not swarm.nodes[leader].sl or not swarm.nodes[leader].sl.running():  # type: ignore[union-attr]
                return False
            f.target, node = leader, swarm.nodes[leader]
            f.start = time.time()
        if f.kind in ("kill-sl", "kill-leader"):
            assert node is not None and node.sl is not None
            node.sl.kill()
        elif f.kind == "kill-ml":
            assert node is not None and node.ml is not None
            node.ml.kill()
        elif f.kind in ("freeze-sl", "freeze-ml"):
            assert node is not None
            proc = node.sl if f.kind == "freeze-sl" else node.ml
            if proc is None or not proc.running():
                return False
            proc.signal(FREEZE)
        elif f.kind == "kill-sn":
            swarm.kill_member(f.target)
        elif f.kind == "freeze-sn":
            swarm.signal_member(f.target, FREEZE)
        elif f.kind == "partition":
            swarm.net.partition(f.target, f.peer)
        elif f.kind == "delay":
            swarm.net.delay(f.target, f.peer, float(f.detail.split()[0]))
        elif f.kind == "loss":
            swarm.net.loss(f.target, f.peer, float(f.detail.rstrip("%")))
        self.active.append(f)
        return True

    def _next_leader(self) -> str | None:
        """The next node to take a leadership key (waits up to LEADER_WAIT_S, ending due faults)."""
        assert self.watch is not None
        self.watch.drain()
        deadline = time.time() + LEADER_WAIT_S
        while time.time() < deadline:
            try:
                name, _round, _what = self.watch.events.get(timeout=0.2)
                return name
            except queue.Empty:
                self._tick(time.time())
        return None

    def _end(self, f: Fault) -> None:
        swarm = self.swarm
        assert swarm is not None and swarm.net is not None
        node = swarm.nodes.get(f.target)
        if f.kind in ("kill-sl", "kill-leader"):
            assert node is not None
            swarm.start_sl(f.target)  # the ML process reconnects to it
        elif f.kind == "kill-ml":
            self._restart_ml(f.target)
        elif f.kind in ("freeze-sl", "freeze-ml"):
            assert node is not None
            proc = node.sl if f.kind == "freeze-sl" else node.ml
            if proc is not None:
                proc.signal(THAW)
        elif f.kind == "kill-sn":
            swarm.start_member(f.target, join=True)
        elif f.kind == "freeze-sn":
            swarm.signal_member(f.target, THAW)
        else:
            swarm.net.heal(f.target, f.peer)
        f.end = time.time()

    def _restart_ml(self, name: str) -> None:
        swarm = self.swarm
        assert swarm is not None
        epochs = self.cfg.restart_epochs or max(4, self.cfg.epochs // 4)
        swarm.node_args = dict(swarm.node_args) | {name: {"epochs": epochs}}
        self.restarts.append((name, time.time(), _latest_round(swarm)))
        swarm.start_ml(name)

    def _tick(self, now: float) -> None:
        """End due faults; restart what died on its own (and record it as a crash)."""
        swarm = self.swarm
        assert swarm is not None
        for f in [f for f in self.active if f.due <= now]:
            self._end(f)
            self.active.remove(f)
        killed = {f.target for f in self.active if f.kind.startswith("kill-")}
        for name, node in swarm.nodes.items():
            if name in killed:
                continue
            if node.ml is not None and node.ml.returncode not in (None, 0):
                self.crashes.append(f"{name} ML exited {node.ml.returncode}: {_last_error(node.ml.log_path)}")
                self.emit(f"  !! crash: {self.crashes[-1]}")
                node.ml.log_file.close()
                self._restart_ml(name)
            # An SL node exits 0 by itself once everyone has the final model; any other exit is a crash.
            if node.ml is not None and node.ml.running() and node.sl is not None and node.sl.returncode:
                self.crashes.append(f"{name} SL exited {node.sl.returncode}: {_last_error(node.sl.log_path)}")
                self.emit(f"  !! crash: {self.crashes[-1]}")
                node.sl.log_file.close()
                swarm.start_sl(name)

    def _end_every_fault(self, quiet: bool = False) -> None:
        for f in list(self.active):
            try:
                self._end(f)
            except Exception as exc:
                if not quiet:
                    raise
                self.emit(f"  could not end {f.describe()}: {exc}")
            self.active.remove(f)

    def _wait_training(self, timeout: float) -> None:
        """Faults start once the sites train: round 2 committed (round 1 only adopts a starting model)."""
        swarm = self.swarm
        assert swarm is not None
        deadline = time.time() + timeout
        while _latest_round(swarm) < 2:
            bad = {n: c for n, c in swarm.ml_exit_codes().items() if c not in (None, 0)}
            if bad or time.time() > deadline:
                first = next(iter(bad or swarm.nodes))
                raise AssertionError(
                    f"the sites did not commit round 2 within {timeout:g}s (ML exits {bad}); "
                    f"{first}:\n{tail(swarm.run_dir / 'logs' / f'{first}-ml.log')}"
                )
            time.sleep(0.5)
        self.emit(">>> the sites train (round 2 committed): injecting faults")

    def _wait_sl_exit(self, timeout: float) -> None:
        swarm = self.swarm
        assert swarm is not None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(n.sl is None or not n.sl.running() for n in swarm.nodes.values()):
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ checks

    def _checks(self, snapshot: Any, ca_pem: bytes) -> list[Check]:
        swarm = self.swarm
        assert swarm is not None
        out = []
        report = snapshot.verify(ca_pem)
        out.append(Check("ledger verifies", report.ok, report.message()))
        closes: Counter[int] = Counter()
        results: Counter[int] = Counter()
        rounds: dict[int, Any] = {}
        closed_by: dict[int, list[str]] = {}
        abandoned: list[int] = []
        for r in snapshot.records:
            if r.kind == "close":
                closes[int(r.body["round"])] += 1
                closed_by[int(r.body["round"])] = [p["name"] for p in r.body["participants"]]
            elif r.kind == "round":
                results[int(r.body["round"])] += 1
                rounds[int(r.body["round"])] = r
            elif r.kind == "abandon":
                results[int(r.body["round"])] += 1
                abandoned.append(int(r.body["round"]))
        top = max(closes, default=0)
        missing = [n for n in range(1, top + 1) if closes[n] != 1 or results[n] != 1]
        out.append(
            Check(
                "rounds contiguous, one close and one result each (a merge, or recorded as abandoned)",
                bool(top) and not missing,
                f"rounds 1..{top}"
                + (f"; abandoned (every participant left): {abandoned}" if abandoned else "")
                + (
                    "; wrong (round, closes, results, closed with): "
                    + str([(n, closes[n], results[n], closed_by.get(n)) for n in missing])
                    if missing
                    else ""
                ),
            )
        )
        final = rounds[max(rounds)] if rounds else None
        want = "" if final is None else str(final.body["merged_digest"])
        bad = {}
        for name, node in swarm.nodes.items():
            code = node.ml.returncode if node.ml else None
            path = node.out_dir / "model.safetensors"
            got = digest(encode_state(load_file(str(path)))) if path.exists() else "no model"
            if code != 0 or got != want:
                bad[name] = f"exit {code}, model {got[:12]}"
        out.append(
            Check(
                "every site holds the final record's model",
                final is not None and not bad,
                f"final round {max(rounds, default=0)} {want[:12]}" + (f"; differ: {bad}" if bad else ""),
            )
        )
        wrong = []
        for name, at, latest in self.restarts:
            rows = [r for r in _rows(swarm.nodes[name].metrics_path) if r["t"] >= at - 0.5]
            join = next((r for r in rows if r["event"] == "join"), None)
            if join is None:
                wrong.append(f"{name}@{at:.0f}: no join")
                continue
            joined = rounds.get(int(join["round"] or 0))
            if (
                joined is None
                or joined.body["merged_digest"] != join["digest"]
                or int(join["round"]) < latest
            ):
                wrong.append(f"{name}: joined round {join['round']} (latest was {latest})")
        out.append(
            Check(
                "every restarted site rejoined with the latest merged model",
                not wrong,
                f"{len(self.restarts)} restarts" + (f"; wrong: {wrong}" if wrong else ""),
            )
        )
        return out

    def _nothing_left(self, run_dir: Path, namespaces: list[str]) -> Check:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=15).stdout
        left_ns = [ns for ns in namespaces if ns in listed]
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=15).stdout
        left_procs = [line.strip() for line in ps.splitlines() if str(run_dir) in line]
        return Check(
            "nothing the run started is left",
            not left_ns and not left_procs,
            "no process, no namespace"
            if not left_ns and not left_procs
            else f"namespaces {left_ns}, processes {left_procs[:5]}",
        )

    # ------------------------------------------------------------------ output

    def _print(self, report: ChaosReport, out: Path) -> None:
        kinds = Counter(f.kind for f in report.faults)
        self.emit("")
        by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        self.emit(f"faults injected: {len(report.faults)} ({by_kind})")
        self.emit(f"rounds: {report.rounds}; training time {report.training_s:.0f}s")
        self.emit("recovery (s, from fault end to the target's next committed round):")
        for kind, r in sorted(report.recovery.items()):
            self.emit(f"  {kind:12s} n={r['n']:<3} p50 {_fmt(r['p50'])}  p95 {_fmt(r['p95'])}")
        self.emit(f"crash restarts: {len(report.crash_restarts)}")
        for crash in report.crash_restarts:
            self.emit(f"  {crash}")
        for c in report.checks:
            self.emit(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
        self.emit(f"report: {out / 'chaos-report.json'}, plot: {out / 'chaos.png'}")


def _latest_round(swarm: ChaosSwarm) -> int:
    try:
        return max(
            (int(r.body["round"]) for r in swarm.ledger_snapshot().records if r.kind == "round"), default=0
        )
    except Exception:
        return 0


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def _last_error(path: Path) -> str:
    lines = [ln for ln in tail(path, 30).splitlines() if ln.strip()]
    errors = [ln.strip() for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["(no log)"])[-1][:300]


def _recovery(faults: list[Fault], rounds: dict[int, Any]) -> dict[str, dict[str, float | int | None]]:
    """Per kind: seconds from a fault's end (its start for SN faults) to the first committed round after
    it in which its target site took part (any round for SN targets)."""
    times = sorted((_when(r), set(r.body.get("participants", ()))) for r in rounds.values())
    per: dict[str, list[float]] = {}
    for f in faults:
        site = (
            f.target
            if not f.target.startswith("sn-")
            else (f.peer if f.peer and not f.peer.startswith("sn-") else "")
        )
        since = f.start if not site else (f.end or f.start)
        after = next((t for t, who in times if t > since and (not site or site in who)), None)
        if after is not None:
            f.recovered_s = round(after - since, 2)
            per.setdefault(f.kind, []).append(after - since)
    out: dict[str, dict[str, float | int | None]] = {}
    for f in faults:
        xs = sorted(per.get(f.kind, []))
        out[f.kind] = {
            "n": len(xs),
            "p50": round(statistics.median(xs), 2) if xs else None,
            "p95": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 2) if xs else None,
        }
    return out


def _when(record: Any) -> float:
    """A record's time (ISO 8601, UTC) as a Unix timestamp."""
    return datetime.fromisoformat(str(record.time)).timestamp()


def _fmt(v: float | int | None) -> str:
    return "   -  " if v is None else f"{v:6.1f}"


def _plot(path: Path, rounds: dict[int, Any], faults: list[Fault], started: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    pts = sorted((_when(r) - started, n) for n, r in rounds.items())
    if pts:
        ax.plot(
            [p[0] for p in pts], [p[1] for p in pts], ".-", lw=0.8, ms=3, color="k", label="committed round"
        )
    colors = {
        "kill": "tab:red",
        "freeze": "tab:blue",
        "partition": "tab:purple",
        "delay": "tab:orange",
        "loss": "tab:olive",
    }
    seen: set[str] = set()
    for f in faults:
        group = f.kind.split("-")[0]
        color = colors.get(group, "tab:gray")
        ax.axvspan(
            f.start - started,
            (f.end or f.start) - started,
            color=color,
            alpha=0.18,
            label=group if group not in seen else None,
        )
        seen.add(group)
    ax.set_xlabel("seconds since training started")
    ax.set_ylabel("round")
    ax.set_title(f"chaos run: {len(faults)} faults, {len(rounds)} rounds")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["ChaosConfig", "ChaosReport", "ChaosRun", "Check", "signal"]
