"""The Keras example (``examples/local/digits-keras``) trained in a real local swarm on both Keras 3
backends: real etcd, real SL and ML processes, mTLS on loopback, through ``swarmctl run``'s
``run_example``. The children inherit ``KERAS_BACKEND``; the final model is scored in this process
(whatever backend its Keras was imported with), so a model trained on torch is also read back here.

Measured on the 2-core test machine (3 nodes, label skew 0.85, 6 epochs): swarm 0.960 / central 0.971
(tensorflow), swarm 0.956 / central 0.971 (torch); mean local-only 0.81-0.84.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from swarmlearning.local.cli import run_example

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local" / "digits-keras"
CENTRAL_MARGIN = 0.05
"""Swarm accuracy may trail the central reference (pooled data) by at most 5 points (measured: 1-2)."""
LOCAL_GAIN = 0.05
"""And must beat the mean local-only model by at least 5 points (measured: 12-14)."""


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_keras_example_in_a_real_swarm(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", backend)
    monkeypatch.delenv("SWARM_LOOPBACK", raising=False)
    lines: list[str] = []
    result = run_example(EXAMPLE, out=tmp_path / "run", emit=lines.append)
    report = "\n".join(lines)
    print(report)  # the run's table, shown by pytest -rP
    logs = Path(result.run_dir) / "logs"
    for node in result.local_only:
        ml_log = (logs / f"{node}-ml.log").read_text(errors="replace")
        assert f"Keras backend {backend}" in ml_log, ml_log[-2000:]
        assert "All peers and Swarm training rounds finished." in ml_log, ml_log[-2000:]
    assert result.final_models_identical, report
    assert result.ledger_ok, result.ledger_message
    assert result.rounds >= 10, report
    assert result.swarm_accuracy >= result.central_accuracy - CENTRAL_MARGIN, report
    assert result.swarm_accuracy >= result.mean_local_only + LOCAL_GAIN, report


@pytest.mark.parametrize(
    ("backend", "absent"), [("torch", "tensorflow"), ("tensorflow", "torch")], ids=["torch", "tensorflow"]
)
def test_importing_the_binding_pulls_in_no_other_framework(backend: str, absent: str) -> None:
    """``swarmlearning.tf`` imports keras only: no TensorFlow on the torch backend, no torch on the
    tensorflow backend (a fresh interpreter, since a backend is fixed at Keras's first import)."""
    code = (
        "import sys, swarmlearning.tf, keras; "
        f"assert keras.backend.backend() == {backend!r}, keras.backend.backend(); "
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] == {absent!r}); "
        "print(loaded[:5]); sys.exit(1 if loaded else 0)"
    )
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{absent} imported with KERAS_BACKEND={backend}: {proc.stdout}{proc.stderr[-2000:]}"
    )
