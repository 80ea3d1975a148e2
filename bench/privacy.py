"""Part privacy: what differential privacy costs in accuracy, and what secure aggregation costs per round.

Accuracy against ε: ``swarmlearning.local.cli.run_example`` on a copy of ``examples/local/digits`` (the
real local runtime: SN, SL nodes over mTLS, ML processes), once without privacy, once per DP-SGD noise
multiplier (sample level, Opacus in the training script) and once per site-level noise multiplier
(the contract's ``siteDp*``: every round update clipped and noised on its site). Each run's own
baselines come with it: the mean local-only model and the central model on pooled data. ε is what the
ledger's round records say: site level after the last round; DP-SGD, the highest of the nodes'. Accuracy
is on the example's common held-out test split.

Overhead: part round's machinery (:mod:`bench.rounds`) with the round modes ``single`` (plain weighted
mean, one leader) and ``secagg`` (the same with ``secureAggregation``: keys, shares, masked inputs,
reveals), N peers, same model, in the same run: round time and the busiest node's bytes, and their
ratios to the plain mean.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.envs import REPO, keep_logs
from bench.results import PartResult, Row, Value, log, num

EXAMPLE = REPO / "examples" / "local" / "digits"
CLIP_NORM = 1.0
"""Site-level DP: the L2 bound of a site's round update."""


@dataclass(frozen=True)
class PrivacyConfig:
    """dp_sgd_sigmas: DP-SGD noise multipliers; site_sigmas: site-level noise multipliers (clip
    :data:`CLIP_NORM`); epochs and nodes of the digits runs; ns, p, rounds: the overhead grid."""

    dp_sgd_sigmas: tuple[float, ...] = (0.5, 0.8, 1.2, 2.0)
    site_sigmas: tuple[float, ...] = (0.1, 0.3, 1.0)
    epochs: int = 10
    nodes: int = 4
    ns: tuple[int, ...] = (3, 5, 8)
    p: int = 10**6
    rounds: int = 4

    def __post_init__(self) -> None:
        if any(s <= 0 for s in (*self.dp_sgd_sigmas, *self.site_sigmas)):
            raise ValueError("noise multipliers must be > 0")
        if any(s < 0.1 or s > 100 for s in self.site_sigmas):
            raise ValueError(f"site_sigmas must be 0.1-100 (siteDpNoiseMultiplier); got {self.site_sigmas}")
        if self.epochs < 1 or self.nodes < 2:
            raise ValueError(f"epochs must be >= 1 and nodes >= 2; got {self.epochs}, {self.nodes}")


def digits_run(work: Path, label: str, swarm: Mapping[str, Any], config: PrivacyConfig) -> Any:
    """One real local run of the digits example with ``swarm`` added to its contract settings."""
    from swarmlearning.local.cli import run_example

    folder = work / label
    shutil.copytree(EXAMPLE, folder / "example")
    path = folder / "example" / "swarm.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["nodes"] = config.nodes
    raw["train"]["epochs"] = config.epochs
    raw["swarm"] |= dict(swarm)
    path.write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    try:
        return run_example(folder / "example", out=folder / "run", emit=lines.append)
    except Exception:
        keep_logs(folder / "run" / "logs", f"privacy-{label}")
        raise


