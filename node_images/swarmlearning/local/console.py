"""The console of a local run (`swarmctl run … --console`): its own process on 127.0.0.1, with a
certificate of the run's CA and a one-off bearer token that the printed URL carries."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swarmlearning import pki

if TYPE_CHECKING:
    from swarmlearning.local.runner import LocalSwarm, Proc

NAME = "console"
START_SECONDS = 60.0
"""How long the console may take to import its packages, bind and start serving."""


@dataclass(frozen=True)
class LocalConsole:
    url: str
    """``https://127.0.0.1:<port>/?token=<token>``: opening it sets the UI's cookie."""
    base: str
    token: str
    ca: Path
    """The run's CA certificate: what a client trusts the console's certificate with."""
    proc: Proc


async def _provision(swarm: LocalSwarm) -> None:
    from swarmlearning.etcd import EtcdClient
    from swarmlearning.ledger.access import provision

    client = await EtcdClient.connect(swarm.sn_endpoints, pki.NodeCert.load(swarm.admin_cert_dir))
    try:
        await provision(client, NAME, "operator")  # the read-only swarm-reader
    finally:
        await client.close()


def start_console(swarm: LocalSwarm, timeout: float = START_SECONDS) -> LocalConsole:
    """Issue the console's certificate, create its read-only etcd user, start it and wait until it
    serves. Raises RunError quoting its log when it exits or does not serve within ``timeout`` s."""
    from swarmlearning.local.runner import RunError, tail

    folder = swarm.run_dir / NAME
    folder.mkdir(parents=True, exist_ok=True)
    cert_dir = swarm.run_dir / "pki" / NAME
    pki.issue_node_cert(
        swarm.ca_dir, cert_dir, NAME, "swarm-local", "operator", hosts=("127.0.0.1", "localhost")
    )
    asyncio.run(_provision(swarm))
    token = secrets.token_urlsafe(24)
    token_file = folder / "token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    port_file = folder / "port"
    port_file.unlink(missing_ok=True)
    log_path = swarm.run_dir / "logs" / "console.log"
    cmd = [
        sys.executable, "-m", "swarmlearning.console.main",
        "--sn", ",".join(swarm.sn_endpoints),
        "--ca", str(cert_dir / pki.CA_CERT),
        "--cert", str(cert_dir / pki.NODE_CERT),
        "--key", str(cert_dir / pki.NODE_KEY),
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
        "--token-file", str(token_file), "--network", "local",
    ]  # fmt: skip
    proc = swarm.launch(NAME, cmd, log_path, dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not proc.running():
            raise RunError(
                f"the console exited with code {proc.returncode} before serving:\n{tail(log_path)}"
            )
        if time.monotonic() > deadline:
            proc.stop()
            raise RunError(f"the console did not start serving within {timeout:g}s:\n{tail(log_path)}")
        time.sleep(0.1)
    base = f"https://127.0.0.1:{int(port_file.read_text())}/"
    return LocalConsole(f"{base}?token={token}", base, token, cert_dir / pki.CA_CERT, proc)
