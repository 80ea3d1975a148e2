"""What an SL node serves to its peers, by kind (pure; shared by the peer server, client and metrics).

``input`` / ``merged``: a round input or merged model (safetensors). For the sharded merge
(``swarmlearning.sl.modes.sharded``) also ``manifest`` (an input's chunk manifest, JSON),
``input-chunk-<i>`` / ``merged-chunk-<i>`` for chunk ``i`` of :data:`CHUNKS` (safetensors of pieces),
and ``input-chunks-<a>-<b>`` / ``merged-chunks-<a>-<b>``: chunks a .. b-1 in one response (one request
per peer and slice instead of one per chunk), framed by :func:`frame_chunks`. For secure aggregation
(``swarmlearning.sl.modes.secagg``) ``sa-<step>-<attempt>``: one step's message of one round attempt
(:data:`SECAGG_STEPS`; JSON, or safetensors for the masked input).
"""

from __future__ import annotations

CHUNKS = 64
"""Chunks per model in the sharded merge: at most this many slices (and slice leaders) per round."""
SECAGG_STEPS = ("keys", "keyset", "shares", "relay", "masked", "unmask", "reveal")
"""Messages of a securely aggregated round, in protocol order: a participant's signed public keys, the
leader's set of them, a participant's encrypted key shares, the leader's relay of them, a masked input,
the leader's survivor list, a participant's revealed shares."""
SECAGG_FAMILIES = tuple(f"sa-{step}" for step in SECAGG_STEPS)
MAX_ATTEMPT_DIGITS = 4
FAMILIES = ("input", "merged", "manifest", "input-chunk", "merged-chunk", *SECAGG_FAMILIES)
"""Kinds with the chunk index dropped: the label of the bytes-moved metrics."""
_CHUNKED = ("input-chunk", "merged-chunk")


def secagg_kind(step: str, attempt: int) -> str:
    """The kind of secure-aggregation message ``step`` of round attempt ``attempt``."""
    if step not in SECAGG_STEPS or not 0 <= attempt < 10**MAX_ATTEMPT_DIGITS:
        raise ValueError(f"secagg kind {step!r} {attempt}: step one of {SECAGG_STEPS}, attempt 0..9999")
    return f"sa-{step}-{attempt}"


def chunk_kind(family: str, index: int) -> str:
    if family not in _CHUNKED or not 0 <= index < CHUNKS:
        raise ValueError(f"chunk kind {family!r} {index}: family one of {_CHUNKED}, index 0..{CHUNKS - 1}")
    return f"{family}-{index}"


def chunk_range_kind(family: str, first: int, stop: int) -> str:
    """The kind serving chunks ``first`` .. ``stop - 1`` of ``family`` in one response."""
    if family not in _CHUNKED or not 0 <= first < stop <= CHUNKS:
        raise ValueError(f"chunk range {family!r} {first}..{stop}: need 0 <= first < stop <= {CHUNKS}")
    return f"{family}s-{first}-{stop}"


def chunk_range(kind: str) -> tuple[str, int, int] | None:
    """(family, first, stop) of a chunk range kind, None for any other kind."""
    head, _, rest = kind.partition("s-")
    first, _, stop = rest.partition("-")
    if head not in _CHUNKED or not _index(first) or not _index(stop):
        return None
    a, b = int(first), int(stop)
    return (head, a, b) if 0 <= a < b <= CHUNKS else None


def _index(text: str, digits: int = 2) -> bool:
    return text.isdigit() and len(text) <= digits and str(int(text)) == text


def frame_chunks(chunks: list[bytes]) -> bytes:
    """Chunks as one body: per chunk its length (8 bytes, big-endian) and its bytes."""
    return b"".join(len(c).to_bytes(8, "big") + c for c in chunks)


def split_chunks(body: bytes, count: int) -> list[bytes]:
    """Inverse of :func:`frame_chunks`; ValueError when ``body`` is not ``count`` framed chunks."""
    out, pos = [], 0
    for i in range(count):
        if pos + 8 > len(body):
            raise ValueError(f"chunk {i} of {count}: body ends after {len(body)} bytes")
        n = int.from_bytes(body[pos : pos + 8], "big")
        pos += 8
        if pos + n > len(body):
            raise ValueError(f"chunk {i} of {count}: length {n} runs past the body's end")
        out.append(body[pos : pos + n])
        pos += n
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes after the {count} chunks")
    return out


def family_of(kind: str) -> str | None:
    """The family of a served kind, or None when ``kind`` is not one (e.g. ``input-chunk-64``)."""
    if kind in ("input", "merged", "manifest"):
        return kind
    if (r := chunk_range(kind)) is not None:
        return r[0]
    family, _, index = kind.rpartition("-")
    if family in SECAGG_FAMILIES and _index(index, MAX_ATTEMPT_DIGITS):
        return family
    if (
        family in _CHUNKED
        and index.isdigit()
        and len(index) <= 2
        and int(index) < CHUNKS
        and str(int(index)) == index
    ):
        return family
    return None


def is_chunk(kind: str) -> bool:
    return family_of(kind) in _CHUNKED
