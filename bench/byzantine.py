"""Part ``byzantine``: one of N sites sends poisoned updates in every round; what each merge makes of it.

The attacks (``tests/chaos/attacks.py``, relative to the round's starting model ``w0``): ``scaled``
(``w0 + 10 (w - w0)``), ``signflip`` (``w0 - 4 (w - w0)``), ``random`` (``w0`` plus Gaussian noise of 3x
the honest update's per-tensor std). All pass the leader's input checks (names, shapes, dtypes, finite):
only the merge can keep them out. Measured on the digits example (``examples/local/digits``):

- simulated: ``bench.quality``'s data split (``load_setup``) and training loop (``federated``), with an
  aggregate that knows each input's site from the round schedule, poisons site 0's input and merges
  with ``swarmlearning.merge.merge(method, ...)``: mean, coordmedian, trimmedmean (trim fraction 0.2),
  krum and multikrum (byzantine 1; N = 4 allows only 0), geomedian. A site that has finished its epochs
  keeps contributing its last input, as the real runtime's ``checkinModelOnTrainEnd: snapshot`` does
  (``quality.federated`` alone would drop it: then under label skew the poisoned site, which holds more
  data, outlasts most honest ones and ends up merged with a single honest peer). Baselines from the same
  runs: the honest-only swarm (sites 1..N-1, mean) and the clean swarm (all N sites honest, mean).
  Averaged over seeds (data split and initialisation). Per robust method, how much the poisoned input
  was kept out: krum/multikrum the share of rounds in which it was not selected (``MergeResult.selected``);
  coordmedian/trimmedmean the share of coordinates (all rounds) in which its value did not enter the
  result (pushing it further out left the merged value unchanged); geomedian and mean its share of the
  merge weight (geomedian: the Weiszfeld weights at the solution; an honest site has about 1/N).
- real swarm: SN, SL and ML processes on loopback (``swarmlearning.local.runner.LocalSwarm``), node-1
  running ``tests/chaos/poison.py``; every round needs all sites (minPeers = N); accuracy of the final
  model on the common test split, whether every node ends with the same model (file digests), whether
  the ledger verifies, and from the round records how often node-1 was rejected or not selected. The
  honest-only real swarm is the same split without node-1 (its SL and ML processes never start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.envs import REPO, keep_logs
from bench.results import PartResult, Row, Value, log, num

EXAMPLE = REPO / "examples" / "local" / "digits"
POISON = REPO / "tests" / "chaos" / "poison.py"
METHODS = ("mean", "coordmedian", "trimmedmean", "krum", "multikrum", "geomedian")
ROBUST = METHODS[1:]
ATTACKER = 0
"""The poisoned site's index in the simulation (node-1 in the real runs)."""


@dataclass(frozen=True)
class RealCase:
    """One real run: ``n`` sites of an IID split; ``method`` None = the honest-only swarm (node-1 left
    out, mean); else node-1 runs ``attack``."""

    n: int
    method: str | None
    attack: str = "signflip"


REAL_CASES = (
    RealCase(4, None),
    RealCase(4, "mean"),
    RealCase(4, "coordmedian"),
    RealCase(5, None),
    RealCase(5, "krum"),
    RealCase(5, "multikrum"),
)
"""krum/multikrum with byzantine 1 need n >= 2f + 3 = 5 inputs in every round: they run with 5 sites."""


@dataclass(frozen=True)
class ByzantineConfig:
    """Grid of the simulation (sites ``ns``, ``splits``, ``attacks``, ``methods``, ``seeds``) and the
    real runs; ``trim_fraction`` of trimmedmean, ``byzantine`` (f) of krum/multikrum."""

    ns: tuple[int, ...] = (8, 4)
    splits: tuple[str, ...] = ("iid", "label_skew")
    attacks: tuple[str, ...] = ("scaled", "signflip", "random")
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    trim_fraction: float = 0.2
    byzantine: int = 1
    real: tuple[RealCase, ...] = REAL_CASES

    def __post_init__(self) -> None:
        from tests.chaos.attacks import ATTACKS

        if any(n < 3 for n in self.ns):
            raise ValueError(f"ns must all be >= 3 (one poisoned site and at least 2 honest); got {self.ns}")
        bad = [a for a in (*self.attacks, *(c.attack for c in self.real)) if a not in ATTACKS]
        if bad:
            raise ValueError(f"attacks must be among {', '.join(ATTACKS)}; got {bad}")
        unknown = [m for m in (*self.methods, *(c.method for c in self.real if c.method)) if m not in METHODS]
        if unknown:
            raise ValueError(f"methods must be among {', '.join(METHODS)}; got {unknown}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")


