"""``swarmctl``: certificates, SN nodes, ledger audit; ``run`` and cluster commands come from other modules.

Subcommand registration contract (for ``swarmlearning.local.cli`` and ``swarmlearning.cli.cluster``):
each module has ``register(subparsers)`` adding its parsers to the ``argparse`` subparsers object
and setting ``func`` on them with ``set_defaults(func=handler)``; ``handler(args) -> int | None`` is
the exit code (None = 0). Those modules are imported only when ``swarmctl`` runs, and a missing one
yields a placeholder command that explains what is missing.

Exit codes: 0 success, 1 check failed (e.g. a broken ledger chain), 2 usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], "int | None"]

EXTENSIONS = (
    ("swarmlearning.local.cli", "run", "run a swarm locally: SN, SL and ML nodes as processes on loopback"),
    ("swarmlearning.sl.cli", "sl", "SL nodes: the process paired with each ML program"),
    ("swarmlearning.cli.cluster", "cluster", "views of SwarmNetworks, LearningNodes and SwarmTasks"),
)


class CLIError(Exception):
    """A usage or setup error: printed without a traceback, exit code 2."""


def _endpoints(value: str) -> list[str]:
    eps = [e.strip() for e in value.split(",") if e.strip()]
    if not eps:
        raise argparse.ArgumentTypeError("--endpoints: give host:port[,host:port...]")
    for e in eps:
        if ":" not in e.removeprefix("https://"):
            raise argparse.ArgumentTypeError(f"--endpoints: {e!r} is not host:port")
    return eps


def _node_cert(cert_dir: str) -> Any:
    from swarmlearning.pki import NodeCert, PKIError

    try:
        return NodeCert.load(cert_dir)
    except PKIError as e:
        raise CLIError(f"--cert-dir: {e}") from e


# ---------------------------------------------------------------------------------------------- certs


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from swarmlearning import pki

    root = Path(args.dir)
    ca_dir = root / "ca"
    if not (ca_dir / pki.CA_KEY).exists():
        pki.create_ca(ca_dir, args.ca_name)
        print(f"created CA {ca_dir / pki.CA_CERT}")
    specs: list[tuple[str, str, str]] = [("root", args.org, "admin")]
    for spec, role in [*((s, "sl") for s in args.node), *((s, "sn") for s in args.sn)]:
        name, _, org = spec.partition(":")
        specs.append((name, org or args.org, role))
    for name, org, role in specs:
        try:
            nc = pki.issue_node_cert(
                ca_dir, root / name, name, org, role, hosts=tuple(args.host or ("127.0.0.1", "localhost"))
            )
        except pki.PKIError as e:
            raise CLIError(f"--node/--sn {name}: {e}") from e
        print(f"issued {role:5} {name:20} O={org:16} -> {root / name}  sha256:{nc.fingerprint[:16]}")
    return 0


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from swarmlearning import pki

    try:
        nc = pki.issue_node_cert(
            args.ca_dir,
            args.out,
            args.name,
            args.org,
            args.role,
            hosts=tuple(args.host or ("127.0.0.1", "localhost")),
        )
    except pki.PKIError as e:
        raise CLIError(str(e)) from e
    print(f"issued {nc.role} {nc.name} -> {args.out}  sha256:{nc.fingerprint}")
    return 0


def _register_certs(sub: Any) -> None:
    p = sub.add_parser("certs", help="create the swarm CA and node certificates")
    s = p.add_subparsers(dest="certs_cmd", required=True)
    i = s.add_parser("init", help="throwaway CA plus node certificates for local runs: DIR/ca, DIR/<name>/")
    i.add_argument("dir", help="output directory")
    i.add_argument("--node", action="append", default=[], metavar="NAME[:ORG]", help="SL node certificate")
    i.add_argument("--sn", action="append", default=[], metavar="NAME[:ORG]", help="SN node certificate")
    i.add_argument("--org", default="swarm-local", help="default organisation (default: swarm-local)")
    i.add_argument("--host", action="append", default=None, help="SAN host (default: 127.0.0.1, localhost)")
    i.add_argument("--ca-name", default="swarm-ca")
    i.set_defaults(func=_cmd_certs_init)
    c = s.add_parser("issue", help="issue one certificate from an existing CA")
    c.add_argument("--ca-dir", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--org", required=True)
    c.add_argument("--role", required=True, choices=("sn", "sl", "admin", "operator"))
    c.add_argument("--host", action="append", default=None)
    c.set_defaults(func=_cmd_certs_issue)


# ---------------------------------------------------------------------------------------------- ledger


def _cmd_ledger_verify(args: argparse.Namespace) -> int:
    from swarmlearning.ledger import LedgerSnapshot, RecordError

    if args.file:
        try:
            snap = LedgerSnapshot.from_json(json.loads(Path(args.file).read_text()))
        except (OSError, ValueError, KeyError, RecordError) as e:
            raise CLIError(f"--file {args.file}: cannot read the export: {e}") from e
        ca_pem = Path(args.ca).read_bytes() if args.ca else None
        if ca_pem is None and args.cert_dir:
            ca_pem = _node_cert(args.cert_dir).ca_pem()
    else:
        if not (args.endpoints and args.cert_dir):
            raise CLIError("ledger verify: give --endpoints and --cert-dir, or --file")
        snap = asyncio.run(_snapshot(args.endpoints, args.cert_dir, args.timeout))
        ca_pem = _node_cert(args.cert_dir).ca_pem()
    report = snap.verify(ca_pem)
    print(report.message())
    if ca_pem is None:
        print("note: no CA given (--ca or --cert-dir); certificates were not checked against the swarm CA")
    return 0 if report.ok else 1


async def _snapshot(endpoints: list[str], cert_dir: str, timeout: float) -> Any:
    from swarmlearning.etcd import EtcdError
    from swarmlearning.ledger import Ledger

    try:
        ledger = await Ledger.connect(endpoints, _node_cert(cert_dir), timeout=timeout)
    except EtcdError as e:
        raise CLIError(str(e)) from e
    try:
        return await ledger.snapshot()
    except EtcdError as e:
        raise CLIError(str(e)) from e
    finally:
        await ledger.close()


def _cmd_ledger_export(args: argparse.Namespace) -> int:
    snap = asyncio.run(_snapshot(args.endpoints, args.cert_dir, args.timeout))
    Path(args.output).write_text(json.dumps(snap.to_json(), indent=1, sort_keys=True))
    print(f"exported {len(snap.records)} records to {args.output}")
    return 0


def _cmd_ledger_show(args: argparse.Namespace) -> int:
    snap = asyncio.run(_snapshot(args.endpoints, args.cert_dir, args.timeout))
    for r in snap.records:
        if args.contract is None or r.contract == args.contract:
            print(
                f"{r.seq:6} {r.time} {r.kind:8} {r.contract or '-':16} {r.author:16} "
                f"{json.dumps(r.body, sort_keys=True)[:120]}"
            )
    return 0


def _connection_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--endpoints", type=_endpoints, required=required, help="SN API endpoints host:port[,...]")
    p.add_argument("--cert-dir", required=required, help="directory with tls.crt, tls.key, ca.crt")
    p.add_argument("--timeout", type=float, default=10.0, help="etcd timeout in seconds (default 10)")


def _register_ledger(sub: Any) -> None:
    p = sub.add_parser("ledger", help="audit the swarm ledger")
    s = p.add_subparsers(dest="ledger_cmd", required=True)
    v = s.add_parser("verify", help="check signatures and the hash chain (exit 1 names the first bad record)")
    _connection_args(v, required=False)
    v.add_argument("--file", help="verify an exported ledger instead of a live one")
    v.add_argument("--ca", help="with --file: the swarm CA certificate to check authors against")
    v.set_defaults(func=_cmd_ledger_verify)
    e = s.add_parser("export", help="write records, certificates and head to a JSON file")
    _connection_args(e, required=True)
    e.add_argument("-o", "--output", required=True)
    e.set_defaults(func=_cmd_ledger_export)
    sh = s.add_parser("show", help="list records")
    _connection_args(sh, required=True)
    sh.add_argument("--contract")
    sh.set_defaults(func=_cmd_ledger_show)


# ---------------------------------------------------------------------------------------------- sn


def _name_role(value: str) -> tuple[str, str]:
    name, _, role = value.partition(":")
    if not name or role not in ("sn", "sl", "admin", "operator"):
        raise argparse.ArgumentTypeError(
            f"--provision {value!r}: expected NAME:ROLE, ROLE one of sn, sl, admin, operator"
        )
    return name, role


def _cmd_sn_start(args: argparse.Namespace) -> int:
    from swarmlearning.sn import SNConfig, SNNode, SNStartError

    tls = _node_cert(args.cert_dir)
    if tls.name != args.name:
        raise CLIError(
            f"--name {args.name!r} differs from the certificate CN {tls.name!r} in {args.cert_dir}"
        )
    try:
        cfg = SNConfig(
            name=args.name,
            data_dir=Path(args.data_dir),
            tls=tls,
            peer_port=args.peer_port,
            client_port=args.client_port,
            listen_host=args.listen_host,
            advertise_host=args.advertise_host,
            join=tuple(args.join or ()),
            provision=tuple(args.provision),
            start_timeout_s=args.start_timeout,
        )
    except ValueError as e:
        raise CLIError(str(e)) from e
    node = SNNode(cfg)

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # A container runtime stops us with SIGTERM: take etcd (our child, own process group) down too.
    signal.signal(signal.SIGTERM, terminate)
    try:
        asyncio.run(node.start())
    except (SNStartError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        node.stop()
        return 0
    role = "joined" if cfg.join else "bootstrapped (sentinel)"
    print(f"SN node {cfg.name} {role}: SN API {cfg.endpoint}, SN P2P {cfg.peer_url}", flush=True)
    try:
        return node.wait()
    except KeyboardInterrupt:
        node.stop()
        return 0
    finally:
        node.stop()


def _cmd_sn_provision(args: argparse.Namespace) -> int:
    from swarmlearning.etcd import EtcdClient, EtcdError
    from swarmlearning.ledger import access

    async def go() -> None:
        async with await EtcdClient.connect(
            args.endpoints, _node_cert(args.cert_dir), timeout=args.timeout
        ) as c:
            await access.provision(c, args.name, args.role)

    try:
        asyncio.run(go())
    except EtcdError as e:
        raise CLIError(str(e)) from e
    print(f"etcd user {args.name} provisioned with role {args.role}")
    return 0


def _cmd_sn_members(args: argparse.Namespace) -> int:
    from swarmlearning.etcd import EtcdClient, EtcdError

    async def go() -> None:
        async with await EtcdClient.connect(
            args.endpoints, _node_cert(args.cert_dir), timeout=args.timeout
        ) as c:
            for m in await c.member_list():
                print(
                    f"{m.id:016x} {m.name or '(unstarted)':16} {'learner' if m.is_learner else 'voter':8} "
                    f"{','.join(m.peer_urls)} {','.join(m.client_urls)}"
                )

    try:
        asyncio.run(go())
    except EtcdError as e:
        raise CLIError(str(e)) from e
    return 0


def _register_sn(sub: Any) -> None:
    p = sub.add_parser("sn", help="SN nodes (etcd members)")
    s = p.add_subparsers(dest="sn_cmd", required=True)
    st = s.add_parser("start", help="run an SN node in the foreground (what the SN image runs)")
    st.add_argument("--name", required=True)
    st.add_argument("--data-dir", required=True)
    st.add_argument("--peer-port", type=int, default=30303)
    st.add_argument("--client-port", type=int, default=30304)
    st.add_argument("--listen-host", default="127.0.0.1")
    st.add_argument("--advertise-host", default="127.0.0.1")
    st.add_argument(
        "--join", type=_endpoints, help="SN API endpoints of the swarm to join (omit for the sentinel)"
    )
    st.add_argument("--cert-dir", required=True, help="SN certificate directory (tls.crt, tls.key, ca.crt)")
    st.add_argument(
        "--provision",
        type=_name_role,
        action="append",
        default=[],
        metavar="NAME:ROLE",
        help="sentinel: etcd users to create at bootstrap (e.g. sn-1:sn, alice:sl)",
    )
    st.add_argument("--start-timeout", type=float, default=60.0, help="seconds (default 60)")
    st.set_defaults(func=_cmd_sn_start)
    pr = s.add_parser("provision", help="create the etcd user and role for a certificate (needs a root cert)")
    _connection_args(pr, required=True)
    pr.add_argument("--name", required=True)
    pr.add_argument("--role", required=True, choices=("sn", "sl", "admin", "operator"))
    pr.set_defaults(func=_cmd_sn_provision)
    mb = s.add_parser("members", help="list etcd members")
    _connection_args(mb, required=True)
    mb.set_defaults(func=_cmd_sn_members)


# ---------------------------------------------------------------------------------------------- main


def _register_extension(sub: Any, module: str, command: str, help_text: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        reason = (
            f"module {module} is not installed"
            if e.name and module.startswith(e.name)
            else f"module {module} needs {e.name}, which is missing"
        )
        _placeholder(sub, command, help_text, reason)
        return
    except ImportError as e:
        _placeholder(sub, command, help_text, f"module {module} failed to import: {e}")
        return
    mod.register(sub)


def _placeholder(sub: Any, command: str, help_text: str, reason: str) -> None:
    p = sub.add_parser(command, help=f"{help_text} (unavailable: {reason})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(_: argparse.Namespace) -> int:
        raise CLIError(f"`swarmctl {command}` is unavailable: {reason}")

    p.set_defaults(func=unavailable)


BUILTIN = ("certs", "sn", "ledger")


def build_parser(extensions: bool = True) -> argparse.ArgumentParser:
    """The full parser; ``extensions=False`` skips importing the ``run``/cluster modules (faster)."""
    parser = argparse.ArgumentParser(prog="swarmctl", description="Swarm Learning command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_certs(sub)
    _register_sn(sub)
    _register_ledger(sub)
    for module, command, help_text in EXTENSIONS if extensions else ():
        _register_extension(sub, module, command, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(extensions=command not in BUILTIN)
    # Everything after a bare "--" goes to the user's program untouched (swarmctl run --script x.py -- ...).
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("ledger", "certs") and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
