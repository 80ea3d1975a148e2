"""Results of a local run: live progress lines, baselines, the summary table, metrics.csv and the plot."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from swarmlearning.local.config import RunConfig
from swarmlearning.local.datasets import Shard


def load_example(config: RunConfig) -> ModuleType:
    """Import the example's train.py as a module, for the baselines and the report.

    It must define ``build_model()``, ``load_split(path)`` and ``fit(model, data, epochs=, batch_size=,
    lr=, seed=)``. A script that is not a plain PyTorch module also defines (all optional, PyTorch
    defaults otherwise): ``load_model(path)`` (a model with the weights of a ``model.safetensors`` its
    callback wrote), ``predict(model, x)`` (class ids for the rows of ``x``) and ``pool(datasets)``
    (the data sets of all nodes as one, for the central reference).
    """
    spec = importlib.util.spec_from_file_location(f"swarm_example_{config.name}", config.script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {config.script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for needed in ("build_model", "load_split", "fit"):
        if not hasattr(module, needed):
            raise ImportError(f"{config.script} must define {needed}() for the baselines")
    return module


def accuracy(model: Any, shard: Shard, example: ModuleType | None = None) -> float:
    """Share of correctly classified samples (the example's ``predict``, else argmax of the outputs)."""
    if example is not None and hasattr(example, "predict"):
        pred = np.asarray(example.predict(model, shard.x)).reshape(-1)
        return float((pred == shard.y).mean())
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(shard.x).float())
    pred_t = out.argmax(dim=1) if out.dim() > 1 and out.shape[1] > 1 else (out.reshape(-1) > 0).long()
    return float((pred_t.numpy() == shard.y).mean())


def model_from_file(example: ModuleType, path: Path) -> Any:
    if hasattr(example, "load_model"):
        return example.load_model(path)
    from safetensors.torch import load_file

    model = example.build_model()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


@dataclass(frozen=True)
class Baselines:
    local_only: Mapping[str, float]
    """Per node: the same model trained on that node's data alone, accuracy on the common test set."""
    central: float
    """The same model trained on the pooled data of all nodes."""


def train_baselines(
    config: RunConfig, example: ModuleType, node_data: Mapping[str, Path], test: Shard
) -> Baselines:
    """Train local-only models and the central reference with the example's own ``fit``."""
    torch.set_num_threads(1)
    train = config.train
    kwargs = {
        "epochs": int(train["epochs"]),
        "batch_size": int(train["batch_size"]),
        "lr": float(train["lr"]),
        "seed": config.seed,
    }
    local: dict[str, float] = {}
    datasets = []
    for name, folder in node_data.items():
        ds = example.load_split(folder / "train.npz")
        datasets.append(ds)
        torch.manual_seed(config.seed)
        local[name] = accuracy(example.fit(example.build_model(), ds, **kwargs), test, example)
    pooled = example.pool(datasets) if hasattr(example, "pool") else torch.utils.data.ConcatDataset(datasets)
    torch.manual_seed(config.seed)
    central = accuracy(example.fit(example.build_model(), pooled, **kwargs), test, example)
    return Baselines(local, central)


def save_ledger(run_dir: Path, snapshot: Any) -> Any:
    """Write ``ledger.json`` and the audit ``ledger-verify.txt`` against the run's CA; returns the verdict."""
    (run_dir / "ledger.json").write_text(json.dumps(snapshot.to_json(), indent=1, sort_keys=True))
    verdict = snapshot.verify((run_dir / "pki" / "ca" / "ca.crt").read_bytes())
    (run_dir / "ledger-verify.txt").write_text(verdict.message() + "\n")
    return verdict


def collect_models(
    run_dir: Path, out_dirs: Mapping[str, Path], missing_hint: str
) -> tuple[bool, dict[str, Path]]:
    """Copy the first node's final ``model.safetensors`` to the run folder and each node's
    ``local-model.safetensors`` to ``local-models/``; RunError (with ``missing_hint``) when a node wrote
    no final model. Returns whether every node's final model is the same, and the copied local models."""
    from swarmlearning.local.runner import RunError

    finals = {n: d / "model.safetensors" for n, d in out_dirs.items()}
    missing = sorted(n for n, p in finals.items() if not p.exists())
    if missing:
        raise RunError(f"nodes {', '.join(missing)} wrote no final model{missing_hint}")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in finals.values()}
    shutil.copyfile(finals[sorted(finals)[0]], run_dir / "model.safetensors")
    (run_dir / "local-models").mkdir(exist_ok=True)
    local: dict[str, Path] = {}
    for n, d in out_dirs.items():
        if (d / "local-model.safetensors").exists():
            local[n] = run_dir / "local-models" / f"{n}.safetensors"
            shutil.copyfile(d / "local-model.safetensors", local[n])
    return len(digests) == 1, local


