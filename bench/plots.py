"""PNG plots of the results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.results import PartResult, Row  # noqa: E402


def _num(row: Row, key: str) -> float | None:
    v = row.metrics.get(key)
    return float(v) if isinstance(v, int | float) else None


def plot_part(part: PartResult, folder: Path) -> Path | None:
    """Write ``<part>.png`` in ``folder``; None when the part has nothing to plot."""
    fn = {
        "merge": _merge,
        "quality": _quality,
        "round": _rounds,
        "scaling": _scaling,
        "operator": _operator,
        "chaos": _chaos,
        "privacy": _privacy,
        "byzantine": _byzantine,
    }[part.part]
    fig = fn(part.rows)
    if fig is None:
        return None
    path = folder / f"{part.part}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _merge(rows: Sequence[Row]) -> plt.Figure | None:
    ps = list(dict.fromkeys(str(r.params["P"]) for r in rows if _num(r, "x_bound") is not None))
    if not ps:
        return None
    fig, axes = plt.subplots(1, len(ps), figsize=(6 * len(ps), 4.5), squeeze=False)
    for ax, p in zip(axes[0], ps, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            xb = _num(r, "x_bound")
            if r.params.get("P") == p and xb is not None:
                series.setdefault(f"{r.params['method']} / {r.params['impl']}", []).append(
                    (int(str(r.params["N"])), xb)
                )
        for label, pts in sorted(series.items()):
            pts.sort()
            style = "-o" if "swarm" in label else "--x"
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="g", lw=0.8, ls=":", label="goal 1.5x bound")
        ax.set_yscale("log")
        ax.set_xlabel("peers N")
        ax.set_ylabel("time / memory-bandwidth bound")
        ax.set_title(f"merge kernels, P={p}")
        ax.legend(fontsize=6)
    return fig


def _bars(
    rows: Sequence[Row], keys: Sequence[tuple[str, str]], ylabel: str, title: str, log: bool
) -> plt.Figure | None:
    cases = [r for r in rows if any(_num(r, k) is not None for k, _ in keys)]
    if not cases:
        return None
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.25 * len(cases) * len(keys) + 2)), 4.5))
    _bar_panel(ax, cases, keys)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def _bar_panel(
    ax: plt.Axes, cases: Sequence[Row], keys: Sequence[tuple[str, str]], colors: Sequence[str] = ()
) -> None:
    """Grouped bars, one group per case; the legend sits right of the axes, clear of the bars."""
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        xs = [i + j * width for i in range(len(cases))]
        color = colors[j] if colors else None
        ax.bar(xs, [(_num(r, key) or 0.0) for r in cases], width, label=label, color=color)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([r.case for r in cases], rotation=30, ha="right", fontsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))


QUALITY_ACCURACY = (
    ("central_%", "central"),
    ("real_swarm_%", "swarm (real runtime)"),
    ("real_fedavgm_%", "swarm + fedavgm (real runtime)"),
    ("sim_swarm_%", "swarm (simulated)"),
    ("sim_fedavgm_%", "swarm + fedavgm (simulated)"),
    ("flower_fedavg_%", "Flower FedAvg"),
    ("local_only_%", "local only"),
)
# Each swarm against the central training of its own runtime (bench/quality.py computes these columns).
QUALITY_GAPS = (
    ("real_swarm_minus_central", "swarm (real runtime)"),
    ("real_fedavgm_minus_central", "swarm + fedavgm (real runtime)"),
    ("sim_swarm_minus_central", "swarm (simulated)"),
    ("sim_fedavgm_minus_central", "swarm + fedavgm (simulated)"),
)


def _quality(rows: Sequence[Row]) -> plt.Figure | None:
    """Accuracy per case (top) and, what the goal is about, each swarm's points against central (bottom)."""
    cases = [r for r in rows if _num(r, "central_%") is not None]
    if not cases:
        return None
    palette = [f"C{i}" for i in range(len(QUALITY_ACCURACY))]
    fig, (ax_acc, ax_gap) = plt.subplots(2, 1, figsize=(14.0, 8.0), sharex=True)
    _bar_panel(ax_acc, cases, QUALITY_ACCURACY, palette)
    ax_acc.set_ylim(50, 100)
    ax_acc.set_ylabel("test accuracy %")
    ax_acc.set_title("learning quality")
    _bar_panel(ax_gap, cases, QUALITY_GAPS, palette[1:])
    ax_gap.axhline(0.0, color="k", lw=0.8)
    ax_gap.axhline(-1.0, color="g", lw=0.8, ls=":", label="goal: within 1 point of central")
    ax_gap.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    ax_gap.set_ylabel("points vs central of the same runtime")
    return fig


