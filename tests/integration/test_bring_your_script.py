"""``swarmctl run --script``: a script written for HPE Swarm Learning, unchanged, as the ML program of
a real local swarm (SN, SL and ML processes on loopback), started through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BYO = ROOT / "examples" / "bring-your-own"
SWARMCTL = [sys.executable, "-m", "swarmlearning.cli.swarmctl"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("byo") / "data"
    done = _run([sys.executable, str(BYO / "prepare_data.py"), str(out), "--nodes", "2"], 120)
    assert done.returncode == 0, done.stderr
    return out


def test_an_hpe_pytorch_script_runs_unchanged(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _run(
        [*SWARMCTL, "run", "--script", str(BYO / "digits_pyt.py"), "--data", str(data), "--nodes", "2",
         "--epochs", "3", "--out", str(run)],
        600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "node-1: DATA_DIR " + str(data / "node-1") in out
    assert "round    1 | node-1 loss" in out, out  # live progress from the nodes' own validation
    assert "final merged model identical on every node: yes" in out
    assert "chain intact" in out
    results = json.loads((run / "results.json").read_text())
    assert results["final_models_identical"] and results["ledger_ok"] and results["rounds"] >= 5
    assert all(m is not None and m > 0.8 for m in results["final_metric"].values()), results
    for name in ("model.safetensors", "metrics.csv", "curves.png", "ledger.json", "summary.txt"):
        assert (run / name).is_file(), name
    for node in ("node-1", "node-2"):
        log = (run / "logs" / f"{node}-ml.log").read_text()
        # The callback's own console output is visible without the script configuring logging.
        assert "SwarmCallback (PYTORCH) on node " + node in log
        assert "mergeMethod=mean" in log and "syncFrequency=4" in log  # "MEAN" and "4" were accepted
        assert "SwarmCallback parameter mlPlatform ignored" in log
        assert "merge done: round 1 with node-1, node-2" in log
        assert "All peers and Swarm training rounds finished. Final Swarm model was loaded." in log
        # MAX_EPOCHS reached the script; epochs are counted per on_epoch_end call (the script counts from 1)
        assert "epochs completed: 3, swarm training over: True" in log
        # MODEL_DIR is where the script saves what it wants, next to the callback's final model.
        assert (run / "nodes" / node / "out" / "digits_pyt.pt").is_file()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--nodes", "3"], "--nodes 3 with one --data folder needs 3 subfolders"),
        (["--nodes", "2", "--min-peers", "5"], "--min-peers must be between 1 and the number of nodes (2)"),
        (["--nodes", "2", "--epochs", "0"], "--epochs must be >= 1"),
    ],
)
def test_bad_arguments_are_named(data: Path, tmp_path: Path, extra: list[str], words: str) -> None:
    done = _run(
        [*SWARMCTL, "run", "--script", str(BYO / "digits_pyt.py"), "--data", str(data), *extra,
         "--out", str(tmp_path / "run")],
        60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr


def test_script_and_example_are_exclusive(tmp_path: Path) -> None:
    done = _run([*SWARMCTL, "run", "examples/local/digits", "--script", str(BYO / "digits_pyt.py")], 60)
    assert done.returncode == 2 and "not both" in done.stderr
    missing = _run([*SWARMCTL, "run", "--script", str(tmp_path / "nope.py"), "--data", str(tmp_path)], 60)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_keras_script_runs_with_the_same_command(data: Path, tmp_path: Path) -> None:
    """The Keras example's script, given flags after ``--``; its SwarmCallback is a Keras callback, so
    model.fit calls every hook itself (on_train_end included: the final model lands in MODEL_DIR)."""
    run = tmp_path / "run"
    script = ROOT / "examples" / "local" / "digits-keras" / "train.py"
    done = _run(
        [*SWARMCTL, "run", "--script", str(script), "--data", str(data), "--nodes", "2", "--out", str(run),
         "--", "--epochs", "2"],
        600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "final merged model identical on every node: yes" in done.stdout
    log = (run / "logs" / "node-1-ml.log").read_text()
    assert "SwarmCallback (KERAS)" in log and "totalEpochs=2" in log, log[-3000:]
    assert "Final Swarm model was loaded." in log
