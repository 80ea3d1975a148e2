"""Chaos in the cluster tier: during one training, site pods, the operator and SN members are deleted at
random (issue 10: "the same harness in the cluster tier deletes pods and the operator at random").

One SwarmTask of the digits example on the three sites of examples/k8s/minimal-swarm.yaml (its own
namespace, the chart's operator), long enough for the faults. Seven faults are drawn with
``random.Random(seed)`` (seed: ``$SWARM_CHAOS_SEED``, default 10; printed): three deletions of a running
site's task pod (the operator starts it again), two of the operator pod (its Deployment brings it back),
two of one SN member pod (the operator recreates it on its volume; never two members at a time). After
each fault the test either waits until the deleted thing is back or pauses at random, so faults also
overlap (a site pod deleted while the operator is away). Before a fault of a kind, the previous one of
that kind is back: one site and one SN member at most are away at a time, so quorum (2 of 3) stays
reachable. Then it checks:

* the task ends Succeeded; every site's model (`swarmctl model fetch --node`) is the same file, whose
  digest is the final round record's merged digest;
* the ledger verifies (`swarmctl ledger verify`), rounds are contiguous with one result each;
* the operator never crashed (its container's restart count stays 0 in every operator pod seen);
* the task's status carries the ledger height and the final round.

Figures (printed): per fault, when it hit, how long until the thing was back and until the next
committed round (and, for a site, the next round it took part in); rounds; training time.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.e2e.test_swarm import (
    EXAMPLE,
    NETWORK,
    OPERATOR_NS,
    SITES,
    Swarm,
    installed_swarm,
    poll,
)
from tests.testbed.cluster import Cluster

pytestmark = pytest.mark.e2e

NS = "chaos"
TASK = "digits-chaos"
DEFAULT_SEED = 10
EPOCHS = 100
"""Epochs per site: about 3 minutes of training here without faults, so that the faults (1-4 minutes)
land while every site trains. A site whose pod is deleted runs its program again from the latest merged
model, so its run ends later than the others' (120 epochs: 354 s of training with the faults)."""
FAULT_KINDS = ("site",) * 3 + ("operator",) * 2 + ("sn",) * 2
PAUSE_S = (4.0, 15.0)
"""Random pause after a fault when the test does not wait for the thing to be back."""
BACK_TIMEOUT_S = 300.0
"""Bound of each wait for a deleted pod's successor (deletion grace, operator resync, image start)."""
TASK_TIMEOUT_S = 1200.0
TEST_TIMEOUT_S = 2400
"""pytest-timeout for the test (setup included: a cold image import into the node takes ~8 min)."""
LEADER_FAILURE_TIMEOUT_S = 30
"""The task's leaderFailureTimeoutSeconds (default 600): a leader whose pod is deleted mid-round costs
at most this long, instead of stalling the run for ten minutes."""


@dataclass
class Fault:
    """One injected fault and what followed it (times: time.time() seconds)."""

    kind: str
    """site, operator or sn."""
    target: str
    """The deleted pod."""
    at: float
    at_round: int
    """status.round when it was injected (the ledger may be ahead)."""
    site: str = ""
    back: float | None = None
    """When its successor was seen Running (Ready for the operator and SN members)."""