# ---------------------------------------------------------------- simulation


@dataclass
class PoisonedMerge:
    """An ``Aggregate`` for ``bench.quality.federated``: the r-th call is the r-th round of ``schedule``
    (the sites in it, ascending, as federated passes them). Site :data:`ATTACKER`'s input is replaced by
    ``attack`` relative to the previous merge (``start`` before the first); a site no longer in the
    schedule contributes its last input (snapshot check-in). Records per round how much the poisoned
    input was kept out (see the module docstring)."""

    method: str
    schedule: list[list[int]]
    counts: list[int]
    start: dict[str, torch.Tensor]
    attack: Any = None
    """A ``tests.chaos.attacks.Attack``, or None for an honest swarm."""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    rounds: int = 0
    last: dict[int, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)
    excluded_rounds: list[bool] = dataclasses.field(default_factory=list)
    excluded_coords: list[float] = dataclasses.field(default_factory=list)
    poison_weight: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.w0 = self.start
        self.generator = torch.Generator().manual_seed(10_000 + self.seed)

    def __call__(self, models: list[dict[str, torch.Tensor]], counts: list[int]) -> dict[str, torch.Tensor]:
        from swarmlearning.merge import merge

        from tests.chaos.attacks import poison_update

        if self.rounds >= len(self.schedule) or len(models) != len(self.schedule[self.rounds]):
            raise RuntimeError(
                f"bench.quality.federated merged {len(models)} models in call {self.rounds + 1}; its round "
                f"schedule says {self.schedule[self.rounds] if self.rounds < len(self.schedule) else 'none'}"
                " (did sync_schedule or federated change?)"
            )
        for site, state in zip(self.schedule[self.rounds], models, strict=True):
            if site == ATTACKER and self.attack is not None:
                state = poison_update(self.w0, state, self.attack, self.generator)
            self.last[site] = state
        sites = sorted(self.last)
        inputs = [self.last[s] for s in sites]
        weights = [float(self.counts[s]) for s in sites]
        options = dict(self.options)
        if self.method in ("krum", "multikrum"):  # n >= 2f + 3; with fewer sites use the largest f allowed
            options["byzantine"] = min(int(options.get("byzantine", 0)), max(0, (len(inputs) - 3) // 2))
        result = merge(self.method, inputs, weights, **options)
        if self.attack is not None and ATTACKER in self.last:
            self._measure(sites.index(ATTACKER), inputs, weights, options, result)
        self.w0 = result.state
        self.rounds += 1
        return result.state

    def _measure(
        self,
        pos: int,
        inputs: list[dict[str, torch.Tensor]],
        weights: list[float],
        options: Mapping[str, Any],
        result: Any,
    ) -> None:
        from swarmlearning.merge import merge

        names = [k for k, v in inputs[pos].items() if v.is_floating_point()]
        if self.method in ("krum", "multikrum"):
            self.excluded_rounds.append(pos not in result.selected)
        elif self.method in ("coordmedian", "trimmedmean"):
            # Push the poisoned values further from the honest median: where they did not enter the
            # result, it stays bit for bit the same (trimmed or not the median before and after).
            honest = [m for i, m in enumerate(inputs) if i != pos]
            pushed, informative = dict(inputs[pos]), {}
            for k in names:
                med = torch.stack([m[k] for m in honest]).median(dim=0).values
                pushed[k] = inputs[pos][k] + (inputs[pos][k] - med)
                informative[k] = inputs[pos][k] != med  # at the median: pushing moves nothing
            again = merge(self.method, [*inputs[:pos], pushed, *inputs[pos + 1 :]], weights, **options)
            out = sum(int((informative[k] & (again.state[k] == result.state[k])).sum()) for k in names)
            total = sum(int(informative[k].sum()) for k in names)
            self.excluded_coords.append(out / total if total else 1.0)
        if self.method in ("mean", "geomedian"):
            w = np.asarray(weights) / sum(weights)
            if self.method == "geomedian":
                dist = np.array(
                    [
                        float(sum(((m[k].double() - result.state[k].double()) ** 2).sum() for k in names))
                        ** 0.5
                        for m in inputs
                    ]
                )
                w = w / np.maximum(dist, 1e-12)
                w = w / w.sum()
            self.poison_weight.append(float(w[pos]))


def _schedule(setup: Any) -> list[list[int]]:
    from bench.quality import sync_schedule

    batches = [setup.epochs * len(DataLoader(s, batch_size=setup.batch_size)) for s in setup.shards]
    return sync_schedule(batches, setup.sync_frequency)


def _start(example: ModuleType, seed: int) -> dict[str, torch.Tensor]:
    """The model every site of ``quality.federated`` starts from (it seeds torch, then builds it)."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in example.build_model().state_dict().items()}


def simulate(
    example: ModuleType, setup: Any, seed: int, method: str, attack: Any, options: Mapping[str, Any]
) -> tuple[float, PoisonedMerge]:
    """Accuracy of one simulated swarm and its merge record (``attack`` None: every site honest)."""
    from bench.quality import federated

    agg = PoisonedMerge(
        method,
        _schedule(setup),
        [len(s) for s in setup.shards],
        _start(example, seed),
        attack,
        options,
        seed,
    )
    acc = federated(example, setup, seed, agg)
    if agg.rounds != len(agg.schedule):
        raise RuntimeError(f"federated merged {agg.rounds} rounds, its schedule has {len(agg.schedule)}")
    return acc, agg


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def sim_rows(config: ByzantineConfig) -> list[Row]:
    from swarmlearning.local.config import load_config
    from swarmlearning.local.report import load_example

    from bench.quality import load_setup
    from tests.chaos.attacks import Attack

    rows: list[Row] = []
    for n in config.ns:
        for split in config.splits:
            t0 = time.perf_counter()
            rc = dataclasses.replace(load_config(EXAMPLE, nodes=n), split=split)
            example = load_example(rc)
            clean, honest = [], []
            cells: dict[tuple[str, str], dict[str, list[float]]] = {}
            for seed in config.seeds:
                setup = load_setup(example, rc, seed)
                without = dataclasses.replace(setup, shards=setup.shards[1:])
                with contextlib.redirect_stdout(io.StringIO()):
                    clean.append(simulate(example, setup, seed, "mean", None, {})[0])
                    honest.append(simulate(example, without, seed, "mean", None, {})[0])
                    for attack in config.attacks:
                        for method in config.methods:
                            opts = _options(method, config)
                            acc, agg = simulate(example, setup, seed, method, Attack(attack), opts)
                            cell = cells.setdefault((attack, method), {"acc": [], "ex": [], "w": []})
                            cell["acc"].append(acc)
                            if agg.excluded_rounds:
                                cell["ex"].append(float(np.mean(agg.excluded_rounds)))
                            if agg.excluded_coords:
                                cell["ex"].append(float(np.mean(agg.excluded_coords)))
                            if agg.poison_weight:
                                cell["w"].append(float(np.mean(agg.poison_weight)))
            clean_pct, honest_pct = 100 * float(np.mean(clean)), 100 * float(np.mean(honest))
            for (attack, method), cell in cells.items():
                acc_pct = 100 * float(np.mean(cell["acc"]))
                ex, w = _mean(cell["ex"]), _mean(cell["w"])
                f = min(config.byzantine, (n - 3) // 2)
                note = f"mean of {len(config.seeds)} seeds"
                if method in ("krum", "multikrum"):
                    note += f"; byzantine={f}" + (f" (N={n} allows no more)" if f < config.byzantine else "")
                if method == "trimmedmean" and config.trim_fraction * n < 1:
                    note += f"; trim fraction {config.trim_fraction:g} of {n} sites cuts no site: the mean"
                rows.append(
                    Row(
                        "byzantine",
                        f"sim N={n} {split} {attack} {method}",
                        {"mode": "sim", "N": n, "split": split, "attack": attack, "method": method},
                        {
                            "acc_%": acc_pct,
                            "honest_only_%": honest_pct,
                            "clean_%": clean_pct,
                            "minus_honest": acc_pct - honest_pct,
                            "excluded_%": None if ex is None else 100 * ex,
                            "poison_weight_%": None if w is None else 100 * w,
                        },
                        note,
                    )
                )
            best = {
                a: max((r for r in rows[-len(cells) :] if r.params["attack"] == a), key=_acc)
                for a in config.attacks
            }
            log(
                f"byzantine: sim N={n} {split}: honest-only {honest_pct:.1f} %, "
                f"clean {clean_pct:.1f} %; best "
                + ", ".join(f"{a}: {r.params['method']} {_acc(r):.1f} %" for a, r in best.items())
                + f" ({time.perf_counter() - t0:.0f} s)"
            )
    return rows


def _acc(row: Row) -> float:
    return num(row.metrics["acc_%"])


def _options(method: str, config: ByzantineConfig) -> dict[str, Any]:
    if method == "trimmedmean":
        return {"trim_fraction": config.trim_fraction}
    if method in ("krum", "multikrum"):
        return {"byzantine": config.byzantine}
    return {}


# ---------------------------------------------------------------- real swarm


@dataclass(frozen=True)
class RealOutcome:
    accuracy: float
    identical: bool
    ledger_ok: bool
    ledger_message: str
    rounds: int
    attacked_rounds: int
    """Rounds after the first in which node-1 sent a poisoned input: it took part (its close record
    names it) and its input differs from every other participant's (it does not after a check-in with
    no training since the last merge: nothing to amplify)."""
    rejected: int
    not_selected: int
    """Of those rounds: node-1's input rejected by the leader's checks / not picked by the merge."""
    identical_input_rounds: int
    """Rounds after the first in which node-1's input equalled another participant's."""
    wall_s: float


def real_run(case: RealCase, config: ByzantineConfig, work: Path) -> RealOutcome:
    """One local swarm of ``case.n`` digits sites (IID), every round with all of them."""
    from swarmlearning.local.config import load_config
    from swarmlearning.local.datasets import Shard
    from swarmlearning.local.report import accuracy, load_example, model_from_file
    from swarmlearning.local.runner import LocalSwarm, RunError

    label = f"n{case.n}-{case.method or 'honest'}"
    base = load_config(EXAMPLE, nodes=case.n)
    running = case.n - 1 if case.method is None else case.n
    swarm_cfg = dict(base.swarm) | {
        "merge_method": case.method or "mean",
        "min_peers": running,
        "quorum_timeout": 180,
        "leader_failure_timeout": 20,
    }
    cfg = dataclasses.replace(base, split="iid", swarm=swarm_cfg, timeout_seconds=900)
    names = cfg.node_names()
    env = {
        n: {"SWARM_BYZANTINE": str(config.byzantine), "SWARM_TRIM_FRACTION": str(config.trim_fraction)}
        for n in names
    }
    ml = {}
    if case.method is not None:
        ml["node-1"] = [sys.executable, str(POISON), "--kind", case.attack, str(cfg.script)]
    run_dir = work / label
    started = time.monotonic()
    with LocalSwarm(cfg, run_dir, node_env=env, ml_command=ml) as swarm:
        try:
            swarm.prepare()
            if case.method is None:
                del swarm.nodes["node-1"]  # the same split, without the poisoned site
            swarm.start_all()
            codes = swarm.wait_ml(fail_fast=True)
            if any(codes.values()):
                raise RunError(f"ML processes failed: {codes}")
            snapshot = swarm.ledger_snapshot()
        except Exception:
            keep_logs(run_dir / "logs", f"byzantine-{label}")
            raise
        finals = {n: node.out_dir / "model.safetensors" for n, node in swarm.nodes.items()}
    wall = time.monotonic() - started
    verdict = snapshot.verify((run_dir / "pki" / "ca" / "ca.crt").read_bytes())
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in finals.values()}
    example = load_example(cfg)
    test = Shard.load(run_dir / "data" / "test.npz")
    acc = accuracy(model_from_file(example, finals[sorted(finals)[-1]]), test, example)
    closes = {int(r.body["round"]): r for r in snapshot.records if r.kind == "close"}
    results = {int(r.body["round"]): r for r in snapshot.records if r.kind == "round"}
    attacked = rejected = not_selected = same = 0
    for n, rec in results.items():
        present = {p["name"] for p in closes[n].body["participants"]} if n in closes else set()
        if n == 1 or "node-1" not in present:
            continue
        inputs = rec.body.get("input_digests") or {}
        if "node-1" in inputs and any(d == inputs["node-1"] for k, d in inputs.items() if k != "node-1"):
            same += 1
            continue
        attacked += 1
        if "node-1" in (rec.body.get("rejected") or {}):
            rejected += 1
        elif "node-1" not in (rec.body.get("extra") or {}).get("selected", ["node-1"]):
            not_selected += 1
    return RealOutcome(
        accuracy=acc,
        identical=len(digests) == 1,
        ledger_ok=verdict.ok,
        ledger_message=verdict.message(),
        rounds=max(results, default=0),
        attacked_rounds=attacked,
        rejected=rejected,
        not_selected=not_selected,
        identical_input_rounds=same,
        wall_s=wall,
    )


def real_rows(config: ByzantineConfig, work: Path) -> list[Row]:
    rows: list[Row] = []
    honest: dict[int, float] = {}
    for i, case in enumerate(config.real):
        what = f"{case.attack} {case.method}" if case.method else "honest-only"
        case_name = f"real N={case.n} iid {what}"
        log(f"byzantine: real run {i + 1}/{len(config.real)}: {case_name}")
        params: dict[str, Value] = {
            "mode": "real",
            "N": case.n,
            "split": "iid",
            "attack": case.attack if case.method else "none",
            "method": case.method or "mean",
        }
        try:
            out = real_run(case, config, work)
        except Exception as exc:  # one failed run is a note, not a lost part
            log(f"byzantine: {case_name} failed: {exc}")
            rows.append(Row("byzantine", case_name, params, {}, f"failed: {str(exc).splitlines()[0][:200]}"))
            continue
        acc = 100 * out.accuracy
        if case.method is None:
            honest[case.n] = acc
        ref = honest.get(case.n)
        kept_out = out.rejected + out.not_selected
        picks = case.method in ("krum", "multikrum")  # the others merge every accepted input
        metrics: dict[str, Value] = {
            "acc_%": acc,
            "honest_only_%": ref,
            "minus_honest": None if ref is None or case.method is None else acc - ref,
            "excluded_%": 100 * kept_out / out.attacked_rounds if picks and out.attacked_rounds else None,
            "identical": "yes" if out.identical else "NO",
            "ledger": "ok" if out.ledger_ok else "BROKEN",
            "rounds": out.rounds,
            "wall_s": out.wall_s,
        }
        if case.method is None:
            note = f"node-1 left out: {case.n - 1} honest sites of the {case.n}-site split"
        else:
            note = (
                f"node-1 poisoned ({case.attack}); of {out.attacked_rounds} rounds with a poisoned input: "
                f"{out.rejected} rejected"
                + (
                    f", {out.not_selected} not selected"
                    if picks
                    else f" ({case.method} merges every accepted input)"
                )
            )
            if out.identical_input_rounds:
                note += (
                    f"; {out.identical_input_rounds} round(s) where node-1's input equalled an honest one "
                    "(no training since the last merge), not counted"
                )
        if not out.ledger_ok:
            note += f"; ledger: {out.ledger_message}"
        log(
            f"byzantine: {case_name}: accuracy {acc:.1f} %, {out.rounds} rounds, final models "
            f"{'identical' if out.identical else 'DIFFER'}, ledger {out.ledger_message}; {note} "
            f"({out.wall_s:.0f} s)"
        )
        rows.append(Row("byzantine", case_name, params, metrics, note))
    return rows


# ---------------------------------------------------------------- summary


def summary(rows: Sequence[Row], config: ByzantineConfig) -> list[str]:
    out: list[str] = []
    sim = [r for r in rows if r.params.get("mode") == "sim"]
    met = total = 0
    for n in config.ns:
        for split in config.splits:
            group = [r for r in sim if r.params["N"] == n and r.params["split"] == split]
            if not group:
                continue
            parts = []
            for attack in config.attacks:
                cell = [r for r in group if r.params["attack"] == attack]
                mean = next((r for r in cell if r.params["method"] == "mean"), None)
                robust = [r for r in cell if r.params["method"] in ROBUST]
                if not robust:
                    continue
                best = max(robust, key=lambda r: num(r.metrics["minus_honest"]))
                total += 1
                met += num(best.metrics["minus_honest"]) >= -1.0
                parts.append(
                    f"{attack}: mean {num(mean.metrics['minus_honest']):+.1f}, best {best.params['method']} "
                    f"{num(best.metrics['minus_honest']):+.1f}"
                    if mean is not None
                    else f"{attack}: best {best.params['method']} {num(best.metrics['minus_honest']):+.1f}"
                )
            g0 = group[0].metrics
            out.append(
                f"sim N={n} {split} (honest-only {num(g0['honest_only_%']):.1f} %, clean "
                f"{num(g0['clean_%']):.1f} %), points vs honest-only: " + "; ".join(parts)
            )
    if total:
        out.insert(
            0,
            f"simulated: within 1 point of the honest-only swarm under at least one robust method in {met} "
            f"of {total} (N, split, attack) cells",
        )
    real = [r for r in rows if r.params.get("mode") == "real" and r.metrics.get("acc_%") is not None]
    attacked = [r for r in real if r.params["attack"] != "none"]
    if attacked:
        cells = ", ".join(
            f"N={r.params['N']} {r.params['method']} {num(r.metrics['acc_%']):.1f} %"
            + (f" ({num(d):+.1f})" if (d := r.metrics.get("minus_honest")) is not None else "")
            + (
                f", kept out in {num(x):.0f} % of rounds"
                if (x := r.metrics.get("excluded_%")) is not None
                else ""
            )
            for r in attacked
        )
        honest = ", ".join(
            f"N={r.params['N']} {num(r.metrics['acc_%']):.1f} %" for r in real if r.params["attack"] == "none"
        )
        same = all(r.metrics.get("identical") == "yes" for r in real)
        ledgers = all(r.metrics.get("ledger") == "ok" for r in real)
        out.append(
            f"real swarm, node-1 {attacked[0].params['attack']}: {cells}"
            + (f"; honest-only {honest}" if honest else "")
            + "; "
            f"final models identical on every node in {'every' if same else 'NOT every'} run, ledgers "
            f"{'verify' if ledgers else 'DO NOT all verify'}"
        )
    failed = [r.case for r in rows if not r.metrics]
    if failed:
        out.append("failed: " + ", ".join(failed))
    return out


def run(config: ByzantineConfig) -> PartResult:
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    rows = sim_rows(config)
    if config.real:
        work = Path(tempfile.mkdtemp(prefix="bench-byzantine-"))
        try:
            rows += real_rows(config, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    lines = summary(rows, config)
    return PartResult(
        "byzantine",
        tuple(rows),
        {
            "trimmedmean trim fraction": config.trim_fraction,
            "krum/multikrum byzantine": config.byzantine,
            "simulation seeds": len(config.seeds),
            "attacks": "scaled s=10, signflip s=4, random sigma=3x update std",
        },
        summary=tuple(lines),
        headline=tuple(line for line in lines if line.startswith(("simulated:", "real swarm"))),
    )