def _rounds(rows: Sequence[Row]) -> plt.Figure | None:
    return _bars(
        rows,
        [("swarm_s", "swarm round"), ("flower_s", "Flower round"), ("bound_s", "loopback TLS bound")],
        "seconds per round",
        "round latency",
        log=True,
    )


def _scaling(rows: Sequence[Row]) -> plt.Figure | None:
    """Round time and busiest node's bytes per round vs N, a line per (mode, P), bounds dashed."""
    measured = [r for r in rows if "mode" in r.params and _num(r, "swarm_s") is not None]
    if not measured:
        return None
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = list(dict.fromkeys((str(r.params["mode"]), str(r.params["P"])) for r in measured))
    for i, (mode, p) in enumerate(series):
        color = f"C{i}"
        pts = sorted(
            (int(str(r.params["N"])), r)
            for r in rows
            if r.params.get("mode") == mode and r.params.get("P") == p
        )
        ns = [n for n, _ in pts]
        for ax, key, bound_key in ((ax_t, "swarm_s", "bound_s"), (ax_b, "node_max_MB", "node_bound_MB")):
            xy = [(n, _num(r, key)) for n, r in pts if _num(r, key) is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], "-o", color=color, label=f"{mode}, P={p}")
            ax.plot(ns, [_num(r, bound_key) or float("nan") for _, r in pts], ":", color=color, lw=1)
    for ax, ylabel, title in (
        (ax_t, "seconds per round", "round time vs N (dotted: TLS loopback bound)"),
        (ax_b, "MB per round, busiest node (in + out)", "bytes per node vs N (dotted: must move)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        all_ns = sorted({int(str(r.params["N"])) for r in measured})
        ax.set_xticks(all_ns, [str(n) for n in all_ns])
        ax.set_xlabel("peers N")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return fig


def _operator(rows: Sequence[Row]) -> plt.Figure | None:
    from bench.operator_scale import plot

    return plot(tuple(rows))


def _chaos(rows: Sequence[Row]) -> plt.Figure | None:
    """Recovery time per fault kind (p50 bar, p95 whisker); the timeline is chaos-timeline.png."""
    rec = [r for r in rows if r.case.startswith("recover ") and _num(r, "p50_s") is not None]
    if not rec:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    kinds = [str(r.params["kind"]) for r in rec]
    p50 = [_num(r, "p50_s") or 0.0 for r in rec]
    p95 = [_num(r, "p95_s") or 0.0 for r in rec]
    ax.bar(kinds, p50, color="tab:blue", label="p50")
    ax.errorbar(
        kinds,
        p50,
        yerr=np.array([[0.0] * len(p50), [b - a for a, b in zip(p50, p95, strict=True)]]),
        fmt="none",
        ecolor="k",
        capsize=4,
        label="p95",
    )
    ax.set_ylabel("seconds to the next round the target took part in")
    ax.set_title("chaos: time to recover per fault kind")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    return fig


def _privacy(rows: Sequence[Row]) -> plt.Figure | None:
    """Left: test accuracy against ε (DP-SGD and site-level DP) with the no-DP swarm, mean local-only
    and central lines. Right: round time vs N, plain mean vs secure aggregation."""
    acc = [r for r in rows if "dp" in r.params and _num(r, "swarm_acc") is not None]
    timed = [r for r in rows if r.params.get("mode") in SECAGG_SERIES and _num(r, "swarm_s") is not None]
    if not acc and not timed:
        return None
    fig, (ax_a, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    for dp, (label, color) in DP_SERIES.items():
        pts = sorted(
            (e, 100 * (_num(r, "swarm_acc") or 0.0))
            for r in acc
            if r.params["dp"] == dp and (e := _num(r, "epsilon")) is not None
        )
        if pts:
            ax_a.plot([e for e, _ in pts], [a for _, a in pts], "-o", color=color, label=label)
    for base in (r for r in acc if r.params["dp"] == "none"):
        for key, label, style in BASELINE_LINES:
            ax_a.axhline(100 * (_num(base, key) or 0.0), color="black", ls=style, lw=1, label=label)
    ax_a.set_xscale("log")
    ax_a.set(
        xlabel="epsilon (delta 1e-5, log scale)", ylabel="test accuracy %", title="digits: accuracy vs ε"
    )
    ax_a.legend(fontsize=7)
    for mode, (label, color) in SECAGG_SERIES.items():
        pts_t = sorted(
            (int(str(r.params["N"])), _num(r, "swarm_s") or 0.0) for r in timed if r.params["mode"] == mode
        )
        ax_r.plot([n for n, _ in pts_t], [t for _, t in pts_t], "-o", color=color, label=label)
    ax_r.set(
        xlabel="peers N", ylabel="seconds per round", title="round time, plain mean vs secure aggregation"
    )
    ax_r.legend(fontsize=7)
    return fig


DP_SERIES = {"dp-sgd": ("swarm + DP-SGD (sample level)", "C0"), "site": ("swarm + site-level DP", "C3")}
BASELINE_LINES = (
    ("swarm_acc", "swarm without DP", "-"),
    ("central_acc", "central (pooled data)", "--"),
    ("local_only_acc", "mean local-only", ":"),
)
SECAGG_SERIES = {"single": ("plain weighted mean", "C2"), "secagg": ("secure aggregation", "C1")}


def _byzantine(rows: Sequence[Row]) -> plt.Figure | None:
    """One panel per (N, split) of the simulation and per N of the real runs: test accuracy per merge
    method (bars, one colour per method throughout) under each attack (groups), the honest-only and
    clean swarms as lines."""
    measured = [r for r in rows if _num(r, "acc_%") is not None and r.params.get("attack") != "none"]
    if not measured:
        return None

    def panel(r: Row) -> tuple[str, str, str]:
        return str(r.params["mode"]), str(r.params["N"]), str(r.params["split"])

    panels = list(dict.fromkeys(panel(r) for r in measured))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(str(r.params["method"]) for r in measured))}
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels, strict=False):
        cell = [r for r in measured if panel(r) == key]
        attacks = list(dict.fromkeys(str(r.params["attack"]) for r in cell))
        methods = [m for m in colors if any(r.params["method"] == m for r in cell)]
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            by_attack = {
                str(r.params["attack"]): _num(r, "acc_%") for r in cell if r.params["method"] == method
            }
            xs = [i + j * width for i in range(len(attacks))]
            ax.bar(xs, [by_attack.get(a) or 0.0 for a in attacks], width, color=colors[method], label=method)
        for metric, label, style in (("honest_only_%", "honest-only", "-"), ("clean_%", "clean", "--")):
            values = [v for r in cell if (v := _num(r, metric)) is not None]
            if values:
                ax.axhline(float(np.mean(values)), color="black", ls=style, lw=1, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(attacks))], attacks)
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("test accuracy %")
        mode, n, split = key
        ax.set_title(f"{'simulated' if mode == 'sim' else 'real swarm'}, N={n}, {split}", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", ncol=3)
    fig.suptitle(
        "digits: one site poisoning every round (bars: merge methods; lines: baselines)", fontsize=10
    )
    return fig
