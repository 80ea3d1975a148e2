"""Local channel frames (ML process <-> SL node): every decoder ends in a Frame, a clean end-of-stream
or ChannelError, never another exception or a hang, for arbitrary bytes on bytes, asyncio and blocking
sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from swarmlearning.limits import Limits
from swarmlearning.sl.channel import ChannelError, Frame, decode_frame, encode_frame, read_frame, recv_frame

from tests.fuzz.settings import fuzz

pytestmark = pytest.mark.unit

SMALL = Limits(channel_header_bytes=4096, channel_payload_bytes=1 << 16)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _frame(header: bytes, payload: bytes = b"", hlen: int | None = None) -> bytes:
    return struct.pack(">I", len(header) if hlen is None else hlen) + header + payload


@fuzz(300)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        frame = decode_frame(data, SMALL)
    except ChannelError as exc:
        assert str(exc)
        return
    assert isinstance(frame.header, dict) and len(frame.payload) == frame.header.get("payload_bytes", 0)


@fuzz(100)
@given(st.dictionaries(st.text(max_size=10), _json, max_size=6), st.binary(max_size=200))
def test_round_trip(header: dict, payload: bytes) -> None:
    back = decode_frame(encode_frame(Frame(header, payload)))
    assert back.payload == payload
    assert back.header == json.loads(json.dumps({**header, "payload_bytes": len(payload)}))


@fuzz(200)
@given(
    st.dictionaries(st.sampled_from(["op", "payload_bytes", "x"]), _json, max_size=3), st.binary(max_size=64)
)
def test_header_values_of_any_type(header: dict, payload: bytes) -> None:
    raw = json.dumps(header).encode()
    try:
        frame = decode_frame(_frame(raw, payload), SMALL)
    except ChannelError:
        return
    assert frame.header == header or frame.header == {**header}


def _read_all_async(data: bytes) -> list[Frame]:
    async def go() -> list[Frame]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        frames: list[Frame] = []
        while (frame := await read_frame(reader, SMALL)) is not None:
            frames.append(frame)
        return frames

    return asyncio.run(asyncio.wait_for(go(), 10))


@fuzz(200)
@given(
    st.lists(
        st.one_of(st.binary(max_size=40), st.builds(lambda h: _frame(json.dumps(h).encode()), _json)),
        max_size=4,
    )
)
def test_asyncio_reader_on_arbitrary_streams(chunks: list[bytes]) -> None:
    try:
        frames = _read_all_async(b"".join(chunks))
    except ChannelError as exc:
        assert str(exc)
        return
    assert all(isinstance(f.header, dict) for f in frames)


@fuzz(100)
@given(st.binary(max_size=200))
def test_blocking_reader_on_a_real_socket(data: bytes) -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        right.settimeout(5)

        def send() -> None:
            left.sendall(data)
            left.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=send)
        writer.start()
        try:
            frame = recv_frame(right, SMALL)
        except ChannelError as exc:
            assert str(exc)
        else:
            assert isinstance(frame.header, dict)
        writer.join(10)
        assert not writer.is_alive(), "the sending thread did not finish within 10s"
    finally:
        left.close()
        right.close()


def test_blocking_reader_times_out_on_a_silent_peer() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        left.sendall(struct.pack(">I", 10) + b"{")
        right.settimeout(0.2)
        with pytest.raises(ChannelError, match="timed out"):
            recv_frame(right, SMALL)
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"[" * 100_000, "not JSON"),  # regression: RecursionError escaped
        (b'{"a": ' + b"1" * 5000 + b"}", "not JSON"),  # regression: ValueError (int digit limit) escaped
        (b'{"op": "\xff"}', "not JSON"),
        (b'{"payload_bytes": true}', "payload_bytes must be an int in 0..65536"),  # regression: True == 1
        (b'{"payload_bytes": 1e3}', "payload_bytes must be an int"),
        (b'{"payload_bytes": 65537}', "SWARM_MAX_CHANNEL_PAYLOAD_BYTES"),
    ],
)
def test_malformed_headers(header: bytes, message: str) -> None:
    lim = Limits(channel_header_bytes=1 << 20, channel_payload_bytes=1 << 16)
    with pytest.raises(ChannelError, match=message):
        decode_frame(_frame(header), lim)
    with pytest.raises(ChannelError, match=message):
        _read_all_async_with(_frame(header), lim)


def _read_all_async_with(data: bytes, lim: Limits) -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        await read_frame(reader, lim)

    asyncio.run(go())


def test_header_and_payload_limits_name_their_variables() -> None:
    with pytest.raises(
        ChannelError,
        match=r"header length 4097 exceeds the limit of 4096 bytes \(SWARM_MAX_CHANNEL_HEADER_BYTES\)",
    ):
        decode_frame(_frame(b"{}", hlen=4097), SMALL)
    with pytest.raises(ChannelError, match="SWARM_MAX_CHANNEL_HEADER_BYTES"):
        encode_frame(Frame({"x": "y" * 5000}), SMALL)
    with pytest.raises(ChannelError, match="SWARM_MAX_CHANNEL_PAYLOAD_BYTES"):
        encode_frame(Frame({}, b"\0" * (SMALL.channel_payload_bytes + 1)), SMALL)
    with pytest.raises(ChannelError, match="truncated frame: header length 100"):
        decode_frame(_frame(b"{}", hlen=100), SMALL)
