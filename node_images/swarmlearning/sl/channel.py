"""Local channel between an ML process and its SL node: a Unix domain socket, one request at a time.

Frame layout (both directions)::

    4 bytes  big-endian length H of the JSON header
    H bytes  UTF-8 JSON object; key ``payload_bytes`` gives the length P of what follows (0 = none)
    P bytes  payload: model weights as safetensors, never pickle

Requests carry ``op`` (``hello``, ``sync``, ``latest``, ``finish``); replies carry ``ok`` and, when
``ok`` is false, ``error`` (a message meant for the user). This module has no torch dependency: weights
cross it as bytes. ``encode_state``/``decode_state`` in ``swarmlearning.sl.weights`` convert them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from swarmlearning.limits import Limits, describe

_LEN = struct.Struct(">I")
MAX_HEADER_BYTES = Limits().channel_header_bytes
"""Default largest JSON header (1 MiB; ``SWARM_MAX_CHANNEL_HEADER_BYTES``): a bigger one means a peer
speaking another protocol."""
MAX_PAYLOAD_BYTES = Limits().channel_payload_bytes
"""Default largest payload (16 GiB; ``SWARM_MAX_CHANNEL_PAYLOAD_BYTES``)."""


class ChannelError(RuntimeError):
    """The local channel broke: malformed frame, closed socket, or timeout."""


@dataclass(frozen=True)
class Frame:
    """One message: a JSON header and an optional binary payload (safetensors bytes)."""

    header: dict[str, Any]
    payload: bytes = field(default=b"", repr=False)


def encode_frame(frame: Frame, limits: Limits | None = None) -> bytes:
    """Serialise a frame; ``payload_bytes`` in the header is set from the payload.

    Raises ChannelError when the header or payload exceeds what the other side accepts."""
    lim = limits or Limits.from_env()
    header = dict(frame.header)
    header["payload_bytes"] = len(frame.payload)
    try:
        raw = json.dumps(header, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise ChannelError(f"frame header cannot be serialised as JSON: {exc}") from exc
    if len(raw) > lim.channel_header_bytes:
        raise ChannelError(
            f"frame header of {len(raw)} bytes exceeds the limit of {describe(lim, 'channel_header_bytes')}"
        )
    if len(frame.payload) > lim.channel_payload_bytes:
        raise ChannelError(
            f"frame payload of {len(frame.payload)} bytes exceeds the limit of "
            f"{describe(lim, 'channel_payload_bytes')}"
        )
    return _LEN.pack(len(raw)) + raw + frame.payload


def _parse_header(raw: bytes, lim: Limits) -> tuple[dict[str, Any], int]:
    try:
        header = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, 4300+ digit ints; deep nesting
        text = str(exc)
        raise ChannelError(f"frame header is not JSON: {text[:200]}") from exc
    if not isinstance(header, dict):
        raise ChannelError(f"frame header must be a JSON object, got a JSON {type(header).__name__}")
    size = header.get("payload_bytes", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= lim.channel_payload_bytes:
        shown = repr(size) if isinstance(size, int) and not isinstance(size, bool) else type(size).__name__
        raise ChannelError(
            f"frame payload_bytes must be an int in 0..{lim.channel_payload_bytes} "
            f"(SWARM_MAX_CHANNEL_PAYLOAD_BYTES), got {shown[:40]}"
        )
    return header, size


def _check_header_len(n: int, lim: Limits) -> None:
    if n > lim.channel_header_bytes:
        raise ChannelError(
            f"frame header length {n} exceeds the limit of {describe(lim, 'channel_header_bytes')}; "
            "not a swarm channel peer"
        )


def decode_frame(data: bytes, limits: Limits | None = None) -> Frame:
    """Parse one complete frame from bytes (the inverse of ``encode_frame``); raises ChannelError."""
    lim = limits or Limits.from_env()
    if len(data) < _LEN.size:
        raise ChannelError("truncated frame: no length prefix")
    (hlen,) = _LEN.unpack_from(data)
    _check_header_len(hlen, lim)
    if len(data) < _LEN.size + hlen:
        left = len(data) - _LEN.size
        raise ChannelError(f"truncated frame: header length {hlen}, only {left} bytes follow")
    header, size = _parse_header(data[_LEN.size : _LEN.size + hlen], lim)
    payload = data[_LEN.size + hlen :]
    if len(payload) != size:
        raise ChannelError(f"truncated frame: payload has {len(payload)} bytes, header says {size}")
    return Frame(header, payload)


# ---- blocking side (ML process) ----


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ChannelError("SL node closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, limits: Limits | None = None) -> Frame:
    """Read one frame from a blocking socket (honours the socket's timeout); raises ChannelError."""
    lim = limits or Limits.from_env()
    try:
        (hlen,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        _check_header_len(hlen, lim)
        header, size = _parse_header(_recv_exact(sock, hlen), lim)
        return Frame(header, _recv_exact(sock, size) if size else b"")
    except TimeoutError as exc:
        raise ChannelError("timed out waiting for the SL node's reply") from exc


class ChannelClient:
    """Blocking client used by ``SwarmCallback``: connect, send a request, read its reply."""

    def __init__(self, path: str, connect_timeout: float = 60.0, limits: Limits | None = None) -> None:
        """Connect to the SL node's socket at ``path``, retrying up to ``connect_timeout`` seconds
        (the SL node may still be starting). ``limits``: frame sizes (default ``Limits.from_env()``)."""
        import time

        self._limits = limits or Limits.from_env()

        deadline = time.monotonic() + connect_timeout
        last: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                self._sock = sock
                return
            except OSError as exc:
                sock.close()
                last = exc
            if time.monotonic() >= deadline:
                raise ChannelError(f"cannot reach the SL node at {path} after {connect_timeout:.0f}s: {last}")
            time.sleep(0.2)

    def request(self, frame: Frame, timeout: float) -> Frame:
        """Send ``frame`` and wait up to ``timeout`` seconds for the reply."""
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(encode_frame(frame, self._limits))
        except OSError as exc:
            raise ChannelError(f"cannot send to the SL node: {exc}") from exc
        return recv_frame(self._sock, self._limits)

    def read(self, timeout: float) -> Frame:
        """Read the next frame (after an interim reply), waiting up to ``timeout`` seconds."""
        self._sock.settimeout(timeout)
        return recv_frame(self._sock, self._limits)

    def close(self) -> None:
        self._sock.close()


# ---- asyncio side (SL node) ----


async def read_frame(reader: asyncio.StreamReader, limits: Limits | None = None) -> Frame | None:
    """Read one frame; ``None`` when the peer closed the connection cleanly between frames.

    Raises ChannelError on a malformed or oversized frame or a connection closed mid-frame."""
    lim = limits or Limits.from_env()
    try:
        prefix = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ChannelError("truncated frame length") from exc
    (hlen,) = _LEN.unpack(prefix)
    _check_header_len(hlen, lim)
    try:
        header, size = _parse_header(await reader.readexactly(hlen), lim)
        payload = await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError as exc:
        raise ChannelError("ML process closed the channel mid-frame") from exc
    return Frame(header, payload)


async def write_frame(writer: asyncio.StreamWriter, frame: Frame, limits: Limits | None = None) -> None:
    writer.write(encode_frame(frame, limits))
    await writer.drain()
