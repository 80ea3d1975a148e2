"""Command line of the SL node: ``python -m swarmlearning.sl`` (what the SL image runs).

Every flag has an environment variable default, so a pod spec can use either.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--name", default=env("SWARM_NODE_NAME"), help="node name = certificate CN [SWARM_NODE_NAME]"
    )
    parser.add_argument(
        "--cert-dir",
        default=env("SWARM_CERT_DIR", "/etc/swarm/tls"),
        help="directory with tls.crt, tls.key, ca.crt [SWARM_CERT_DIR]",
    )
    parser.add_argument(
        "--sn",
        default=env("SWARM_SN_ENDPOINTS"),
        help="SN API endpoints host:port, comma separated [SWARM_SN_ENDPOINTS]",
    )
    parser.add_argument(
        "--listen",
        default=env("SWARM_SL_LISTEN", "0.0.0.0:30305"),
        help="host:port of the SL peer server; port 0 = any free port [SWARM_SL_LISTEN]",
    )
    parser.add_argument(
        "--advertise-host",
        default=env("SWARM_SL_ADVERTISE_HOST", "127.0.0.1"),
        help="host other SL nodes use to reach this one (a SAN of the certificate) [SWARM_SL_ADVERTISE_HOST]",
    )
    parser.add_argument(
        "--socket",
        default=env("SWARM_SL_SOCKET", "/swarm/run/sl.sock"),
        help="Unix socket shared with the ML process [SWARM_SL_SOCKET]",
    )
    parser.add_argument(
        "--leader-eligible",
        default=env("SWARM_LEADER_ELIGIBLE", env("SL_MAKE_ME_ADMIN", "true")),
        help="true/false: may this node lead a merge [SWARM_LEADER_ELIGIBLE, SL_MAKE_ME_ADMIN]",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=float(env("SWARM_SL_LINGER_SECONDS", "60")),
        help="after the ML process finished, serve the final model until every participant has it, "
        "but at most this many seconds [SWARM_SL_LINGER_SECONDS]",
    )
    parser.add_argument(
        "--stay-until-stopped",
        action=argparse.BooleanOptionalAction,
        default=env("SWARM_SL_STAY_UNTIL_STOPPED", "false").lower() in _TRUE,
        help="after serving the final model keep running until SIGTERM, as a pod's native sidecar must "
        "(else the kubelet restarts it) [SWARM_SL_STAY_UNTIL_STOPPED]",
    )
    parser.add_argument(
        "--model-dir",
        default=env("SWARM_SL_MODEL_DIR") or None,
        help="keep merged models here and load them back on start, so the final model outlives the "
        "swarm (the site's volume) [SWARM_SL_MODEL_DIR]",
    )
    parser.add_argument(
        "--keep-round-models",
        action=argparse.BooleanOptionalAction,
        default=env("SWARM_SL_KEEP_ROUND_MODELS", "false").lower() in _TRUE,
        help="with --model-dir: keep every round's merged model, not only the newest "
        "[SWARM_SL_KEEP_ROUND_MODELS]",
    )
    parser.add_argument(
        "--metrics-port",
        default=env("SWARM_SL_METRICS_PORT", "9464"),
        help="plain HTTP port of Prometheus /metrics (9464 unless set); 0 = no metrics server "
        "[SWARM_SL_METRICS_PORT]",
    )
    parser.add_argument(
        "--metrics-host",
        default=env("SWARM_SL_METRICS_HOST", "0.0.0.0"),
        help="address the /metrics server listens on (127.0.0.1 = this machine only) [SWARM_SL_METRICS_HOST]",
    )
    parser.add_argument("--log-level", default=env("SWARM_LOG_LEVEL", "INFO"))


def run(args: argparse.Namespace) -> int:
    """Run an SL node from parsed arguments; returns the process exit code."""
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("swarmlearning.sl")
    if not args.name:
        log.error("--name (SWARM_NODE_NAME) is required")
        return 2
    if not args.sn:
        log.error("--sn (SWARM_SN_ENDPOINTS) is required: the SN API endpoints host:port")
        return 2
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        log.error("--listen must be host:port with port 0-65535, got %r", args.listen)
        return 2

    metrics_port = str(args.metrics_port).strip()
    if not metrics_port.isdigit() or not 0 <= int(metrics_port) <= 65535:
        log.error(
            "--metrics-port (SWARM_SL_METRICS_PORT) must be 0 (off) or a port 1-65535, got %r",
            args.metrics_port,
        )
        return 2
    if not args.metrics_host:
        log.error("--metrics-host (SWARM_SL_METRICS_HOST) must not be empty (0.0.0.0 = every address)")
        return 2

    if args.linger < 0:
        log.error("--linger (SWARM_SL_LINGER_SECONDS) must be >= 0 seconds, got %g", args.linger)
        return 2

    from swarmlearning.sl.node import SLConfig, SLNode

    config = SLConfig(
        name=args.name,
        cert_dir=Path(args.cert_dir),
        sn_endpoints=tuple(e.strip() for e in args.sn.split(",") if e.strip()),
        socket_path=Path(args.socket),
        listen_host=host,
        listen_port=int(port),
        advertise_host=args.advertise_host,
        leader_eligible=str(args.leader_eligible).lower() in _TRUE,
        linger_seconds=args.linger,
        stay_until_stopped=args.stay_until_stopped,
        model_dir=Path(args.model_dir) if args.model_dir else None,
        keep_round_models=args.keep_round_models,
        metrics_host=args.metrics_host,
        metrics_port=int(metrics_port),
    )

    async def main() -> None:
        stop = asyncio.Event()
        node = SLNode(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.signal_stop, stop)
        await node.run(stop)

    try:
        asyncio.run(main())
    except Exception as exc:
        log.error("SL node %s stopped: %s: %s", args.name, type(exc).__name__, exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m swarmlearning.sl", description="Run a Swarm Learning SL node."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
