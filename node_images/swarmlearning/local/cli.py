"""``swarmctl run examples/local/<x> [--nodes N] [--out DIR]``: a whole swarm on this machine.

Prints a line per round (validation loss/accuracy of the merged model on each node's own validation
data), then a table comparing on the common held-out test set: each node's local-only model (trained on
its data alone), the swarm's merged model, and a central model trained on the pooled data. Writes the
run folder (see :mod:`swarmlearning.local.runner`) plus ``model.safetensors``, ``local-models/``,
``metrics.csv``, ``curves.png``, ``ledger.json``, ``ledger-verify.txt``, ``summary.txt``, ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from swarmlearning.local.config import ConfigError, load_config
from swarmlearning.local.runner import LocalSwarm, RunError

if TYPE_CHECKING:
    from swarmlearning.local.report import PrivacySpent


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    swarm_accuracy: float
    central_accuracy: float
    local_only: dict[str, float]
    local_last: dict[str, float]
    final_models_identical: bool
    ledger_ok: bool
    ledger_message: str
    rounds: int
    wall_seconds: float
    privacy: PrivacySpent | None = None
    """What the contract's and the scripts' privacy options spent (None when none was on)."""

    @property
    def mean_local_only(self) -> float:
        return sum(self.local_only.values()) / max(1, len(self.local_only))


def run_example(
    example_dir: str | Path,
    *,
    nodes: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    console: bool = False,
    emit: Callable[[str], None] = print,
) -> RunResult:
    """Run an example end to end and return its figures (raises RunError/ConfigError)."""
    from swarmlearning.local import report
    from swarmlearning.local.datasets import Shard

    started = time.monotonic()
    config = load_config(example_dir, nodes=nodes, seed=seed)
    run_dir = Path(out) if out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"--out {run_dir} exists and is not empty; choose a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    emit(
        f">>> {config.name}: {config.nodes} nodes, {config.dataset} data split {config.split}"
        f"{f' (skew {config.skew})' if config.split == 'label_skew' else ''}, run folder {run_dir}"
    )
    progress = report.Progress(emit)
    with LocalSwarm(config, run_dir, console=console) as swarm:
        swarm.prepare()
        for name, node in swarm.nodes.items():
            counts = Shard.load(node.data_dir / "train.npz").class_counts(swarm.n_classes)
            emit(f"    {name}: {sum(counts)} training samples, per class {counts}")
        snapshot, rows = swarm.run_to_end(emit, progress)
        out_dirs = {n: node.out_dir for n, node in swarm.nodes.items()}
        node_data = {n: node.data_dir for n, node in swarm.nodes.items()}
    verdict = report.save_ledger(run_dir, snapshot)

    example = report.load_example(config)
    test = Shard.load(run_dir / "data" / "test.npz")
    identical, local_models = report.collect_models(run_dir, out_dirs, " (SWARM_MODEL_OUTPUT)")
    local_last = {
        n: report.accuracy(report.model_from_file(example, own), test, example)
        for n, own in local_models.items()
    }
    swarm_acc = report.accuracy(report.model_from_file(example, run_dir / "model.safetensors"), test, example)
    emit(">>> training the baselines: local-only per node and central on pooled data")
    baselines = report.train_baselines(config, example, node_data, test)
    report.write_metrics_csv(rows, run_dir / "metrics.csv")
    report.plot_curves(
        rows,
        run_dir / "curves.png",
        f"{config.name}: {config.nodes} nodes, {config.split}",
        reference=baselines.central,
    )
    rounds = max((int(r["round"]) for r in rows if r.get("round") is not None), default=0)
    privacy = report.PrivacySpent.of(snapshot.records)
    result = RunResult(
        run_dir=str(run_dir),
        swarm_accuracy=swarm_acc,
        central_accuracy=baselines.central,
        local_only=dict(baselines.local_only),
        local_last=local_last,
        final_models_identical=identical,
        ledger_ok=verdict.ok,
        ledger_message=verdict.message(),
        rounds=rounds,
        wall_seconds=time.monotonic() - started,
        privacy=privacy if privacy.line() else None,
    )
    table = report.summary_table(result.local_only, local_last, swarm_acc, baselines.central)
    (run_dir / "summary.txt").write_text(table + "\n")
    (run_dir / "results.json").write_text(json.dumps(asdict(result), indent=1))
    emit("")
    emit(table)
    emit(
        f"final merged model identical on every node: {'yes' if result.final_models_identical else 'NO'}; "
        f"{rounds} rounds; ledger: {verdict.message()}; wall time {result.wall_seconds:.0f}s"
    )
    if privacy.line():
        emit(str(privacy.line()))
    emit(
        f"run folder: {run_dir} (model.safetensors, local-models/, metrics.csv, curves.png, "
        "ledger.json, logs/)"
    )
    return result


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    # The table and progress lines are the output; library INFO logs go to the run's log files.
    logging.getLogger().setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    emit = lambda s: print(s, flush=True)  # noqa: E731
    passthrough = list(getattr(args, "passthrough", []))
    try:
        if (args.script is None) == (args.example is None):
            raise ConfigError("give an example folder, or --script PATH with --data, not both")
        if args.script is None:
            if passthrough or args.data or args.min_peers or args.epochs or args.sync_frequency:
                raise ConfigError(
                    "--data, --min-peers, --epochs, --sync-frequency and -- ARGS go with --script"
                )
            result = run_example(
                args.example, nodes=args.nodes, out=args.out, seed=args.seed, console=args.console, emit=emit
            )
            return 0 if result.ledger_ok and result.final_models_identical else 1
        from swarmlearning.local.script import run_script

        outcome = run_script(
            args.script,
            args.data or [],
            nodes=args.nodes,
            min_peers=args.min_peers,
            max_epochs=args.epochs,
            sync_frequency=args.sync_frequency,
            merge_method=args.merge_method,
            merge_mode=args.merge_mode,
            script_args=passthrough,
            out=args.out,
            timeout=args.timeout,
            console=args.console,
            emit=emit,
        )
        return 0 if outcome.ledger_ok and outcome.final_models_identical else 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process of the run was stopped", file=sys.stderr)
        return 130


def register(subparsers: Any) -> None:
    """Add ``swarmctl run`` (called lazily by swarmlearning.cli.swarmctl)."""
    p = subparsers.add_parser(
        "run",
        help="run a swarm locally: SN, SL and ML nodes as processes on loopback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Your own script: swarmctl run --script train.py --data site-1/ --data site-2/ [-- ARGS]",
    )
    p.add_argument(
        "example", nargs="?", help="example folder with swarm.yaml and train.py, e.g. examples/local/digits"
    )
    p.add_argument("--nodes", type=int, default=None, help="number of nodes (default: the example's)")
    p.add_argument(
        "--seed", type=int, default=None, help="data split and training seed (default: the example's)"
    )
    p.add_argument("--out", default=None, help="run folder (default runs/<example>-<timestamp>)")
    p.add_argument(
        "--console",
        action="store_true",
        help="serve the swarm console (REST API, web UI) on 127.0.0.1 while the run lasts; prints its URL",
    )
    own = p.add_argument_group(
        "your own script (HPE Swarm Learning scripts run unchanged)",
        "Each node runs `python SCRIPT ARGS` with DATA_DIR (its --data folder), MODEL_DIR, SCRATCH_DIR, "
        "MIN_PEERS, MAX_EPOCHS (with --epochs) and NODE_ID set, as an HPE ML container has them.",
    )
    own.add_argument("--script", default=None, help="the training script (python file)")
    own.add_argument(
        "--data",
        action="append",
        default=None,
        help="a node's data folder, once per node; or one folder with --nodes N: its first N subfolders",
    )
    own.add_argument("--min-peers", type=int, default=None, help="MIN_PEERS (default: every node)")
    own.add_argument("--epochs", type=int, default=None, help="MAX_EPOCHS for the script")
    own.add_argument("--sync-frequency", type=int, default=None, help="override the script's syncFrequency")
    own.add_argument("--merge-method", default=None, help="override the script's mergeMethod")
    own.add_argument(
        "--merge-mode",
        default=None,
        choices=("auto", "single", "sharded"),
        help="override the script's mergeMode (auto: sharded from 4 leader-eligible peers and 16 MB models)",
    )
    own.add_argument(
        "--timeout", type=float, default=3600.0, help="stop everything after this many seconds (3600)"
    )
    p.set_defaults(func=_cmd_run)