def _chaos_manifests() -> str:
    """The example's network, PVCs and sites, and instead of its task a long one for the faults."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    (task,) = [d for d in docs if d["kind"] == "SwarmTask"]
    task["metadata"] = {"name": TASK}
    task["spec"]["totalEpochs"] = EPOCHS
    task["spec"]["sync"]["fullQuorumWaitSeconds"] = 5
    task["spec"]["sync"]["leaderFailureTimeoutSeconds"] = LEADER_FAILURE_TIMEOUT_S
    return yaml.safe_dump_all([d for d in docs if d["kind"] != "SwarmTask"] + [task])


@pytest.fixture(scope="module")
def chaos(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    with installed_swarm(real_cluster, tmp_path_factory.mktemp("chaos"), NS, _chaos_manifests()) as s:
        yield s


class Chaos:
    """The fault injector: reads pods, deletes them, waits for their successors; remembers every
    operator pod's restart count it saw."""

    def __init__(self, swarm: Swarm, rng: random.Random) -> None:
        self.swarm = swarm
        self.rng = rng
        self.operator_restarts: dict[str, int] = {}
        """Operator pod name -> highest restart count of its container seen."""
        self.pending: list[tuple[Fault, Callable[[], bool]]] = []
        """Faults the test did not wait for, with the probe that tells their successor is there."""

    def diagnose(self) -> str:
        """The module's diagnostics plus the previous logs of containers that restarted."""
        parts = [self.swarm.diagnose()]
        for ns, pods in ((NS, self.swarm.items("pods")), (OPERATOR_NS, self.swarm.operator_pods())):
            for pod in pods:
                statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get(
                    "containerStatuses", []
                )
                for c in statuses:
                    if c.get("restartCount", 0) > 0:
                        name = pod["metadata"]["name"]
                        r = self.swarm.cluster.kubectl(
                            "logs", "-n", ns, name, "-c", c["name"], "--previous", "--tail=40", check=False
                        )
                        parts.append(f"--- {name}/{c['name']} before its restart\n{r.stdout[-3000:]}")
        return "\n".join(parts)

    def task(self) -> dict[str, Any]:
        """The task's status; fails the test at once when the task failed."""
        st = self.swarm.task_status(TASK)
        if st.get("phase") == "Failed":
            raise AssertionError(f"SwarmTask {TASK} failed during the faults: {st}\n{self.diagnose()}")
        return st

    def running_site_pods(self) -> dict[str, dict[str, Any]]:
        """Site -> its task pod that is Running and not being deleted."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.swarm.items("pods", "-l", f"swarmlearning.dev/task={TASK}"):
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
                out[p["metadata"]["labels"]["swarmlearning.dev/learning-node"]] = p
        return out

    def site_back(self, site: str, old_uid: str) -> bool:
        """A new pod of ``site`` runs, or the site has finished (its successor already succeeded)."""
        self.task()
        for p in self.swarm.items(
            "pods", "-l", f"swarmlearning.dev/task={TASK},swarmlearning.dev/learning-node={site}"
        ):
            fresh = p["metadata"]["uid"] != old_uid and not p["metadata"].get("deletionTimestamp")
            if fresh and p["status"].get("phase") in ("Running", "Succeeded"):
                return True
        return False

    def operator(self) -> dict[str, Any] | None:
        """The Ready operator pod (None when there is none), noting its restart count."""
        for p in self.swarm.operator_pods():
            for c in p["status"].get("containerStatuses", []):
                name = p["metadata"]["name"]
                self.operator_restarts[name] = max(self.operator_restarts.get(name, 0), c["restartCount"])
        return self.swarm.ready_operator()

    def sn_member(self, i: int) -> dict[str, Any] | None:
        """SN member pod ``i`` when it is Running and Ready and not being deleted."""
        r = self.swarm.cluster.kubectl("get", "pod", "-n", NS, f"{NETWORK}-sn-{i}", "-o", "json", check=False)
        if r.returncode != 0:
            return None
        pod: dict[str, Any] = yaml.safe_load(r.stdout)
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        )
        return pod if ready and not pod["metadata"].get("deletionTimestamp") else None

    def wait(self, what: str, probe: Callable[[], Any]) -> None:
        poll(what, probe, BACK_TIMEOUT_S, self.diagnose)

    def all_back(self, kind: str) -> None:
        """Wait until nothing of ``kind`` is away: every unfinished site runs, the operator is Ready, or
        every SN member is Ready."""
        if kind == "site":

            def sites_up() -> bool:
                st = self.task()
                done = {n["name"] for n in st.get("nodes", []) if n.get("phase") == "Succeeded"}
                return set(self.running_site_pods()) | done >= set(SITES)

            self.wait("every unfinished site to have a running pod", sites_up)
        elif kind == "operator":
            self.wait("the operator pod to be Ready", self.operator)
        else:
            for i in range(3):
                self.wait(f"SN member {i} to be Ready", functools.partial(self.sn_member, i))

    def inject(self, kind: str) -> Fault | None:
        """Delete one pod of ``kind``; None when no site pod is running any more (training ended)."""
        self.settle(kind)
        self.all_back(kind)
        st = self.task()
        at_round = int(st.get("round") or 0)
        if kind == "site":
            running = self.running_site_pods()
            if not running:
                return None
            site = self.rng.choice(sorted(running))
            pod = running[site]
            fault = Fault(kind, pod["metadata"]["name"], time.time(), at_round, site=site)
            self.swarm.cluster.kubectl("delete", "pod", "-n", NS, fault.target, "--wait=false")
            uid = pod["metadata"]["uid"]
            self.back_when(fault, lambda: self.site_back(site, uid))
        elif kind == "operator":
            old = self.operator()
            assert old is not None
            fault = Fault(kind, old["metadata"]["name"], time.time(), at_round)
            self.swarm.cluster.kubectl("delete", "pod", "-n", OPERATOR_NS, fault.target, "--wait=false")
            uid = old["metadata"]["uid"]
            self.back_when(
                fault, lambda: (lambda p: p is not None and p["metadata"]["uid"] != uid)(self.operator())
            )
        else:
            i = self.rng.randrange(3)
            old = self.sn_member(i)
            assert old is not None
            fault = Fault(kind, old["metadata"]["name"], time.time(), at_round)
            self.swarm.cluster.kubectl("delete", "pod", "-n", NS, fault.target, "--wait=false")
            uid = old["metadata"]["uid"]
            self.back_when(
                fault, lambda: (lambda p: p is not None and p["metadata"]["uid"] != uid)(self.sn_member(i))
            )
        return fault

    def back_when(self, fault: Fault, probe: Callable[[], bool]) -> None:
        """Either wait for the successor (recording when it came), or pause at random and move on; the
        time it came back is then taken before the next fault of the same kind."""
        if self.rng.random() < 0.5:
            self.wait(f"the successor of {fault.target} ({fault.kind} fault)", probe)
            fault.back = time.time()
        else:
            pause = self.rng.uniform(*PAUSE_S)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                if fault.back is None and probe():
                    fault.back = time.time()
                time.sleep(1)
            self.pending.append((fault, probe))

    def settle(self, kind: str | None = None) -> None:
        """Wait for the successors of the faults (of ``kind``, else all) the test did not wait for, and
        record when they came."""
        for fault, probe in [(f, p) for f, p in self.pending if kind in (None, f.kind)]:
            if fault.back is None:
                self.wait(f"the successor of {fault.target} ({fault.kind} fault)", probe)
                fault.back = time.time()
            self.pending.remove((fault, probe))


def _record_time(rec: Any) -> float:
    return dt.datetime.fromisoformat(rec.time).timestamp()


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_training_survives_random_deletions_of_site_pods_the_operator_and_sn_members(chaos: Swarm) -> None:
    seed = int(os.environ.get("SWARM_CHAOS_SEED", DEFAULT_SEED))
    rng = random.Random(seed)
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    print(f"\nchaos: seed {seed} (SWARM_CHAOS_SEED), faults in order: {', '.join(kinds)}")
    injector = Chaos(chaos, rng)

    poll(
        f"{TASK} to commit round 2",
        lambda: int(injector.task().get("round") or 0) >= 2,
        600,
        injector.diagnose,
    )
    faults: list[Fault] = []
    for kind in kinds:
        fault = injector.inject(kind)
        if fault is None:
            break
        faults.append(fault)
        print(
            f"chaos: {time.strftime('%H:%M:%S', time.localtime(fault.at))} deleted {fault.target} ({kind}),"
            f" status.round {fault.at_round}"
        )
    injector.settle()
    assert len(faults) == len(kinds), (
        f"training ended after {len(faults)} of {len(kinds)} faults; give {TASK} more epochs"
    )

    st = chaos.wait_task(TASK, "Succeeded", TASK_TIMEOUT_S)
    injector.operator()  # a last look at the operator's restart count

    # The ledger: verifies, rounds contiguous with one result each (round_records fails on a second).
    with chaos.port_forward(f"svc/{NETWORK}-sn", 30304) as port:
        verify = chaos.swarmctl(
            "ledger", "verify", "--endpoints", f"127.0.0.1:{port}", "--cert-dir", str(chaos.reader_cert())
        )
    assert re.search(r"\bok\b|verified", verify.stdout, re.I), verify.stdout
    rounds = chaos.round_records(TASK)

    async def abandoned(ledger: Any) -> list[int]:
        return sorted(int(r.body["round"]) for r in await ledger.records() if r.kind == "abandon")

    gone = chaos.ledger(abandoned)  # rounds every participant left before a merge (recorded, signed)
    assert sorted(set(rounds) | set(gone)) == list(range(1, max(rounds) + 1)), (
        f"rounds not contiguous: merged {sorted(rounds)}, abandoned {gone}"
    )
    final = rounds[max(rounds)]

    # Every site that holds a model holds the final round's merged model, and at least minPeers do. A site
    # whose pod was deleted in the final round and came back after the others stopped cannot get it yet
    # (nobody serves it any more: a known gap, see docs/architecture.md); it is printed, not hidden.
    digests, missing = {}, {}
    for site in SITES:
        out = chaos.work / f"{site}.safetensors"
        got = chaos.swarmctl("model", "fetch", TASK, "-n", NS, "--node", site, "-o", str(out), check=False)
        if got.returncode == 0:
            digests[site] = hashlib.sha256(out.read_bytes()).hexdigest()
        else:
            missing[site] = got.stderr.strip()[-300:]
    print(f"chaos: final round {max(rounds)}; sites without the final model: {missing or 'none'}")
    assert set(digests.values()) == {final.body["merged_digest"]}, (
        f"final round {max(rounds)} merged {final.body['merged_digest']}, sites hold {digests}"
    )
    assert len(digests) >= 2, f"fewer than minPeers sites hold the final model: {digests}, missing {missing}"

    # The operator never crashed: each of its pods' container restart counts stayed 0.
    assert injector.operator_restarts and not any(injector.operator_restarts.values()), (
        f"operator container restarts: {injector.operator_restarts}\n{injector.diagnose()}"
    )

    # The task's status carries the ledger height and the final round.
    async def height(ledger: Any) -> int:
        return len(await ledger.records())

    records = chaos.ledger(height)
    status = poll(
        f"status of {TASK} to show the final round {max(rounds)} and ledger height {records}",
        lambda: (
            lambda s: (
                s
                if (s.get("lastRound") or {}).get("round") == max(rounds)
                and s["lastRound"].get("mergedDigest") == final.body["merged_digest"]
                and s.get("round") == max(rounds)
                and s.get("ledgerHeight") == records
                else None
            )
        )(chaos.task_status(TASK)),
        120,
        lambda: f"status: {chaos.task_status(TASK)}",
    )
    # Sites that hold the final model succeeded; only a site of the known gap above may have failed.
    failed = {n["name"] for n in status["nodes"] if n["phase"] != "Succeeded"}
    assert failed <= set(missing), status["nodes"]
    assert {n["name"] for n in status["nodes"] if n["phase"] == "Succeeded"} >= set(digests), status["nodes"]

    # Figures.
    def next_round(after: float, site: str = "") -> float | None:
        times = sorted(
            _record_time(r)
            for r in rounds.values()
            if _record_time(r) > after and (not site or site in r.body["participants"])
        )
        return times[0] - after if times else None

    def fmt(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    def round_at(t: float) -> int:
        """The last round committed before ``t`` (the operator's status.round lags the ledger)."""
        return max((n for n, r in rounds.items() if _record_time(r) <= t), default=0)

    start = min(_record_time(r) for r in rounds.values())
    print(
        f"\n{'fault':<34} {'t s':>6} {'round':>5} {'back s':>7} {'next round s':>13} {'site in round s':>16}"
    )
    for f in faults:
        back = f.back - f.at if f.back is not None else None
        site_round = next_round(f.back, f.site) if f.site and f.back is not None else None
        print(
            f"{f.kind + ' ' + f.target:<34} {f.at - start:>6.0f} {round_at(f.at):>5} {fmt(back):>7}"
            f" {fmt(next_round(f.at)):>13} {fmt(site_round):>16}"
        )
    sl_restarts = {
        p["metadata"]["name"]: sum(
            c.get("restartCount", 0) for c in p["status"].get("initContainerStatuses", [])
        )
        for p in chaos.items("pods", "-l", f"swarmlearning.dev/task={TASK}")
    }
    total = _record_time(final) - start
    restarts = {n["name"]: n["restarts"] for n in st["nodes"]}
    print(
        f"chaos: {len(faults)} faults, {max(rounds)} rounds, training {total:.0f} s (first to last round),"
        f" attempts restarted per site {restarts}, SL sidecar restarts {sl_restarts}"
    )
