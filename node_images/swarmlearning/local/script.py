"""``swarmctl run --script train.py --data site-a/ --data site-b/``: a user's own script as the ML program
of a local swarm, unchanged.

Each node runs ``python <script> [script args]`` in the script's folder with the environment an HPE
ML container gives (``DATA_DIR``: that node's data folder, ``MODEL_DIR``: its output folder,
``SCRATCH_DIR``, ``MIN_PEERS``, ``MAX_EPOCHS`` when given, ``NODE_ID``) plus this project's
(``SWARM_SL_SOCKET`` …; ``SWARM_SYNC_FREQUENCY`` etc. only for flags given, since they override the
script's own values). There is no test set or model code to build baselines from, so the final table
reports what the nodes measured themselves: the final model's validation loss and metric on each
node's validation data (when the script passes ``adsValData``), the rounds, whether every node holds
the same final model, and the ledger check.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarmlearning.local.config import MAX_NODES, ConfigError, RunConfig
from swarmlearning.local.runner import LocalSwarm, RunError

ENV_FLAGS: dict[str, str] = {
    "sync_frequency": "SWARM_SYNC_FREQUENCY",
    "merge_method": "SWARM_MERGE_METHOD",
    "merge_mode": "SWARM_MERGE_MODE",
    "merge_fallback": "SWARM_MERGE_FALLBACK",
}
"""``swarmctl run --script`` flags that override the script's callback parameters when given."""


