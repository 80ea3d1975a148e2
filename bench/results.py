"""Result rows and their writers: Markdown tables, JSON and PNG plots (matplotlib, Agg backend).

A run of one part (``--only``) replaces that part's rows in the previous ``latest.json`` and keeps the
other parts', so parts can be re-run one at a time; each part records when it was measured.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

Value = int | float | str | None

PARTS: tuple[str, ...] = ("merge", "round", "quality", "operator", "scaling", "chaos")


@dataclass(frozen=True)
class Row:
    """One measured case of one part.

    params: what was measured (method, N, P, ...); metrics: numbers (seconds, ratios, accuracy), None
    when not measured; note: why a value is missing or how it was obtained.
    """

    part: str
    case: str
    params: Mapping[str, Value] = field(default_factory=dict)
    metrics: Mapping[str, Value] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}; got {self.part!r}")


@dataclass(frozen=True)
class PartResult:
    """Rows of one part plus its baselines (e.g. measured bandwidths) and when it ran (UTC, ISO 8601)."""

    part: str
    rows: tuple[Row, ...]
    baselines: Mapping[str, Value] = field(default_factory=dict)
    finished: str = ""
    summary: tuple[str, ...] = ()


def num(value: Value) -> float:
    """A metric as float; TypeError for missing or text values (callers filter those first)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def log(message: str) -> None:
    """Progress line with a UTC timestamp, flushed at once (runs take minutes)."""
    print(f"[bench {time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def fmt(value: Value) -> str:
    """Table cell: 3 significant digits for floats, '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 0.001:
            return f"{value:.3g}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _columns(rows: Sequence[Row], attr: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in getattr(row, attr):
            seen.setdefault(key, None)
    return list(seen)


def markdown_table(rows: Sequence[Row]) -> str:
    """A Markdown table of rows: case, every param, every metric (first-seen order), note."""
    if not rows:
        return "_no rows_\n"
    params, metrics = _columns(rows, "params"), _columns(rows, "metrics")
    header = ["case", *params, *metrics, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.case]
        cells += [fmt(row.params.get(p)) for p in params]
        cells += [fmt(row.metrics.get(m)) for m in metrics]
        cells.append(row.note.replace("|", "/").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(parts: Sequence[PartResult], meta: Mapping[str, Value]) -> str:
    """The whole report: run metadata, then per part its summary, baselines and table."""
    out = ["# Benchmark results", ""]
    out += [f"- {k}: {fmt(v)}" for k, v in meta.items()]
    for part in sorted(parts, key=lambda p: PARTS.index(p.part)):
        out += ["", f"## {part.part}", "", f"Measured: {part.finished or '-'}", ""]
        if part.summary:
            out += [f"- {line}" for line in part.summary]
            out.append("")
        if part.baselines:
            out.append("Baselines measured in the same run:")
            out += [f"- {k}: {fmt(v)}" for k, v in part.baselines.items()]
            out.append("")
        out.append(markdown_table(part.rows))
    return "\n".join(out)


def to_json(parts: Sequence[PartResult], meta: Mapping[str, Value]) -> str:
    return json.dumps({"meta": dict(meta), "parts": [asdict(p) for p in parts]}, indent=1, sort_keys=False)


def from_json(text: str) -> tuple[list[PartResult], dict[str, Value]]:
    """Inverse of :func:`to_json` (used to keep the other parts when one part is re-run)."""
    data = json.loads(text)
    parts = []
    for p in data.get("parts", []):
        rows = tuple(Row(**r) for r in p["rows"])
        parts.append(
            PartResult(
                part=p["part"],
                rows=rows,
                baselines=p.get("baselines", {}),
                finished=p.get("finished", ""),
                summary=tuple(p.get("summary", ())),
            )
        )
    return parts, data.get("meta", {})


def merge_parts(old: Iterable[PartResult], new: Iterable[PartResult]) -> list[PartResult]:
    """Parts of ``new`` replace those of ``old`` with the same name; the others stay."""
    by_name = {p.part: p for p in old}
    by_name.update({p.part: p for p in new})
    return [by_name[name] for name in PARTS if name in by_name]


def write_results(folder: Path, parts: Sequence[PartResult], meta: Mapping[str, Value]) -> list[PartResult]:
    """Write latest.md and latest.json in ``folder``, keeping earlier parts not in ``parts``."""
    folder.mkdir(parents=True, exist_ok=True)
    latest = folder / "latest.json"
    old: list[PartResult] = []
    if latest.exists():
        try:
            old, _ = from_json(latest.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            log(f"ignoring unreadable {latest}: {exc}")
    merged = merge_parts(old, parts)
    latest.write_text(to_json(merged, meta))
    (folder / "latest.md").write_text(render_markdown(merged, meta))
    return merged
