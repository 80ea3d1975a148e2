"""Part 3: learning quality on the local examples (``examples/local/digits``, ``.../breast_cancer``):
swarm vs central vs local-only, IID and label-skew splits, N peers, with Flower's FedAvg for reference.

Two kinds of swarm figures:
- real swarm: ``swarmlearning.local.cli.run_example`` on a copy of the example (split and N changed,
  nothing else): SN, SL and ML processes on loopback, the example's own central and local-only
  baselines from the same run (one seed, the example's);
- simulated: the example's data split (``swarmlearning.local.datasets.partition``, the runner's
  validation share removed), model (``build_model``) and hyper-parameters (epochs, batch size, lr,
  SGD with momentum, sync every ``sync_frequency`` batches) in one process, in lock step; the merge is
  either this project's engine (``merge('mean', ..., sample counts)``) or Flower's FedAvg aggregation
  (``flwr.server.strategy.aggregate.aggregate``, called in .venv-bench): our own FedAvg loop with
  Flower's aggregate function, not Flower's simulation engine. Central and local-only use the
  example's ``fit``. Averaged over seeds (data split and initialisation).
Accuracy is on the example's common held-out test split.

The recipe is one per dataset for every method (``QualityConfig.epochs``: the same epochs, data split,
batch size and learning rate for swarm, central and local-only): enough epochs that central training has
converged (more changes central by < 0.3 points), so a gap is the swarm's, not an under-trained
baseline's. Each cell also runs the swarm with the contract's merge-side momentum
(``serverOptimizer: fedavgm``, ``QualityConfig.fedavgm``), in the simulation through the product's own
``swarmlearning.sl.server_optimizer.FedAvgM`` and for real through the example's flags.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import yaml
from swarmlearning.sl.server_optimizer import FedAvgM, model_only
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.envs import REPO, ensure_bench_venv, flower_env, keep_logs
from bench.results import PartResult, Row, log, num

DATASETS = ("digits", "breast_cancer")
SPLITS = ("iid", "label_skew")
FEDAVG_WORKER = Path(__file__).resolve().parent / "flower" / "fedavg_worker.py"
EXAMPLES = REPO / "examples" / "local"


@dataclass(frozen=True)
class QualityConfig:
    """Grid: datasets, splits, peer counts ns, simulation seeds; real runs for N in ``real_ns``."""

    datasets: tuple[str, ...] = DATASETS
    splits: tuple[str, ...] = SPLITS
    ns: tuple[int, ...] = (2, 4, 8)
    seeds: tuple[int, ...] = (0, 1, 2)
    real_ns: tuple[int, ...] = (2, 4, 8)
    epochs: tuple[tuple[str, int], ...] = (("digits", 40), ("breast_cancer", 30))
    """Epochs per dataset, the same for every method (central has converged at these)."""
    fedavgm: tuple[float, float] = (1.3, 0.3)
    """serverLearningRate and serverMomentum of the fedavgm runs (chosen on the simulation, 3 seeds)."""

    def epochs_of(self, dataset: str) -> int | None:
        return dict(self.epochs).get(dataset)


@dataclass(frozen=True)
class Setup:
    """One cell's data and training recipe (from the example's swarm.yaml)."""

    shards: tuple[TensorDataset, ...]
    test_x: torch.Tensor
    test_y: torch.Tensor
    epochs: int
    batch_size: int
    lr: float
    sync_frequency: int


def sync_schedule(batches_per_node: Sequence[int], sync_frequency: int) -> list[list[int]]:
    """Lock-step rounds: round r lists the nodes still training (each trains up to ``sync_frequency``
    more batches, then the round's participants merge). A node takes part while it has batches left,
    as a node that finished its epochs stops joining rounds."""
    if sync_frequency < 1:
        raise ValueError(f"sync_frequency must be >= 1; got {sync_frequency}")
    if any(b < 0 for b in batches_per_node):
        raise ValueError(f"batches_per_node must be >= 0; got {list(batches_per_node)}")
    rounds = -(-max(batches_per_node, default=0) // sync_frequency)
    return [[i for i, b in enumerate(batches_per_node) if b > r * sync_frequency] for r in range(rounds)]


def load_setup(example: ModuleType, config: Any, seed: int, epochs: int | None = None) -> Setup:
    parts = config.partition(seed)
    shards = []
    for shard in parts.nodes:
        n_val = int(round(len(shard.y) * config.val_fraction))  # the runner keeps these for validation
        shards.append(
            TensorDataset(torch.from_numpy(shard.x[n_val:]).float(), torch.from_numpy(shard.y[n_val:]).long())
        )
    return Setup(
        tuple(shards),
        torch.from_numpy(parts.test.x).float(),
        torch.from_numpy(parts.test.y).long(),
        int(epochs or config.train["epochs"]),
        int(config.train["batch_size"]),
        float(config.train["lr"]),
        int(config.swarm.get("sync_frequency", 4)),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


Aggregate = Callable[[list[dict[str, torch.Tensor]], list[int]], dict[str, torch.Tensor]]


def federated(
    example: ModuleType, setup: Setup, seed: int, aggregate: Aggregate, *, server: FedAvgM | None = None
) -> float:
    """The example's training loop (SGD + momentum) on every node, merged every sync_frequency batches;
    ``server``: the round leader's merge-side momentum step after each merge (its state kept between
    rounds as the committed blob keeps it)."""
    torch.manual_seed(seed)
    start = example.build_model().state_dict()
    models, opts, iters, loaders = [], [], [], []
    for i, shard in enumerate(setup.shards):
        m = example.build_model()
        m.load_state_dict(start)
        models.append(m)
        opts.append(torch.optim.SGD(m.parameters(), lr=setup.lr, momentum=0.9))
        loader = DataLoader(
            shard,
            batch_size=setup.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed * 100 + i),
        )
        loaders.append(loader)
        iters.append(iter(loader))
    counts = [len(s) for s in setup.shards]
    schedule = sync_schedule([setup.epochs * len(ld) for ld in loaders], setup.sync_frequency)
    loss_fn = nn.CrossEntropyLoss()
    merged: dict[str, torch.Tensor] = start
    committed: dict[str, torch.Tensor] = dict(start)  # the model plus the server optimiser's state
    for active in schedule:
        for i in active:
            models[i].train()
            for _ in range(setup.sync_frequency):
                try:
                    x, y = next(iters[i])
                except StopIteration:
                    iters[i] = iter(loaders[i])
                    x, y = next(iters[i])
                opts[i].zero_grad()
                loss_fn(models[i](x), y).backward()
                opts[i].step()
        merged = aggregate(
            [{k: v.detach().clone() for k, v in models[i].state_dict().items()} for i in active],
            [counts[i] for i in active],
        )
        if server is not None:
            committed = server.step(merged, committed)
            merged = model_only(committed)
        for i in active:
            models[i].load_state_dict(merged)
    final = example.build_model()
    final.load_state_dict(merged)
    return accuracy(final, setup.test_x, setup.test_y)


def alone(example: ModuleType, data: TensorDataset, setup: Setup, seed: int) -> float:
    """The example's own ``fit`` on ``data`` alone (local-only, or central on the pooled data)."""
    torch.manual_seed(seed)
    model = example.fit(
        example.build_model(), data, epochs=setup.epochs, batch_size=setup.batch_size, lr=setup.lr, seed=seed
    )
    return accuracy(model, setup.test_x, setup.test_y)


