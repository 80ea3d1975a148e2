"""Cutting a model into chunks and slices for the sharded merge (pure logic, no I/O).

The model's tensors, in name order, are laid end to end as one range of bytes (each tensor flattened
row-major). Its :data:`CHUNKS` chunks are equal byte ranges of that, rounded to element boundaries: a
chunk holds, for every tensor it overlaps, a 1-D piece of the flattened tensor under the tensor's name.
Slice ``k`` of ``S`` covers chunks ``k*C//S`` to ``(k+1)*C//S - 1``, so slices differ by at most one
chunk (1/64 of the model).

A node declares, with its ready mark, the digest of its input's :class:`Manifest`: the layout (digest of
every tensor's name, shape and dtype) and each chunk's digest. A slice leader fetches the manifest, then
only its slice's chunks, and checks each against the manifest: every byte it merges is pinned by the
ledger, and it never receives anyone's whole model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from swarmlearning.sl.kinds import CHUNKS
from swarmlearning.weights_format import WeightsError

MANIFEST_FORMAT = 1
_MAX_MANIFEST_BYTES = 64 * 1024
_DIGEST_CHARS = frozenset("0123456789abcdef")

Layout = tuple[tuple[str, tuple[int, ...], str], ...]
"""Per tensor, in name order: name, shape, dtype (``str(torch.dtype)``)."""


@dataclass(frozen=True)
class Piece:
    """Elements ``start`` .. ``stop - 1`` of tensor ``name`` flattened."""

    name: str
    start: int
    stop: int


Plan = tuple[tuple[Piece, ...], ...]
"""Per chunk, its pieces in name order."""


def layout_of(state: Mapping[str, torch.Tensor]) -> Layout:
    return tuple((name, tuple(t.shape), str(t.dtype)) for name, t in sorted(state.items()))


def layout_digest(layout: Layout) -> str:
    text = json.dumps([[n, list(s), d] for n, s, d in layout], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype.removeprefix("torch."))).element_size()


def chunk_plan(layout: Layout, chunks: int = CHUNKS) -> Plan:
    """The pieces of each of ``chunks`` (>= 1) chunks; see the module docstring."""
    if chunks < 1:
        raise ValueError(f"chunks={chunks}: must be >= 1")
    sizes = [(name, _numel(shape), _itemsize(dtype)) for name, shape, dtype in layout]
    total = sum(n * z for _, n, z in sizes)
    bounds = [c * total // chunks for c in range(chunks + 1)]
    plan: list[list[Piece]] = [[] for _ in range(chunks)]
    offset = 0
    for name, n, z in sizes:
        for c in range(chunks):
            # Element i is in chunk c when its first byte offset + i*z lies in [bounds[c], bounds[c+1]).
            start = min(n, max(0, -(-(bounds[c] - offset) // z)))
            stop = min(n, max(0, -(-(bounds[c + 1] - offset) // z)))
            if stop > start:
                plan[c].append(Piece(name, start, stop))
        offset += n * z
    return tuple(tuple(p) for p in plan)


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def cut(state: Mapping[str, torch.Tensor], plan: Plan) -> list[dict[str, torch.Tensor]]:
    """Per chunk, its pieces of ``state`` (views of the flattened tensors)."""
    flat = {name: t.detach().reshape(-1) for name, t in state.items()}
    return [{p.name: flat[p.name][p.start : p.stop] for p in pieces} for pieces in plan]


def assemble(
    layout: Layout, plan: Plan, chunk_states: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The state_dict of ``layout`` from every chunk's pieces (in chunk order); raises WeightsError
    when a chunk lacks a piece of the plan or has one of another size or dtype."""
    if len(chunk_states) != len(plan):
        raise WeightsError(f"{len(chunk_states)} chunks given for a plan of {len(plan)}")
    out = {
        name: torch.empty(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
        for name, shape, dtype in layout
    }
    flat = {name: t.view(-1) for name, t in out.items()}
    for c, (pieces, got) in enumerate(zip(plan, chunk_states, strict=True)):
        if set(got) != {p.name for p in pieces}:
            raise WeightsError(f"chunk {c} holds other tensors than its plan")
        for p in pieces:
            piece, target = got[p.name], flat[p.name]
            if piece.dim() != 1 or piece.numel() != p.stop - p.start or piece.dtype != target.dtype:
                raise WeightsError(
                    f"chunk {c}: piece of {p.name!r} is {piece.dtype} {tuple(piece.shape)}, expected "
                    f"{target.dtype} ({p.stop - p.start},)"
                )
            target[p.start : p.stop] = piece
    return out


def slice_chunks(slice_no: int, slices: int, chunks: int = CHUNKS) -> range:
    """Chunk indices of slice ``slice_no`` (0 .. slices-1) of ``slices`` (1 .. chunks)."""
    if not 1 <= slices <= chunks or not 0 <= slice_no < slices:
        raise ValueError(f"slice {slice_no} of {slices}: need 0 <= slice < slices <= {chunks}")
    return range(slice_no * chunks // slices, (slice_no + 1) * chunks // slices)


@dataclass(frozen=True)
class Manifest:
    """A round input's layout digest and its chunks' digests (sha256 hex of their safetensors)."""

    layout: str
    chunks: tuple[str, ...]

    def to_bytes(self) -> bytes:
        body = {"format": MANIFEST_FORMAT, "layout": self.layout, "chunks": list(self.chunks)}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, chunks: int = CHUNKS) -> Manifest:
        """Parse a peer's manifest; raises WeightsError naming what is wrong."""
        if len(data) > _MAX_MANIFEST_BYTES:
            raise WeightsError(f"manifest of {len(data)} bytes exceeds {_MAX_MANIFEST_BYTES}")
        try:
            d = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise WeightsError(f"manifest is not JSON: {str(exc)[:120]}") from exc
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise WeightsError(f"manifest is not a format-{MANIFEST_FORMAT} JSON object")
        layout, digests = d.get("layout"), d.get("chunks")
        if not _is_digest(layout):
            raise WeightsError("manifest layout is not a sha256 hex digest")
        if not isinstance(digests, list) or len(digests) != chunks or not all(map(_is_digest, digests)):
            raise WeightsError(f"manifest chunks must be {chunks} sha256 hex digests")
        assert isinstance(layout, str)
        return cls(layout, tuple(digests))


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _DIGEST_CHARS
