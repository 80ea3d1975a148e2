"""Committed benchmark results: a partial run merges its part into bench/RESULTS.json / RESULTS.md and
keeps the others, RESULTS.md reads back when RESULTS.json is missing, the README block is rewritten
between its markers only, and a --quick run never touches the committed files."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench.results import (
    README_BEGIN,
    README_END,
    Committed,
    PartResult,
    Row,
    from_json,
    parse_markdown,
    publish,
    readme_block,
    render_markdown,
    rewrite_readme,
)

pytestmark = pytest.mark.unit

README = f"# Project\n\n## Benchmarks\n\nintro\n\n{README_BEGIN}\nold table\n{README_END}\n\n## More\n"


def _part(name: str, case: str, summary: str = "s", finished: str = "2026-01-01 00:00:00 UTC") -> PartResult:
    row = Row(name, case, {"N": 4, "P": "1M"}, {"swarm_s": 0.5, "bound_s": None}, "note")
    return PartResult(name, (row,), {"TLS loopback MB/s": 500.0}, finished, (summary,))


def _target(tmp_path: Path) -> Committed:
    (tmp_path / "README.md").write_text(README)
    return Committed(
        tmp_path / "RESULTS.json", tmp_path / "RESULTS.md", tmp_path / "README.md", tmp_path / "plots"
    )


def test_publishing_one_part_keeps_the_committed_others(tmp_path: Path) -> None:
    target = _target(tmp_path)
    publish(target, [_part("merge", "m-old"), _part("round", "r-old")], {"mode": "full"})
    merged = publish(target, [_part("round", "r-new", "round is fast")], {"mode": "full"})
    assert [(p.part, p.rows[0].case) for p in merged] == [("merge", "m-old"), ("round", "r-new")]
    assert from_json(target.json_path.read_text())[0] == merged
    md = target.md_path.read_text()
    assert "| m-old |" in md and "| r-new |" in md and "r-old" not in md
    readme = target.readme.read_text()
    assert "round is fast" in readme and "old table" not in readme
    assert readme.startswith("# Project\n\n## Benchmarks\n\nintro\n\n") and readme.endswith("\n\n## More\n")


def test_without_results_json_the_committed_markdown_is_read_back(tmp_path: Path) -> None:
    target = _target(tmp_path)
    old = [_part("merge", "m-old"), _part("chaos", "c-old")]
    target.md_path.write_text(render_markdown(old, {"mode": "full"}))  # a clone from before RESULTS.json
    merged = publish(target, [_part("chaos", "c-new")], {"mode": "full"})
    assert [(p.part, p.rows[0].case) for p in merged] == [("merge", "m-old"), ("chaos", "c-new")]
    assert merged[0].rows[0].metrics == {"swarm_s": 0.5, "bound_s": None}
    assert merged[0].rows[0].params == {"N": 4, "P": "1M"}
    assert target.json_path.exists()


def test_markdown_round_trip_keeps_values_and_remarks_below_tables() -> None:
    part = PartResult(
        "chaos",
        (Row("chaos", "50 faults", {"seed": 5}, {"training_s": 214.0, "rounds": 287, "checks": "6/6"}, ""),),
        {"fault-free training_s": 75.9},
        "2026-12-01 12:44:14 UTC (run alone)",
        ("50 faults survived",),
        extra="![timeline](../docs/bench/chaos-timeline.png)",
    )
    text = render_markdown([part], {"mode": "full", "python": "3.11.7"})
    parts, meta = parse_markdown(text)
    assert parts == [part]
    assert meta == {"mode": "full", "python": "3.11.7"}
    assert render_markdown(parts, meta) == text


def test_a_rerun_without_remarks_keeps_the_old_remarks(tmp_path: Path) -> None:
    target = _target(tmp_path)
    old = PartResult("chaos", (), extra="![timeline](x.png)")
    publish(target, [old], {})
    (merged,) = publish(target, [_part("chaos", "new")], {})
    assert merged.extra == "![timeline](x.png)" and merged.rows[0].case == "new"


def test_readme_block_prefers_the_headline_and_escapes_pipes() -> None:
    part = PartResult(
        "scaling", (), finished="2026-01-01 00:00:00 UTC (note)", summary=("a", "b"), headline=("x|y",)
    )
    block = readme_block([part, _part("merge", "m", "m1")])
    lines = block.splitlines()
    assert lines[0] == README_BEGIN and lines[-1] == README_END
    assert lines[-3].startswith("| merge | ") and lines[-3].endswith(" | 2026-01-01 00:00:00 UTC | m1 |")
    assert lines[-2].endswith(" | 2026-01-01 00:00:00 UTC | x/y |")  # parts in PARTS order


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("no markers here", "exactly one"),
        (f"{README_BEGIN}\n{README_END}\n{README_BEGIN}\n", "exactly one"),
        (f"{README_END}\n{README_BEGIN}\n", "comes before"),
    ],
)
def test_readme_rewrite_refuses_missing_repeated_or_swapped_markers(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rewrite_readme(text, f"{README_BEGIN}\nnew\n{README_END}")


def _patched_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Committed:
    target = _target(tmp_path)
    monkeypatch.setattr(bench_main, "COMMITTED", target)
    monkeypatch.setattr(bench_main, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench_main, "ensure_bench_venv", lambda: Path("/nonexistent"))
    monkeypatch.setattr(bench_main, "_meta", lambda quick: {"mode": "quick" if quick else "full"})
    monkeypatch.setattr(bench_main, "_runner", lambda part, quick: lambda: _part(part, f"{part}-{quick}"))
    return target


def test_a_quick_run_writes_only_bench_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _patched_main(tmp_path, monkeypatch)
    publish(target, [_part("merge", "full-merge")], {"mode": "full"})
    before = {p: p.read_text() for p in (target.json_path, target.md_path, target.readme)}
    assert bench_main.main(["--only", "merge", "--quick"]) == 0
    assert {p: p.read_text() for p in before} == before
    assert "| merge-True |" in (tmp_path / "results" / "latest.md").read_text()


def test_a_full_partial_run_updates_its_part_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _patched_main(tmp_path, monkeypatch)
    publish(target, [_part("merge", "full-merge"), _part("operator", "full-operator")], {"mode": "full"})
    assert bench_main.main(["--only", "operator"]) == 0
    parts, meta = from_json(target.json_path.read_text())
    assert [(p.part, p.rows[0].case) for p in parts] == [
        ("merge", "full-merge"),
        ("operator", "operator-False"),
    ]
    assert meta == {"mode": "full"}


def test_a_failed_part_keeps_its_committed_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _patched_main(tmp_path, monkeypatch)
    publish(target, [_part("round", "good-round")], {"mode": "full"})

    def broken() -> PartResult:
        raise RuntimeError("etcd did not start")

    monkeypatch.setattr(bench_main, "_runner", lambda part, quick: broken)
    assert bench_main.main(["--only", "round"]) == 1
    assert from_json(target.json_path.read_text())[0][0].rows[0].case == "good-round"
    assert "FAILED: etcd did not start" in (tmp_path / "results" / "latest.md").read_text()


def test_readme_flag_rewrites_the_block_from_results_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _patched_main(tmp_path, monkeypatch)
    publish(target, [_part("quality", "q", "accuracy within 1 point")], {})
    target.readme.write_text(README)
    assert bench_main.main(["--readme"]) == 0
    assert "accuracy within 1 point" in target.readme.read_text()
