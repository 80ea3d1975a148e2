"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers of other parties' bytes.

    .venv/bin/python -m tests.fuzz.atheris_targets <target> [--seconds 60] [--cache DIR]
    make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="safetensors channel record cert"]

Targets (one parser each; an input may only end in the parser's own typed error):

- ``safetensors``: ``decode_state`` then ``validate_peer_model`` against a small model (WeightsError);
- ``channel``: ``decode_frame`` and the asyncio ``read_frame`` loop over the same bytes (ChannelError);
- ``record``: first byte < 128: ``Record.from_json`` of the rest, then ``verify_chain`` of it
  (RecordError, or a failed report); else the rest as JSON bodies of a signed close and round record,
  so that ``check_protocol`` sees arbitrary bodies with valid signatures;
- ``cert``: first byte even: the rest as PEM, odd: the rest as DER wrapped in PEM; ``check_cert`` and
  ``fingerprint`` (PKIError).

Each run is bounded by ``--seconds`` (libFuzzer ``-max_total_time``), ``-timeout=10`` per input (a hang is
a finding) and ``-rss_limit_mb=3072`` (unbounded memory is a finding). The corpus lives in
``<cache>/<target>/corpus`` (seeded on first use, grown by every run); a finding is saved under
``<cache>/<target>/crashes/`` and makes the command exit non-zero. Only ``swarmlearning`` is instrumented
for coverage (safetensors, cryptography and json are native code).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["swarmlearning"]):
    from swarmlearning import pki
    from swarmlearning.ledger.records import Record, RecordError, verify_chain
    from swarmlearning.limits import Limits
    from swarmlearning.merge.validate import validate_peer_model
    from swarmlearning.sl.channel import ChannelError, Frame, decode_frame, encode_frame, read_frame
    from swarmlearning.sl.weights import WeightsError, decode_state

from tests.fuzz.ledger_chains import certificates, chain, good_chain, participants
from tests.fuzz.safetensors_bodies import body, reference_state, valid_body

DEFAULT_CACHE = Path.home() / ".cache" / "swarm-learning" / "fuzz"
LIMITS = Limits()
CHANNEL_LIMITS = Limits(channel_header_bytes=1 << 16, channel_payload_bytes=1 << 20)


class Target:
    """One fuzz target: ``seeds`` for an empty corpus and ``run`` for one input."""

    name = ""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def seeds(self) -> list[bytes]:
        raise NotImplementedError

    def run(self, data: bytes) -> None:
        raise NotImplementedError


