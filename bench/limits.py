"""Physical limits measured in the same run: memory copy bandwidth, TLS loopback bandwidth, and the byte
counts that a merge or a round must move at least.

The pure arithmetic (bytes that must move, lower-bound seconds) is unit-tested; the measurements are not.
"""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Bandwidth:
    """A measured bandwidth in bytes per second, with how it was measured."""

    bytes_per_second: float
    how: str


def merge_bytes(n_peers: int, n_params: int, dtype_bytes: int = FLOAT32_BYTES) -> int:
    """Bytes a merge of ``n_peers`` models of ``n_params`` values must touch at least: read every input
    once and write the merged model once, (n_peers + 1) * n_params * dtype_bytes."""
    _check_positive(n_peers=n_peers, n_params=n_params, dtype_bytes=dtype_bytes)
    return (n_peers + 1) * n_params * dtype_bytes


def round_bytes(n_peers: int, n_params: int, dtype_bytes: int = FLOAT32_BYTES) -> int:
    """Bytes one sync round must carry over the network at least when one of ``n_peers`` merges: the
    other n_peers - 1 send it their model and receive the merged one, 2 * (n_peers - 1) models.

    A Flower server (not a peer itself) moves 2 * n_peers models; the lower bound here is the swarm's."""
    _check_positive(n_peers=n_peers, n_params=n_params, dtype_bytes=dtype_bytes)
    return 2 * (n_peers - 1) * n_params * dtype_bytes


MERGE_MODES = ("single", "sharded", "secagg")
"""Round modes the round benchmarks measure: the contract's ``mergeMode`` (``auto`` picks one of the first
two), and ``secagg``: single-leader rounds with ``secureAggregation`` on."""
SECAGG_ENTRY_BYTES = 8
"""A masked input's entries: fixed point in Z/2^64 (``swarmlearning.privacy.secagg``)."""


def node_bytes(mode: str, n_peers: int, n_params: int, dtype_bytes: int = FLOAT32_BYTES) -> int:
    """Model bytes the busiest node must move (in + out) in one sync round of ``n_peers`` in ``mode``.

    - ``single``: one leader downloads the other n_peers - 1 models and serves the merged model to each
      of them: 2 (N - 1) P b bytes (b = ``dtype_bytes``; the same as :func:`round_bytes`).
    - ``secagg``: as ``single``, but the N - 1 inputs the leader downloads are masked, 8 bytes per value:
      (N - 1) P (8 + b) bytes. The key and share messages (O(N^2) of about 200 bytes) are left out.
    - ``sharded``: the model is cut into N slices of P / N values, slice j merged by node j. Each node
      sends N - 1 slices of its model to their leaders and receives N - 1 inputs of its own slice, then
      serves its merged slice to N - 1 nodes and fetches the other N - 1 merged slices: 4 (N - 1) / N P b
      bytes, half in and half out, about 4 P b whatever N is (rounded down to whole bytes).
    """
    _check_positive(n_peers=n_peers, n_params=n_params, dtype_bytes=dtype_bytes)
    if mode == "single":
        return 2 * (n_peers - 1) * n_params * dtype_bytes
    if mode == "sharded":
        return 4 * (n_peers - 1) * n_params * dtype_bytes // n_peers
    if mode == "secagg":
        return (n_peers - 1) * n_params * (SECAGG_ENTRY_BYTES + dtype_bytes)
    raise ValueError(f"mode must be one of {', '.join(MERGE_MODES)}; got {mode!r}")


def bound_seconds(n_bytes: int, bandwidth: Bandwidth) -> float:
    """Lower bound in seconds for moving ``n_bytes`` at the measured bandwidth."""
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be >= 0; got {n_bytes}")
    if not bandwidth.bytes_per_second > 0:
        raise ValueError(f"bandwidth.bytes_per_second must be > 0; got {bandwidth.bytes_per_second}")
    return n_bytes / bandwidth.bytes_per_second


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def copy_size_for(n_bytes_touched: int) -> int:
    """Buffer size for the copy that bounds a kernel touching ``n_bytes_touched`` bytes: half of them
    (a copy reads one buffer and writes another), clamped to 8 MiB..512 MiB. Small kernels run from the
    caches, so their bound must come from a copy of the same footprint; 512 MiB already dwarfs them."""
    return min(max(n_bytes_touched // 2, 8 << 20), 512 << 20)


def measure_copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 10) -> Bandwidth:
    """Best memory copy bandwidth of an ``n_bytes`` buffer, counted as bytes read + written per second.

    Tries a single-threaded NumPy copy and a multi-threaded torch copy into preallocated, touched
    destinations (so page faults are not timed) and returns the faster: the bound must be the best the
    machine does. Best of ``repeats`` because these machines are shared and noisy.
    """
    n = n_bytes // FLOAT32_BYTES
    src = np.ones(n, dtype=np.float32)
    dst = np.full(n, 2.0, dtype=np.float32)
    best_np = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    results = {"numpy copy": 2 * n * FLOAT32_BYTES / best_np}
    try:
        import torch

        tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
        best_t = min(_timed(lambda: tdst.copy_(tsrc)) for _ in range(repeats))
        results[f"torch copy ({torch.get_num_threads()} threads)"] = 2 * n * FLOAT32_BYTES / best_t
    except ImportError:  # the Flower venv has no torch; NumPy's copy is its bound
        pass
    how, bps = max(results.items(), key=lambda kv: kv[1])
    return Bandwidth(bytes_per_second=bps, how=f"{how} of {n_bytes >> 20} MiB, best of {repeats}")


def _timed(fn: object) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_tls_loopback_bandwidth(
    n_bytes: int = 128 << 20, repeats: int = 3, chunk: int = 4 << 20
) -> Bandwidth:
    """Best of ``repeats`` TLS 1.3 streams over 127.0.0.1 (payload bytes per second, sender to receiver,
    Python's ssl module on both ends): what the SL weight exchange pays per byte at best."""
    best = max((_tls_stream_once(n_bytes, chunk) for _ in range(repeats)), key=lambda b: b.bytes_per_second)
    return Bandwidth(best.bytes_per_second, f"{best.how}, best of {repeats}")


def _tls_stream_once(n_bytes: int, chunk: int) -> Bandwidth:
    """One timed TLS 1.3 stream of ``n_bytes`` over 127.0.0.1 with a throwaway certificate."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        cert, key = _self_signed(Path(tmp))
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(30)
        port = listener.getsockname()[1]
        received: list[float] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                got = 0
                buf = bytearray(chunk)
                while got < n_bytes:
                    k = tls.recv_into(buf)
                    if k == 0:
                        break
                    got += k
                received.append(time.perf_counter())
                tls.sendall(b"k")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        payload = memoryview(np.random.default_rng(0).bytes(chunk))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            t0 = time.perf_counter()
            sent = 0
            while sent < n_bytes:
                tls.sendall(payload)
                sent += chunk
            if tls.recv(1) != b"k":
                raise RuntimeError("TLS loopback bandwidth: receiver did not acknowledge the transfer")
        thread.join(timeout=30)
        listener.close()
        if not received:
            raise RuntimeError("TLS loopback bandwidth: receiver thread got no data within 30 s")
        seconds = received[0] - t0
    return Bandwidth(
        bytes_per_second=sent / seconds, how=f"TLS 1.3 over 127.0.0.1, {sent >> 20} MiB, 1 stream"
    )


def _self_signed(folder: Path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)