class Progress:
    """Turns the nodes' metric records into one compact line per round (printed once it is complete:
    every node reported it, or a node is two rounds further)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self._rounds: dict[int, dict[str, Mapping[str, Any]]] = {}
        self._printed = 0

    def update(self, rows: list[dict[str, Any]], final: bool = False) -> None:
        rounds: dict[int, dict[str, Mapping[str, Any]]] = {}
        for row in rows:
            if row.get("event") in ("sync", "end", "join") and row.get("round") is not None:
                rounds.setdefault(int(row["round"]), {})[str(row["node"])] = row
        self._rounds = rounds
        if not rounds:
            return
        nodes = {n for per in rounds.values() for n in per}
        newest = max(rounds)
        for r in sorted(rounds):
            complete = set(rounds[r]) >= nodes or r <= newest - 2 or final
            if r <= self._printed or not complete:
                continue
            self.emit(self.line(r))
            self._printed = r

    def line(self, round_no: int) -> str:
        cells = [
            f"{node} loss {_f(row.get('loss'))} acc {_f(row.get('metric'))}"
            for node, row in sorted(self._rounds[round_no].items())
        ]
        return f"round {round_no:4d} | " + " | ".join(cells)


def _f(value: Any) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def write_metrics_csv(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    cols = ["t", "node", "event", "round", "epoch", "batches", "interval", "loss", "metric", "leader"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r.get("t", 0), str(r.get("node")))):
            writer.writerow(row)


def plot_curves(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str, reference: float | None = None
) -> None:
    """Validation loss and accuracy per node over the rounds (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for node in sorted({str(r["node"]) for r in rows}):
        mine = [
            r
            for r in rows
            if str(r["node"]) == node and r.get("event") in ("sync", "end") and r.get("round") is not None
        ]
        xs = [int(r["round"]) for r in mine]
        ax_loss.plot(xs, [np.nan if r.get("loss") is None else r["loss"] for r in mine], label=node, lw=1.2)
        ax_acc.plot(
            xs, [np.nan if r.get("metric") is None else r["metric"] for r in mine], label=node, lw=1.2
        )
    if reference is not None:
        ax_acc.axhline(reference, color="black", ls="--", lw=1, label="central (test)")
    ax_loss.set(xlabel="round", ylabel="validation loss (merged model)", title="loss")
    ax_acc.set(xlabel="round", ylabel="validation accuracy (merged model)", title="accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class PrivacySpent:
    """What a run's privacy options spent, from its round records (docs/privacy.md)."""

    site_epsilon: float | None
    """Site-level DP: ε after the last committed round (None: no site-level DP)."""
    site_delta: float | None
    dp_sgd_epsilon: dict[str, float]
    """Per node: the DP-SGD ε of its last input in a committed round."""
    secure_rounds: int
    """Rounds merged by secure aggregation."""
    dropouts_recovered: int
    """Inputs of securely aggregated rounds whose masks were rebuilt after their node dropped out."""

    @classmethod
    def of(cls, records: Iterable[Any]) -> PrivacySpent:
        site_eps = site_delta = None
        sgd: dict[str, float] = {}
        secure = dropped = 0
        for rec in sorted((r for r in records if r.kind == "round"), key=lambda r: int(r.body["round"])):
            extra = rec.body.get("extra") or {}
            privacy = extra.get("privacy") or {}
            if "siteDp" in privacy:
                site_eps, site_delta = float(privacy["siteDp"]["epsilon"]), float(privacy["siteDp"]["delta"])
            if "secureAggregation" in privacy:
                secure += 1
                dropped += len(privacy["secureAggregation"].get("dropped", []))
            sgd |= {str(n): float(e) for n, e in (extra.get("epsilon") or {}).items() if e is not None}
        return cls(site_eps, site_delta, sgd, secure, dropped)

    def line(self) -> str | None:
        """One line for the end of ``swarmctl run``; None when no privacy option was on."""
        parts = []
        if self.site_epsilon is not None:
            parts.append(f"site-level DP epsilon {self.site_epsilon:.3g} (delta {self.site_delta:g})")
        if self.dp_sgd_epsilon:
            per_node = ", ".join(f"{n} {e:.3g}" for n, e in sorted(self.dp_sgd_epsilon.items()))
            parts.append(f"DP-SGD epsilon per node {per_node}")
        if self.secure_rounds:
            parts.append(
                f"secure aggregation in {self.secure_rounds} rounds "
                f"({self.dropouts_recovered} dropouts recovered)"
            )
        return "privacy: " + "; ".join(parts) if parts else None


def summary_table(
    local_only: Mapping[str, float], local_last: Mapping[str, float], swarm: float, central: float
) -> str:
    """The table printed at the end of ``swarmctl run`` (accuracies on the common held-out test set)."""
    lines = [f"{'node':10} {'local-only':>11} {'own last local':>15} {'swarm (merged)':>15}"]
    for node in sorted(local_only):
        own = local_last.get(node)
        lines.append(
            f"{node:10} {local_only[node]:11.3f} {'-' if own is None else f'{own:.3f}':>15} {swarm:15.3f}"
        )
    mean_local = sum(local_only.values()) / max(1, len(local_only))
    lines.append(f"{'mean':10} {mean_local:11.3f}")
    lines.append(
        f"swarm accuracy {swarm:.3f}   central reference (pooled data) {central:.3f}   "
        f"swarm - central {100 * (swarm - central):+.1f} points   swarm - mean local-only "
        f"{100 * (swarm - mean_local):+.1f} points"
    )
    return "\n".join(lines)