def swarm_aggregate(models: list[dict[str, torch.Tensor]], counts: list[int]) -> dict[str, torch.Tensor]:
    from swarmlearning.merge import merge

    return merge("mean", models, [float(c) for c in counts]).state


class FlowerFedAvg:
    """Flower's ``aggregate`` in a long-lived .venv-bench subprocess (see flower/fedavg_worker.py)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [str(ensure_bench_venv()), str(FEDAVG_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=flower_env(),
            start_new_session=True,
        )

    def __call__(self, models: list[dict[str, torch.Tensor]], counts: list[int]) -> dict[str, torch.Tensor]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        names = list(models[0])
        blob = pickle.dumps(([[m[k].numpy() for k in names] for m in models], counts), protocol=5)
        self.proc.stdin.write(struct.pack(">Q", len(blob)) + blob)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) != 8:
            raise RuntimeError(f"Flower FedAvg worker exited (code {self.proc.poll()}); see its stderr above")
        (length,) = struct.unpack(">Q", head)
        merged = pickle.loads(self.proc.stdout.read(length))
        return {
            k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in zip(names, merged, strict=True)
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(struct.pack(">Q", 0))
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def real_swarm(
    dataset: str,
    split: str,
    n: int,
    work: Path,
    *,
    epochs: int | None = None,
    swarm: dict[str, Any] | None = None,
    tag: str = "",
) -> Any:
    """One run of the real local runtime on a copy of the example with ``split`` and ``n`` nodes (and
    ``epochs``, for swarm, central and local-only alike; ``swarm``: extra contract settings)."""
    from swarmlearning.local.cli import run_example

    folder = work / f"{dataset}-{split}-{n}{tag}"
    shutil.copytree(EXAMPLES / dataset, folder / "example")
    cfg_path = folder / "example" / "swarm.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw.setdefault("split", {})["kind"] = split
    if epochs:
        raw["train"]["epochs"] = epochs
    raw["swarm"].update(swarm or {})
    # Longer runs than the example's: its whole-run timeout scales with the epochs.
    raw["timeout_seconds"] = max(int(raw.get("timeout_seconds", 600)), 60 * (epochs or 0))
    cfg_path.write_text(yaml.safe_dump(raw))
    lines: list[str] = []
    try:
        return run_example(folder / "example", nodes=n, out=folder / "run", emit=lines.append)
    except Exception:
        keep_logs(folder / "run" / "logs", f"quality-{dataset}-{split}-{n}{tag}")
        raise


def run(config: QualityConfig) -> PartResult:
    from swarmlearning.local.config import load_config
    from swarmlearning.local.report import load_example

    torch.set_num_threads(1)  # tiny models: threads only add overhead
    flower = FlowerFedAvg()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-quality-") as work:
            for ds in config.datasets:
                for split in config.splits:
                    for n in config.ns:
                        rows.append(
                            _cell(ds, split, n, config, flower, Path(work), load_config, load_example)
                        )
    finally:
        flower.close()
    return PartResult(
        "quality", tuple(rows), {"simulation seeds": len(config.seeds)}, summary=tuple(_summary(rows))
    )


def _cell(
    ds: str,
    split: str,
    n: int,
    config: QualityConfig,
    flower: FlowerFedAvg,
    work: Path,
    load_config: Any,
    load_example: Any,
) -> Row:
    rc = replace(load_config(EXAMPLES / ds, nodes=n), split=split)
    example = load_example(rc)
    epochs = config.epochs_of(ds)
    server = FedAvgM(*config.fedavgm)
    acc: dict[str, list[float]] = {"central": [], "local": [], "swarm": [], "flower": [], "fedavgm": []}
    sizes: list[int] = []
    rounds = 0
    for seed in config.seeds:
        setup = load_setup(example, rc, seed, epochs)
        sizes = [len(s) for s in setup.shards]
        rounds = len(
            sync_schedule([setup.epochs * -(-k // setup.batch_size) for k in sizes], setup.sync_frequency)
        )
        pooled = TensorDataset(
            torch.cat([s.tensors[0] for s in setup.shards]), torch.cat([s.tensors[1] for s in setup.shards])
        )
        with contextlib.redirect_stdout(io.StringIO()):
            acc["central"].append(alone(example, pooled, setup, seed))
            acc["local"].append(float(np.mean([alone(example, s, setup, seed) for s in setup.shards])))
        acc["swarm"].append(federated(example, setup, seed, swarm_aggregate))
        acc["flower"].append(federated(example, setup, seed, flower))
        acc["fedavgm"].append(federated(example, setup, seed, swarm_aggregate, server=server))
    mean = {k: 100 * float(np.mean(v)) for k, v in acc.items()}
    metrics: dict[str, float | int | str | None] = {
        "epochs": setup.epochs,
        "site_samples": f"{min(sizes)}-{max(sizes)}",
        "sim_rounds": rounds,
        "central_%": mean["central"],
        "sim_swarm_%": mean["swarm"],
        "sim_fedavgm_%": mean["fedavgm"],
        "flower_fedavg_%": mean["flower"],
        "local_only_%": mean["local"],
        "sim_swarm_minus_central": mean["swarm"] - mean["central"],
        "sim_fedavgm_minus_central": mean["fedavgm"] - mean["central"],
        "sim_swarm_minus_flower": mean["swarm"] - mean["flower"],
        "real_swarm_%": None,
        "real_fedavgm_%": None,
        "real_central_%": None,
        "real_local_only_%": None,
        "real_swarm_minus_central": None,
        "real_fedavgm_minus_central": None,
        "real_rounds": None,
    }
    note = f"simulation: mean of {len(config.seeds)} seeds"
    log(
        f"quality: {ds} {split} N={n} ({setup.epochs} epochs, {rounds} rounds, sites hold "
        f"{metrics['site_samples']} samples): simulated swarm {mean['swarm']:.1f} %, with fedavgm "
        f"{mean['fedavgm']:.1f} %, Flower FedAvg {mean['flower']:.1f} %, central {mean['central']:.1f} %, "
        f"local-only {mean['local']:.1f} %"
    )
    if n in config.real_ns:
        lr, momentum = config.fedavgm
        fedavgm = {"server_optimizer": "fedavgm", "server_learning_rate": lr, "server_momentum": momentum}
        for key, extra, tag in (("real_swarm", None, ""), ("real_fedavgm", fedavgm, "-fedavgm")):
            try:
                res = real_swarm(ds, split, n, work, epochs=epochs, swarm=extra, tag=tag)
            except Exception as exc:  # a failed real run is reported, the other cells still run
                note += f"; real run{tag} failed: {str(exc).splitlines()[0][:200]}"
                log(f"quality: {ds} {split} N={n}: real run{tag} failed: {exc}")
                continue
            metrics[f"{key}_%"] = 100 * res.swarm_accuracy
            metrics[f"{key}_minus_central"] = 100 * (res.swarm_accuracy - res.central_accuracy)
            if key == "real_swarm":
                metrics |= {
                    "real_central_%": 100 * res.central_accuracy,
                    "real_local_only_%": 100 * res.mean_local_only,
                    "real_rounds": res.rounds,
                }
            ledger = "ok" if res.ledger_ok else "BROKEN"
            note += f"; real run{tag}: {res.rounds} rounds in {res.wall_seconds:.0f} s, ledger {ledger}"
            log(
                f"quality: {ds} {split} N={n}: real swarm{tag} {100 * res.swarm_accuracy:.1f} % vs its "
                f"central {100 * res.central_accuracy:.1f} % ({res.rounds} rounds, {res.wall_seconds:.0f} s)"
            )
    return Row("quality", f"{ds} {split} N={n}", {"dataset": ds, "split": split, "N": n}, metrics, note)


def _summary(rows: Sequence[Row]) -> list[str]:
    out = []
    for key, label in (
        ("real_swarm_minus_central", "real swarm"),
        ("real_fedavgm_minus_central", "real swarm with fedavgm"),
        ("sim_swarm_minus_central", "simulated swarm"),
        ("sim_fedavgm_minus_central", "simulated swarm with fedavgm"),
    ):
        have = [r for r in rows if r.metrics.get(key) is not None]
        if not have:
            continue
        misses = [r for r in have if num(r.metrics[key]) < -1.0]
        out.append(
            f"{label} within 1 point of central in {len(have) - len(misses)} of {len(have)} cases"
            + (
                ": missed " + ", ".join(f"{r.case} ({num(r.metrics[key]):+.1f})" for r in misses)
                if misses
                else ""
            )
        )
    diffs = [
        abs(num(r.metrics["sim_swarm_minus_flower"]))
        for r in rows
        if r.metrics.get("sim_swarm_minus_flower") is not None
    ]
    if diffs:
        out.append(
            "simulated swarm vs Flower FedAvg on identical inputs: "
            f"largest difference {max(diffs):.2f} points"
        )
    return out