@dataclass
class ScriptSwarm(LocalSwarm):
    """A local swarm whose ML processes run ``script`` on the given per-node data folders."""

    script: Path = Path("train.py")
    data_dirs: Sequence[Path] = ()
    script_argv: Sequence[str] = ()
    min_peers: int = 1
    max_epochs: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every ML process (``SWARM_SYNC_FREQUENCY`` … from the command line)."""

    def prepare(self) -> None:
        self.prepare_identities()
        for i, name in enumerate(self.config.node_names()):
            node = self.add_node(i, name, data=self.data_dirs[i])
            (node.folder / "scratch").mkdir(exist_ok=True)

    def start_ml(self, name: str) -> None:
        node = self.nodes[name]
        node.starts += 1
        env = self._env(node) | {
            "DATA_DIR": str(node.data_dir),
            "MODEL_DIR": str(node.out_dir),
            "SCRATCH_DIR": str(node.folder / "scratch"),
            "MIN_PEERS": str(self.min_peers),
            "NODE_ID": name,
            **self.overrides,
        }
        if self.max_epochs is not None:
            env["MAX_EPOCHS"] = str(self.max_epochs)
        node.out_dir.mkdir(parents=True, exist_ok=True)
        node.ml = self.launch(
            f"{name}-ml",
            [sys.executable, str(self.script), *self.script_argv],
            self.run_dir / "logs" / f"{name}-ml.log",
            env,
            cwd=self.script.parent,
        )


@dataclass(frozen=True)
class ScriptResult:
    run_dir: str
    final_models_identical: bool
    ledger_ok: bool
    ledger_message: str
    rounds: int
    final_loss: dict[str, float | None]
    final_metric: dict[str, float | None]
    wall_seconds: float


def run_script(
    script: str | Path,
    data: Sequence[str | Path],
    *,
    nodes: int | None = None,
    min_peers: int | None = None,
    max_epochs: int | None = None,
    sync_frequency: int | None = None,
    merge_method: str | None = None,
    merge_mode: str | None = None,
    merge_fallback: str | None = None,
    script_args: Sequence[str] = (),
    out: str | Path | None = None,
    timeout: float = 3600.0,
    console: bool = False,
    emit: Callable[[str], None] = print,
) -> ScriptResult:
    """Run ``script`` on one node per folder of ``data`` (or ``nodes`` subfolders of one folder)."""
    from swarmlearning.local import report

    started = time.monotonic()
    path = Path(script).resolve()
    if not path.is_file():
        raise ConfigError(f"--script {script}: no such file")
    folders = node_data_folders([Path(d) for d in data], nodes)
    n = len(folders)
    peers = min_peers if min_peers is not None else n
    if not 1 <= peers <= n:
        raise ConfigError(f"--min-peers must be between 1 and the number of nodes ({n}), got {peers}")
    if max_epochs is not None and max_epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {max_epochs}")
    if sync_frequency is not None and sync_frequency < 1:
        raise ConfigError(f"--sync-frequency must be >= 1, got {sync_frequency}")
    if not 10 <= timeout <= 86400:
        raise ConfigError(f"--timeout must be between 10 and 86400 seconds, got {timeout:g}")
    given = {
        "sync_frequency": sync_frequency,
        "merge_method": merge_method,
        "merge_mode": merge_mode,
        "merge_fallback": merge_fallback,
    }
    overrides = {ENV_FLAGS[k]: str(v) for k, v in given.items() if v is not None}
    run_dir = Path(out) if out else Path("runs") / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"--out {run_dir} exists and is not empty; choose a new folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = RunConfig(example_dir=path.parent, name=path.stem, dataset="", nodes=n, timeout_seconds=timeout)
    emit(f">>> {path.name}: {n} nodes, minPeers {peers}, run folder {run_dir}")
    progress = report.Progress(emit)
    with ScriptSwarm(
        config,
        run_dir,
        script=path,
        data_dirs=folders,
        script_argv=list(script_args),
        min_peers=peers,
        max_epochs=max_epochs,
        overrides=overrides,
        console=console,
    ) as swarm:
        swarm.prepare()
        for name, node in swarm.nodes.items():
            emit(f"    {name}: DATA_DIR {node.data_dir}")
        snapshot, rows = swarm.run_to_end(emit, progress)
        outs = {k: node.out_dir for k, node in swarm.nodes.items()}
    verdict = report.save_ledger(run_dir, snapshot)
    identical, _ = report.collect_models(
        run_dir,
        outs,
        ": does the script call the callback's on_train_end (Keras and Hugging Face do so themselves)?",
    )
    ends = {str(r["node"]): r for r in rows if r.get("event") == "end"}
    rounds = max((int(r["round"]) for r in rows if r.get("round") is not None), default=0)
    report.write_metrics_csv(rows, run_dir / "metrics.csv")
    report.plot_curves(rows, run_dir / "curves.png", f"{path.name}: {n} nodes")
    result = ScriptResult(
        run_dir=str(run_dir),
        final_models_identical=identical,
        ledger_ok=verdict.ok,
        ledger_message=verdict.message(),
        rounds=rounds,
        final_loss={k: ends.get(k, {}).get("loss") for k in sorted(outs)},
        final_metric={k: ends.get(k, {}).get("metric") for k in sorted(outs)},
        wall_seconds=time.monotonic() - started,
    )
    table = summary_table(result)
    (run_dir / "summary.txt").write_text(table + "\n")
    (run_dir / "results.json").write_text(json.dumps(asdict(result), indent=1))
    emit("")
    emit(table)
    emit(
        f"run folder: {run_dir} (model.safetensors, local-models/, metrics.csv, curves.png, "
        "ledger.json, logs/)"
    )
    return result


def node_data_folders(data: Sequence[Path], nodes: int | None) -> list[Path]:
    """One data folder per node: the folders given, or with one folder and ``nodes``, its first
    ``nodes`` subfolders (sorted by name), as HPE's examples keep ``data/node1``, ``data/node2`` …"""
    if not data:
        raise ConfigError("give each node's data folder: --data DIR once per node, or --data DIR --nodes N")
    if len(data) == 1 and nodes is not None and nodes > 1:
        subs = sorted(p for p in data[0].iterdir() if p.is_dir()) if data[0].is_dir() else []
        if len(subs) < nodes:
            raise ConfigError(
                f"--nodes {nodes} with one --data folder needs {nodes} subfolders in {data[0]}, found "
                f"{len(subs)}"
            )
        data = subs[:nodes]
    elif nodes is not None and nodes != len(data):
        raise ConfigError(f"--nodes {nodes} but {len(data)} --data folders: give one folder per node")
    if not 1 <= len(data) <= MAX_NODES:
        raise ConfigError(f"nodes must be between 1 and {MAX_NODES}, got {len(data)}")
    for d in data:
        if not d.is_dir():
            raise ConfigError(f"--data {d}: not a folder")
    return [d.resolve() for d in data]


def summary_table(result: ScriptResult) -> str:
    """What ``swarmctl run --script`` prints at the end: each node's final-model validation figures."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [f"{'node':10} {'final val loss':>15} {'final val metric':>17}"]
    for node in result.final_loss:
        lines.append(f"{node:10} {cell(result.final_loss[node]):>15} {cell(result.final_metric[node]):>17}")
    lines.append(
        f"final merged model identical on every node: {'yes' if result.final_models_identical else 'NO'}; "
        f"{result.rounds} rounds; ledger: {result.ledger_message}; wall time {result.wall_seconds:.0f}s"
    )
    return "\n".join(lines)
