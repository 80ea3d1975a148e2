"""The Hugging Face example trained in a real local swarm (etcd, SL and ML processes on loopback, mTLS),
in both hfModes, through ``swarmctl run``'s own entry point.

``full`` runs ``examples/local/digits-transformers`` as it is; ``peft`` runs the same train.py (a
symlink) from a folder in tmp_path whose swarm.yaml differs only in ``swarm.hf_mode: peft`` and the
learning rate. Measured on this machine (3 nodes, label skew 0.85, 8 epochs, 30 rounds; swarm /
central / mean local-only test accuracy): full 0.904 / 0.933 / 0.650, peft 0.873 / 0.911 / 0.576;
about 90 s per run on 2 busy cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local" / "digits-transformers"
PEFT_LR = 0.02
"""Only the adapter and the head train in peft mode; they take a higher learning rate."""
CENTRAL_MARGIN = 0.06
"""Swarm accuracy may trail the central reference (pooled data, 3x the optimizer steps) by this much."""
OVER_LOCAL = 0.15
"""... and must beat the mean local-only model (one site's skewed data alone) by at least this much."""


def peft_example(tmp_path: Path) -> Path:
    folder = tmp_path / "digits-transformers-peft"
    folder.mkdir()
    (folder / "train.py").symlink_to(EXAMPLE / "train.py")
    config = yaml.safe_load((EXAMPLE / "swarm.yaml").read_text())
    config["swarm"]["hf_mode"] = "peft"
    config["train"]["lr"] = PEFT_LR
    (folder / "swarm.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize("mode", ["full", "peft"])
def test_digits_transformers_in_a_local_swarm(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmlearning.local.cli import run_example

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = EXAMPLE if mode == "full" else peft_example(tmp_path)
    lines: list[str] = []
    result = run_example(folder, out=tmp_path / "run", emit=lines.append)
    summary = "\n".join(lines[-9:])
    print(f"hfMode={mode}\n{summary}")  # the figures, shown with pytest -rP

    assert result.ledger_ok, result.ledger_message
    assert result.final_models_identical, summary
    assert result.rounds >= 10, summary
    assert result.swarm_accuracy >= result.central_accuracy - CENTRAL_MARGIN, summary
    assert result.swarm_accuracy >= result.mean_local_only + OVER_LOCAL, summary

    final = load_file(str(Path(result.run_dir) / "model.safetensors"))
    lora = [name for name in final if "lora_" in name]
    if mode == "peft":
        # Only the adapter and the head crossed the swarm: every name is peft's, none of the frozen base.
        assert lora and all(name.startswith("base_model.model.") for name in final), sorted(final)[:5]
        assert any(name.endswith("classifier.weight") for name in final)
        assert not any(name.endswith("mlp.Wi.weight") for name in final)
    else:
        assert not lora and "classifier.weight" in final and any(n.endswith("mlp.Wi.weight") for n in final)
