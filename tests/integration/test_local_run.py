"""``swarmctl run``: every example runs end to end, Ctrl-C tears everything down, bad configs fail clearly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from swarmlearning.local.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
OWN_TESTS = {"digits", "digits-keras", "digits-transformers"}
"""Examples with a module of their own: test_swarm.py, test_keras_swarm.py, test_hf_swarm.py."""
EXAMPLES = sorted(p for p in (ROOT / "examples" / "local").iterdir() if (p / "swarm.yaml").is_file())
SWARMCTL = [sys.executable, "-m", "swarmlearning.cli.swarmctl"]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing ``text`` (e.g. a run folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except OSError:
            continue
        if text in cmd and "zombie" not in state:
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


@pytest.mark.integration
def test_example_list_is_complete() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"digits", "breast_cancer"} <= names


@pytest.mark.integration
@pytest.mark.parametrize("example", [p for p in EXAMPLES if p.name not in OWN_TESTS], ids=lambda p: p.name)
def test_example_runs_with_swarmctl(example: Path, tmp_path: Path) -> None:
    """Every example without a test of its own (those run it against their accuracy targets)."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [*SWARMCTL, "run", str(example), "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "swarm accuracy" in proc.stdout and "central reference" in proc.stdout
    assert "final merged model identical on every node: yes" in proc.stdout
    assert "OK:" in (out / "ledger-verify.txt").read_text()
    swarm = load_config(example).swarm
    if (
        swarm.get("secure_aggregation")
        or swarm.get("site_dp_clip_norm")
        or swarm.get("dp_sgd_noise_multiplier")
    ):
        # A private example says what it spent: every option it turns on shows in the privacy line.
        line = next((x for x in proc.stdout.splitlines() if x.startswith("privacy: ")), "")
        assert ("site-level DP epsilon" in line) == bool(swarm.get("site_dp_clip_norm")), line
        assert ("DP-SGD epsilon per node" in line) == bool(swarm.get("dp_sgd_noise_multiplier")), line
        assert ("secure aggregation in" in line) == bool(swarm.get("secure_aggregation")), line
    for produced in ("model.safetensors", "metrics.csv", "curves.png", "ledger.json", "results.json"):
        assert (out / produced).is_file(), produced
    assert not processes_mentioning(str(out))


@pytest.mark.integration
def test_interrupt_tears_down_every_process_and_the_console(tmp_path: Path) -> None:
    # A copy of the example that trains far longer than the test waits, so the run is surely still
    # going (every process alive) when Ctrl-C arrives, however fast the machine is.
    example = tmp_path / "breast_cancer"
    shutil.copytree(ROOT / "examples" / "local" / "breast_cancer", example)
    yaml_path = example / "swarm.yaml"
    text = yaml_path.read_text()
    assert "epochs: 10," in text
    yaml_path.write_text(text.replace("epochs: 10,", "epochs: 1000,"))
    out = tmp_path / "run"
    log = tmp_path / "swarmctl.out"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*SWARMCTL, "run", str(example), "--out", str(out), "--console"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while b"round " not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no round completed within 120s:\n" + log.read_text()
            time.sleep(0.3)
        assert len(processes_mentioning(str(out))) >= 7  # 3 SL + 3 ML + the console (+ etcd)
        # --console printed its URL, and the console answers it with the token the URL carries.
        url = re.search(r">>> console: (https://127\.0\.0\.1:\d+/)\?token=(\S+) ", log.read_text())
        assert url, log.read_text()
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the run's CA
        who = session.get(
            f"{url[1]}api/v1/whoami",
            headers={"Authorization": f"Bearer {url[2]}"},
            verify=str(out / "pki" / "console" / "ca.crt"),
            timeout=30,
        )
        assert who.status_code == 200 and who.json()["rights"] == ["status", "model"], who.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "interrupted" in log.read_text()
        deadline = time.monotonic() + 15
        while (left := processes_mentioning(str(out))) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not left, left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for line in processes_mentioning(str(out)):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        (
            "dataset: mnist\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}",
            "dataset must be one of digits, breast_cancer",
        ),
        (
            "dataset: digits\nnodes: 0\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}",
            "nodes must be between 1 and 16",
        ),
        (
            "dataset: digits\nsplit: {kind: dirichlet}\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}",
            "split.kind",
        ),
        ("dataset: digits\nsplit: {skew: 2}\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}", "split.skew"),
        ("dataset: digits\ntrain: {epochs: 1}", "train.batch_size is required"),
        ("dataset: digits\nepochs: 3\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}", "unknown key(s) epochs"),
        (
            "dataset: digits\ntimeout_seconds: 1\ntrain: {epochs: 1, batch_size: 1, lr: 0.1}",
            "timeout_seconds",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, yaml_text: str, words: str) -> None:
    (tmp_path / "swarm.yaml").write_text(yaml_text)
    (tmp_path / "train.py").write_text("")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert words in str(err.value)


@pytest.mark.unit
def test_config_flags_for_train_script() -> None:
    cfg = load_config(ROOT / "examples" / "local" / "digits")
    args = cfg.script_args({"adaptive": True, "merge_method": "geomedian", "unused": False})
    assert args[args.index("--merge-method") + 1] == "geomedian"
    assert "--adaptive" in args and "--unused" not in args
    assert args[args.index("--batch-size") + 1] == str(cfg.train["batch_size"])


@pytest.mark.integration
def test_bad_callback_parameter_stops_the_run_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarmlearning.local.cli import run_example
    from swarmlearning.local.runner import RunError

    monkeypatch.setenv("SWARM_MERGE_METHOD", "average")  # inherited by every ML process
    out = tmp_path / "run"
    with pytest.raises(RunError) as err:
        run_example(ROOT / "examples" / "local" / "breast_cancer", out=out, emit=lambda s: None)
    assert "exited with code 1" in str(err.value)
    assert "mergeMethod must be one of mean, coordmedian" in str(err.value)
    assert not processes_mentioning(str(out))
