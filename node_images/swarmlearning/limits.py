"""Limits on every size another party controls (peers over 30305, the ML process, ledger records).

One place reads them: :meth:`Limits.from_env`, from ``SWARM_*`` environment variables (table in
docs/limits.md). Each parser takes a ``limits`` argument and falls back to ``Limits.from_env()``, so a
bad value fails with :class:`LimitsError` naming the variable and its allowed range. Defaults are
generous for real models; lower them to bound what a misbehaving peer can make a node allocate.
No torch import: the operator reads records through modules that use this.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


class LimitsError(ValueError):
    """A ``SWARM_*`` limit variable is not an integer in its allowed range."""


@dataclass(frozen=True)
class _Spec:
    env: str
    low: int
    high: int
    unit: str
    protects: str


@dataclass(frozen=True)
class Limits:
    """Upper bounds on peer-controlled sizes. All byte sizes are in bytes."""

    model_bytes: int = 8 * GIB
    """Model body downloaded from a peer; reading stops past it (default 8 GiB)."""
    safetensors_header_bytes: int = 100_000_000
    """Declared JSON header length of a safetensors body (default 100 MB, safetensors' own limit)."""
    tensors: int = 100_000
    """Number of tensors in one safetensors body (default 100 000)."""
    channel_header_bytes: int = 1 * MIB
    """JSON header of a local channel frame (default 1 MiB)."""
    channel_payload_bytes: int = 16 * GIB
    """Payload of a local channel frame (default 16 GiB)."""
    record_bytes: int = 16 * MIB
    """One serialised ledger record read from etcd (default 16 MiB; etcd itself caps a request at
    1.5 MiB unless ``--max-request-bytes`` is raised)."""
    certificate_bytes: int = 64 * KIB
    """One PEM certificate read from a peer or the ledger (default 64 KiB)."""
    request_line_bytes: int = 8190
    """HTTP request/status line on the peer endpoint, both directions (default 8190, aiohttp's)."""
    header_field_bytes: int = 8190
    """One HTTP header line on the peer endpoint, both directions (default 8190, aiohttp's)."""
    header_count: int = 128
    """Number of HTTP headers in one request or response on the peer endpoint (default 128)."""
    peer_idle_seconds: int = 15
    """Seconds the peer server keeps a connection that is idle or stuck in an unfinished request
    (default 15; aiohttp's own default is an hour, which lets a peer hold connections open)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Limits from ``SWARM_*`` variables in ``environ`` (default ``os.environ``); unset = default.

        Raises LimitsError naming the variable, the value and the allowed range."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            spec = SPECS[f.name]
            raw = env.get(spec.env)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = int(raw.strip().replace("_", ""), 10)
            except ValueError:
                value = None
            if value is None or not spec.low <= value <= spec.high:
                raise LimitsError(
                    f"{spec.env}={raw!r}: must be an integer number of {spec.unit} in {spec.low}..{spec.high}"
                )
            values[f.name] = value
        return cls(**values)


SPECS: dict[str, _Spec] = {
    "model_bytes": _Spec(
        "SWARM_MAX_MODEL_BYTES", KIB, 1 << 40, "bytes", "memory of a node downloading a peer's model"
    ),
    "safetensors_header_bytes": _Spec(
        "SWARM_MAX_SAFETENSORS_HEADER_BYTES",
        KIB,
        100_000_000,
        "bytes",
        "memory and CPU parsing a safetensors header (header bomb)",
    ),
    "tensors": _Spec("SWARM_MAX_TENSORS", 1, 10_000_000, "tensors", "per-tensor work and memory of a decode"),
    "channel_header_bytes": _Spec(
        "SWARM_MAX_CHANNEL_HEADER_BYTES", KIB, 64 * MIB, "bytes", "SL node and ML process reading a frame"
    ),
    "channel_payload_bytes": _Spec(
        "SWARM_MAX_CHANNEL_PAYLOAD_BYTES", KIB, 1 << 40, "bytes", "SL node and ML process reading a frame"
    ),
    "record_bytes": _Spec(
        "SWARM_MAX_RECORD_BYTES", KIB, 1 * GIB, "bytes", "parsing ledger records read from etcd"
    ),
    "certificate_bytes": _Spec(
        "SWARM_MAX_CERTIFICATE_BYTES", KIB, 16 * MIB, "bytes", "parsing certificates (huge SAN lists)"
    ),
    "request_line_bytes": _Spec(
        "SWARM_MAX_REQUEST_LINE_BYTES", 256, 1 * MIB, "bytes", "the peer server and client HTTP parser"
    ),
    "header_field_bytes": _Spec(
        "SWARM_MAX_HEADER_FIELD_BYTES", 256, 1 * MIB, "bytes", "the peer server and client HTTP parser"
    ),
    "header_count": _Spec(
        "SWARM_MAX_HEADER_COUNT", 8, 10_000, "headers", "the peer server and client HTTP parser"
    ),
    "peer_idle_seconds": _Spec(
        "SWARM_MAX_PEER_IDLE_SECONDS", 1, 3600, "seconds", "peer server connections held open by a peer"
    ),
}
"""Environment variable, allowed range, unit and purpose of each :class:`Limits` field."""


def describe(limits: Limits, name: str) -> str:
    """``"<value> <unit> (<VARIABLE>)"`` for messages, e.g. ``"1024 bytes (SWARM_MAX_MODEL_BYTES)"``."""
    spec = SPECS[name]
    return f"{getattr(limits, name)} {spec.unit} ({spec.env})"