class Safetensors(Target):
    name = "safetensors"

    def __init__(self, cache: Path) -> None:
        super().__init__(cache)
        self.ref = reference_state()

    def seeds(self) -> list[bytes]:
        return [
            valid_body(),
            body({}),
            body({"a": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"),
            body(
                {"__metadata__": {"k": "v"}, "a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                b"\1\2",
            ),
        ]

    def run(self, data: bytes) -> None:
        try:
            state = decode_state(data, LIMITS)
        except WeightsError:
            return
        problem = validate_peer_model(self.ref, state)
        assert problem is None or isinstance(problem, str)


class Channel(Target):
    name = "channel"

    def __init__(self, cache: Path) -> None:
        super().__init__(cache)
        self.loop = asyncio.new_event_loop()

    def seeds(self) -> list[bytes]:
        return [
            encode_frame(Frame({"op": "sync", "samples": 3, "loss": 0.5}, b"weights")),
            encode_frame(Frame({"op": "hello", "params": {"syncFrequency": 8}}))
            + encode_frame(Frame({"ok": True})),
        ]

    def run(self, data: bytes) -> None:
        with contextlib.suppress(ChannelError):
            decode_frame(data, CHANNEL_LIMITS)
        self.loop.run_until_complete(self._read_all(data))

    async def _read_all(self, data: bytes) -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        try:
            while await read_frame(reader, CHANNEL_LIMITS) is not None:
                pass
        except ChannelError:
            pass


def _pki(cache: Path) -> tuple[bytes, dict[str, pki.NodeCert]]:
    """A fuzzing CA and two node certificates, made once under the cache (libFuzzer exits without
    running Python's cleanup, so no temporary directory)."""
    root = cache / "pki"
    if not (root / "ca" / pki.CA_KEY).exists():
        root.mkdir(parents=True, exist_ok=True)
        pki.create_ca(root / "ca")
        for name in ("alice", "bob"):
            pki.issue_node_cert(root / "ca", root / name, name, "org-" + name, "sl", days=3650)
    nodes = {name: pki.NodeCert.load(root / name) for name in ("alice", "bob")}
    return (root / "ca" / pki.CA_CERT).read_bytes(), nodes


class Records(Target):
    name = "record"

    def __init__(self, cache: Path) -> None:
        super().__init__(cache)
        self.ca_pem, self.nodes = _pki(cache)
        self.certs = certificates(self.nodes)
        self.member = chain(self.nodes, [("alice", "member", {"name": "alice"})])

    def seeds(self) -> list[bytes]:
        records = good_chain(self.nodes)
        close = {"round": 1, "participants": participants(["alice", "bob"])}
        return [
            b"\x00" + records[0].to_json(),
            b"\x01" + records[2].to_json(),
            b"\x80" + json.dumps([close, {"round": 1, "attempt": 0}]).encode(),
        ]

    def run(self, data: bytes) -> None:
        if not data:
            return
        if data[0] < 128:
            try:
                rec = Record.from_json(data[1:], LIMITS)
            except RecordError:
                return
            report = verify_chain([rec], self.certs, ca_pem=self.ca_pem)
            assert report.ok or report.reason
            return
        try:
            bodies = json.loads(data[1:])
        except (ValueError, RecursionError):
            return
        if not (isinstance(bodies, list) and len(bodies) == 2 and all(isinstance(b, dict) for b in bodies)):
            return
        try:
            records = chain(
                self.nodes, [("alice", "close", bodies[0]), ("bob", "round", bodies[1])], self.member
            )
        except (ValueError, TypeError, RecursionError):
            return  # our own signer refuses it (NaN, unserialisable): not a parser's input
        report = verify_chain(records, self.certs, ca_pem=self.ca_pem)
        assert report.ok or report.reason


class Certificates(Target):
    name = "cert"

    def __init__(self, cache: Path) -> None:
        super().__init__(cache)
        self.ca_pem, self.nodes = _pki(cache)

    def seeds(self) -> list[bytes]:
        pem = self.nodes["alice"].cert_pem()
        der = base64.b64decode(b"".join(pem.splitlines()[1:-1]))
        return [b"\x00" + pem, b"\x01" + der, b"\x00" + self.ca_pem]

    def run(self, data: bytes) -> None:
        if not data:
            return
        if data[0] % 2:
            b64 = base64.encodebytes(data[1:]).decode()
            pem = f"-----BEGIN CERTIFICATE-----\n{b64}-----END CERTIFICATE-----\n".encode()
        else:
            pem = data[1:]
        with contextlib.suppress(pki.PKIError):
            pki.check_cert(pem, self.ca_pem)
        with contextlib.suppress(pki.PKIError):
            pki.fingerprint(pem)


TARGETS: dict[str, Callable[[Path], Target]] = {
    t.name: t for t in (Safetensors, Channel, Records, Certificates)
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument(
        "--seconds", type=int, default=60, help="run time (libFuzzer -max_total_time), default 60"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"corpus/crash root, default {DEFAULT_CACHE}"
    )
    parser.add_argument(
        "--reproduce", type=Path, help="run one saved input (e.g. a crash file) and show its error"
    )
    args, libfuzzer_args = parser.parse_known_args(argv)
    if args.seconds < 1:
        parser.error(f"--seconds={args.seconds}: must be >= 1")
    target = TARGETS[args.target](args.cache)
    if args.reproduce is not None:
        target.run(args.reproduce.read_bytes())
        print(f"{args.reproduce}: no finding")
        return
    corpus = args.cache / args.target / "corpus"
    crashes = args.cache / args.target / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(target.seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    print(
        f">>> fuzzing {args.target} for {args.seconds}s; corpus {corpus}, findings go to {crashes}/",
        flush=True,
    )
    flags: list[Any] = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={crashes}/",
        "-timeout=10",
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
        *libfuzzer_args,
        str(corpus),
    ]
    atheris.Setup(flags, target.run)
    atheris.Fuzz()  # exits the process: 0 at the time limit, non-zero on a finding


if __name__ == "__main__":
    main()
