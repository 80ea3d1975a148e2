"""The faults of a chaos run: what each does to a :class:`~tests.chaos.swarm.ChaosSwarm`, and a seeded plan.

Every fault acts from outside the swarm's processes: signals to real processes (SIGKILL, SIGSTOP and
SIGCONT), restarts of what was killed, and packet faults between two network hosts (partition, delay,
loss; :class:`~tests.chaos.netns.SwarmNet`). A fault has a start (injected now) and, for the transient
ones, an end (healed, resumed or restarted after a random delay), which the harness runs from its loop.

Safety rules, so that a run tests survival rather than an impossible swarm: at most a minority of the SN
members is faulty at a time (killed, frozen or partitioned from another member), at most
``max_sites_down`` sites are down (killed or frozen) at once, and a site is never cut off from every SN
member at the same time.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field

KINDS = (
    "kill-sl",
    "kill-ml",
    "kill-leader",
    "kill-sn",
    "freeze-sl",
    "freeze-ml",
    "freeze-sn",
    "partition",
    "delay",
    "loss",
)
"""Every fault kind; :data:`WEIGHTS` says how often each is drawn."""
WEIGHTS = {
    "kill-sl": 2,
    "kill-ml": 2,
    "kill-leader": 2,
    "kill-sn": 1,
    "freeze-sl": 1,
    "freeze-ml": 1,
    "freeze-sn": 1,
    "partition": 2,
    "delay": 1,
    "loss": 1,
}


@dataclass
class Fault:
    """One injected fault (times are wall-clock seconds, ``time.time()``)."""

    index: int
    kind: str
    target: str
    """Site (``node-3``) or SN member (``sn-2``)."""
    peer: str = ""
    """The other host of a network fault."""
    detail: str = ""
    start: float = 0.0
    end: float | None = None
    """When it was healed/resumed/restarted (None while active)."""
    due: float = 0.0
    """When the harness ends it."""
    recovered_s: float | None = None
    note: str = ""

    def describe(self) -> str:
        pair = f" {self.target}<->{self.peer}" if self.peer else f" {self.target}"
        return f"#{self.index:02d} {self.kind}{pair}{(' ' + self.detail) if self.detail else ''}"


@dataclass
class Planner:
    """Draws faults with a seeded RNG, honouring the safety rules against what is active now."""

    seed: int
    sites: list[str]
    members: list[str]
    max_sites_down: int = 2
    min_duration_s: float = 2.0
    max_duration_s: float = 8.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def gap(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    def duration(self) -> float:
        return self.rng.uniform(self.min_duration_s, self.max_duration_s)

    def draw(self, index: int, active: list[Fault], running_sites: list[str]) -> Fault | None:
        """The next fault, or None if nothing may be done right now (try again later)."""
        kinds = list(WEIGHTS)
        for _ in range(20):
            kind = self.rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
            fault = self._make(index, kind, active, running_sites)
            if fault is not None:
                return fault
        return None

    def _make(self, index: int, kind: str, active: list[Fault], running: list[str]) -> Fault | None:
        sn_busy = any(_touches_sn_member(f) for f in active)
        down = {
            f.target
            for f in active
            if f.kind.startswith(("kill-", "freeze-")) and not f.target.startswith("sn-")
        }
        up = [s for s in running if s not in down]
        may_take_site = len(down) < self.max_sites_down and len(up) > 2
        if kind in ("kill-sl", "kill-ml", "freeze-sl", "freeze-ml"):
            if not may_take_site:
                return None
            return Fault(index, kind, self.rng.choice(up))
        if kind == "kill-leader":
            return Fault(index, kind, "") if may_take_site else None
        if kind in ("kill-sn", "freeze-sn"):
            if sn_busy:
                return None
            return Fault(index, kind, self.rng.choice(self.members))
        # Network faults between two hosts.
        hosts = self.sites + self.members
        for _ in range(10):
            a, b = self.rng.sample(hosts, 2)
            if a.startswith("sn-") and b.startswith("sn-") and sn_busy:
                continue
            site = a if not a.startswith("sn-") else b if not b.startswith("sn-") else ""
            other = b if site == a else a
            # Never cut a site off from every member: at most one of its SN links partitioned.
            if (
                site
                and other.startswith("sn-")
                and kind == "partition"
                and any(
                    f.kind == "partition" and site in (f.target, f.peer) and "sn-" in f.target + f.peer
                    for f in active
                )
            ):
                continue
            if any({f.target, f.peer} == {a, b} for f in active if f.peer):
                continue
            if kind == "partition":
                return Fault(index, kind, a, b)
            if kind == "delay":
                ms = self.rng.choice((50, 100, 200, 400))
                return Fault(index, kind, a, b, detail=f"{ms} ms")
            percent = self.rng.choice((5, 10, 20, 30))
            return Fault(index, kind, a, b, detail=f"{percent}%")
        return None


def _touches_sn_member(f: Fault) -> bool:
    """Whether an active fault takes an SN member out (killed, frozen, or partitioned from another one)."""
    if f.kind in ("kill-sn", "freeze-sn"):
        return True
    return f.kind == "partition" and f.target.startswith("sn-") and f.peer.startswith("sn-")


FREEZE = signal.SIGSTOP
THAW = signal.SIGCONT
