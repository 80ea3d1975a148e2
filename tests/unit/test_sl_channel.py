"""Framing of the local ML<->SL channel, over bytes and over a real Unix socket pair."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import torch
from swarmlearning.sl.channel import ChannelError, Frame, decode_frame, encode_frame, read_frame, recv_frame
from swarmlearning.sl.weights import decode_state, digest, encode_state

pytestmark = pytest.mark.unit


def test_round_trip_with_payload() -> None:
    frame = Frame({"op": "sync", "samples": 3}, b"\x00\x01weights")
    back = decode_frame(encode_frame(frame))
    assert back.header == {"op": "sync", "samples": 3, "payload_bytes": 9}
    assert back.payload == b"\x00\x01weights"


def test_truncated_and_malformed_frames_are_rejected() -> None:
    raw = encode_frame(Frame({"op": "x"}, b"abc"))
    with pytest.raises(ChannelError, match="truncated"):
        decode_frame(raw[:-1])
    with pytest.raises(ChannelError, match="not JSON"):
        decode_frame(struct.pack(">I", 3) + b"{{{")
    with pytest.raises(ChannelError, match="JSON object"):
        decode_frame(struct.pack(">I", 2) + b"[]")
    with pytest.raises(ChannelError, match="exceeds"):
        decode_frame(struct.pack(">I", 1 << 30) + b"{}")
    with pytest.raises(ChannelError, match="payload_bytes"):
        decode_frame(struct.pack(">I", 22) + b'{"payload_bytes":-1}  ')


def test_blocking_and_asyncio_sides_interoperate() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)}
        left.sendall(encode_frame(Frame({"op": "sync"}, encode_state(state))))
        left.sendall(encode_frame(Frame({"op": "latest"})))
        left.shutdown(socket.SHUT_WR)

        async def read_all() -> list[Frame]:
            reader, writer = await asyncio.open_unix_connection(sock=right)
            frames = []
            while (f := await read_frame(reader)) is not None:
                frames.append(f)
            writer.write(encode_frame(Frame({"ok": True}, b"xyz")))
            await writer.drain()
            writer.close()
            return frames

        frames = asyncio.run(read_all())
        assert [f.header["op"] for f in frames] == ["sync", "latest"]
        got = decode_state(frames[0].payload)
        assert torch.equal(got["w"], state["w"]) and int(got["n"]) == 7
        reply = recv_frame(left)
        assert reply.header["ok"] is True and reply.payload == b"xyz"
    finally:
        left.close()
        right.close()


def test_weights_are_safetensors_with_stable_digest() -> None:
    base = torch.randn(4, 4)
    state = {"a": base, "tied": base, "view": base.t()}  # tied and strided tensors are copied
    data = encode_state(state)
    assert data[8:9] == b"{"  # safetensors: u64 header length, then a JSON header
    assert digest(data) == digest(encode_state(state))
    assert torch.equal(decode_state(data)["view"], base.t())
