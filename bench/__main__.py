"""``python -m bench [--only PART] [--quick] [--readme]``: run the benchmarks, write the results.

Parts (in run order): merge, quality, round, scaling, operator, chaos, privacy, byzantine. ``--quick``
caps the sizes (merge at 10M parameters, fewer seeds, N and rounds) for development. Every run writes
``bench/results/latest.md``, ``latest.json`` and ``<part>.png`` (git-ignored). A full run (no --quick)
also merges each finished part into the committed ``bench/RESULTS.json`` / ``RESULTS.md`` (other parts
kept), copies its plot to docs/bench/ and rewrites the generated results block of README.md; a quick run
never touches those. A part that fails keeps its committed results. ``--readme`` only rewrites the README
block from bench/RESULTS.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

from bench.envs import REPO, ensure_bench_venv
from bench.results import (
    PARTS,
    Committed,
    PartResult,
    Value,
    load_committed,
    log,
    publish,
    update_readme,
    write_results,
)

RESULTS = REPO / "bench" / "results"
COMMITTED = Committed(
    json_path=REPO / "bench" / "RESULTS.json",
    md_path=REPO / "bench" / "RESULTS.md",
    readme=REPO / "README.md",
    plots=REPO / "docs" / "bench",
)
ORDER = ("merge", "quality", "round", "scaling", "operator", "chaos", "privacy", "byzantine")


def _runner(part: str, quick: bool) -> Callable[[], PartResult]:
    if part == "merge":
        from bench.merge_kernels import MergeConfig
        from bench.merge_kernels import run as run_merge

        cfg = MergeConfig(ps=(10**6, 10**7), budget_s=30.0) if quick else MergeConfig()
        return lambda: run_merge(cfg)
    if part == "quality":
        from bench.quality import QualityConfig
        from bench.quality import run as run_quality

        qcfg = QualityConfig(ns=(2, 4), seeds=(0,), real_ns=(2,)) if quick else QualityConfig()
        return lambda: run_quality(qcfg)
    if part in ("round", "scaling"):
        from bench.rounds import RoundConfig
        from bench.rounds import run as run_rounds

        if part == "round":
            rcfg = RoundConfig(ns=(4,), ps=(10**6,), rounds=3) if quick else RoundConfig()
        else:  # Flower only in part round: 32 SuperNodes at 10M would take longer than the swarm grid
            modes = ("single", "sharded")
            rcfg = (
                RoundConfig(ns=(2, 4), ps=(10**6,), rounds=3, part="scaling", flower=False, modes=modes)
                if quick
                else RoundConfig(
                    ns=(2, 4, 8, 16, 32),
                    ps=(10**6, 10**7),
                    rounds=4,
                    part="scaling",
                    flower=False,
                    modes=modes,
                )
            )
        return lambda: run_rounds(rcfg)
    if part == "privacy":
        from bench.privacy import PrivacyConfig
        from bench.privacy import run as run_privacy

        pcfg = (
            PrivacyConfig(dp_sgd_sigmas=(1.0,), site_sigmas=(0.3,), epochs=3, nodes=3, ns=(3,), rounds=3)
            if quick
            else PrivacyConfig()
        )
        return lambda: run_privacy(pcfg)
    if part == "byzantine":
        from bench.byzantine import ByzantineConfig, RealCase
        from bench.byzantine import run as run_byzantine

        bcfg = (
            ByzantineConfig(
                ns=(8,), splits=("iid",), seeds=(0,), real=(RealCase(5, "krum"), RealCase(5, "mean"))
            )
            if quick
            else ByzantineConfig()
        )
        return lambda: run_byzantine(bcfg)
    if part == "chaos":
        from bench.chaos import ChaosBenchConfig
        from bench.chaos import run as run_chaos

        ccfg = ChaosBenchConfig(faults=12, epochs=40) if quick else ChaosBenchConfig()
        return lambda: run_chaos(ccfg)
    from bench.operator_scale import OperatorConfig
    from bench.operator_scale import run as run_operator

    ocfg = OperatorConfig(counts=(20,), baseline_counts=()) if quick else OperatorConfig()
    return lambda: run_operator(ocfg)


def _meta(quick: bool) -> dict[str, Value]:
    import numpy
    import torch

    flwr = subprocess.run(
        [str(ensure_bench_venv()), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    with open("/proc/meminfo") as f:
        mem = next(int(x.split()[1]) for x in f if x.startswith("MemTotal:"))
    return {
        "run finished (UTC)": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "mode": "quick" if quick else "full",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {mem / 2**20:.1f} GiB RAM",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "flwr (.venv-bench)": flwr or "unknown",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable); default: all parts"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for development")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNGs from latest.json")
    parser.add_argument(
        "--readme", action="store_true", help="only rewrite README.md's results block from bench/RESULTS.json"
    )
    args = parser.parse_args(argv)
    if args.readme:
        parts_done, _ = load_committed(COMMITTED.json_path, COMMITTED.md_path)
        update_readme(COMMITTED.readme, parts_done)
        log(f"rewrote the results block of {COMMITTED.readme} from {len(parts_done)} parts")
        return 0
    if args.replot:
        from bench.plots import plot_part
        from bench.results import from_json

        for saved in from_json((RESULTS / "latest.json").read_text())[0]:
            log(f"plotted {plot_part(saved, RESULTS)}")
        return 0
    parts = [p for p in ORDER if not args.only or p in args.only]
    ensure_bench_venv()
    from bench.plots import plot_part

    failed: list[str] = []
    for part in parts:
        log(f"=== part {part} ({'quick' if args.quick else 'full'}) ===")
        t0 = time.perf_counter()
        try:
            result = _runner(part, args.quick)()
        except Exception as exc:  # one broken part must not lose the others' results
            log(f"part {part} failed: {exc!r}")
            failed.append(part)
            result = PartResult(part, (), summary=(f"FAILED: {str(exc).splitlines()[0][:300]}",))
        finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        result = dataclasses.replace(result, finished=finished)
        meta = _meta(args.quick)
        write_results(RESULTS, [result], meta)
        png = plot_part(result, RESULTS)
        log(
            f"part {part} done in {time.perf_counter() - t0:.0f} s -> {RESULTS / 'latest.md'}"
            + (f", {png}" if png else "")
        )
        for line in result.summary:
            log(f"  {line}")
        if args.quick:
            log("quick run: bench/RESULTS.json, RESULTS.md and README.md left alone (see bench/results/)")
        elif part in failed:
            log(f"part {part} failed: its committed results in bench/RESULTS.md are kept")
        else:
            extra = [p for p in (png, RESULTS / f"{part}-timeline.png") if p is not None and p.exists()]
            if not result.extra:  # RESULTS.md shows the part's plots under its table
                links = " ".join(f"![{p.stem}](../docs/bench/{p.name})" for p in extra)
                result = dataclasses.replace(result, extra=links)
            publish(COMMITTED, [result], meta, extra)
            log(f"part {part} merged into bench/RESULTS.json, RESULTS.md and README.md; plots in docs/bench/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