def accuracy_rows(config: PrivacyConfig, work: Path) -> list[Row]:
    cases: list[tuple[str, str, float | None, dict[str, Any]]] = [("none", "no DP", None, {})]
    cases += [
        ("dp-sgd", f"DP-SGD sigma={s:g}", s, {"dp_sgd_noise_multiplier": s, "dp_sgd_max_grad_norm": 1.0})
        for s in config.dp_sgd_sigmas
    ]
    cases += [
        ("site", f"site DP sigma={s:g}", s, {"site_dp_clip_norm": CLIP_NORM, "site_dp_noise_multiplier": s})
        for s in config.site_sigmas
    ]
    rows = []
    for i, (dp, case, sigma, swarm) in enumerate(cases):
        log(f"privacy: digits run {i + 1}/{len(cases)}: {case}")
        params: dict[str, Value] = {"dp": dp, "sigma": sigma, "N": config.nodes, "epochs": config.epochs}
        try:
            res = digits_run(work, f"{dp}-{sigma}", swarm, config)
        except Exception as exc:  # one failed run is a note, not a lost part
            log(f"privacy: {case} failed: {exc}")
            rows.append(Row("privacy", case, params, {}, note=f"failed: {str(exc).splitlines()[0][:200]}"))
            continue
        spent = res.privacy
        epsilon: float | None = None
        if spent is not None and dp == "site":
            epsilon = spent.site_epsilon
        elif spent is not None and dp == "dp-sgd" and spent.dp_sgd_epsilon:
            epsilon = max(spent.dp_sgd_epsilon.values())
        metrics: dict[str, Value] = {
            "epsilon": epsilon,
            "swarm_acc": res.swarm_accuracy,
            "local_only_acc": res.mean_local_only,
            "central_acc": res.central_accuracy,
            "rounds": res.rounds,
        }
        log(f"privacy: {case}: swarm {res.swarm_accuracy:.3f}, epsilon {epsilon}")
        rows.append(Row("privacy", case, params, metrics, note="delta 1e-5"))
    return rows


def overhead_rows(config: PrivacyConfig) -> tuple[list[Row], dict[str, Value]]:
    from bench.rounds import RoundConfig
    from bench.rounds import run as run_rounds

    modes = ("single", "secagg")
    rcfg = RoundConfig(
        ns=config.ns, ps=(config.p,), rounds=config.rounds, part="privacy", flower=False, modes=modes
    )
    part = run_rounds(rcfg)
    plain = {r.params["N"]: r for r in part.rows if r.params.get("mode") == "single"}
    rows = []
    for r in part.rows:
        if r.params.get("mode") != "secagg" or r.params["N"] not in plain:
            rows.append(r)
            continue
        base = plain[r.params["N"]]
        ratios: dict[str, Value] = {}
        for key, name in (("swarm_s", "x_plain_time"), ("node_max_MB", "x_plain_bytes")):
            mine, theirs = r.metrics.get(key), base.metrics.get(key)
            if isinstance(mine, int | float) and isinstance(theirs, int | float) and theirs > 0:
                ratios[name] = num(mine) / num(theirs)
        rows.append(Row(r.part, r.case, r.params, {**r.metrics, **ratios}, r.note))
    return rows, dict(part.baselines)


def summary(rows: Sequence[Row]) -> list[str]:
    out = []
    acc = [r for r in rows if "dp" in r.params and r.metrics.get("swarm_acc") is not None]
    base = next((r for r in acc if r.params["dp"] == "none"), None)
    if base is not None:
        out.append(
            f"digits, {base.params['N']} sites: swarm without DP {num(base.metrics['swarm_acc']):.3f}, "
            f"mean local-only {num(base.metrics['local_only_acc']):.3f}, "
            f"central {num(base.metrics['central_acc']):.3f}"
        )
    for dp, what in (("dp-sgd", "DP-SGD (per node)"), ("site", "site-level DP")):
        pts = [r for r in acc if r.params["dp"] == dp and r.metrics.get("epsilon") is not None]
        if pts:
            cells = ", ".join(
                f"ε {num(r.metrics['epsilon']):.3g} -> {num(r.metrics['swarm_acc']):.3f}"
                for r in sorted(pts, key=lambda r: num(r.metrics["epsilon"]))
            )
            out.append(f"{what}: {cells}")
    for r in rows:
        if r.params.get("mode") == "secagg" and "x_plain_time" in r.metrics:
            out.append(
                f"secure aggregation N={r.params['N']} P={r.params['P']}: round "
                f"{num(r.metrics['x_plain_time']):.2f}x the plain mean's time, busiest node "
                f"{num(r.metrics.get('x_plain_bytes') or float('nan')):.2f}x its bytes"
            )
    return out


def run(config: PrivacyConfig) -> PartResult:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-privacy-") as work:
        rows += accuracy_rows(config, Path(work))
    overhead, baselines = overhead_rows(config)
    rows += overhead
    return PartResult(
        "privacy",
        tuple(rows),
        {**baselines, "site-level clip norm": CLIP_NORM, "delta": 1e-5},
        summary=tuple(summary(rows)),
    )
