"""PNG plots of the results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

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
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        xs = [i + j * width for i in range(len(cases))]
        ax.bar(xs, [(_num(r, key) or 0.0) for r in cases], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([r.case for r in cases], rotation=30, ha="right", fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return fig


def _quality(rows: Sequence[Row]) -> plt.Figure | None:
    fig = _bars(
        rows,
        [
            ("central_%", "central"),
            ("real_swarm_%", "swarm (real runtime)"),
            ("sim_swarm_%", "swarm (simulated)"),
            ("flower_fedavg_%", "Flower FedAvg"),
            ("local_only_%", "local only"),
        ],
        "test accuracy %",
        "learning quality",
        log=False,
    )
    if fig is not None:
        fig.axes[0].set_ylim(50, 100)
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
    return _bars(
        rows,
        [("swarm_s", "swarm round"), ("flower_s", "Flower round"), ("bound_s", "loopback TLS bound")],
        "seconds per round",
        "round latency vs N",
        log=True,
    )


def _operator(rows: Sequence[Row]) -> plt.Figure | None:
    return _bars(
        rows,
        [("ready_s", "all children + task Running (s)"), ("peak_rss_MB", "operator peak RSS (MB)")],
        "value",
        "operator at scale",
        log=True,
    )


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
        yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95, strict=True)]],
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
