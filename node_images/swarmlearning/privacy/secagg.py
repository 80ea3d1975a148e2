"""Secure aggregation of a weighted mean: the party that merges learns only the sum of the inputs.

A SecAgg-style protocol (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", semi-honest variant; cf. Flower's SecAgg+), pure logic: the round protocol carries the
messages, this module makes and checks them. Phases, for the sorted participants of one round attempt
(``RoundSetup``; ``context`` names contract, round and attempt so nothing carries over between them):

1. every participant ``u`` makes ``RoundKeys.generate()`` and publishes ``keys.public``;
2. ``Participant.share_keys`` picks a self-mask seed ``b_u`` and sends each peer ``v``, encrypted for
   ``v`` only, ``v``'s Shamir share of ``b_u`` and of ``u``'s mask private key; the leader relays, and
   the set of nodes that shared is U2 (``sharers``);
3. ``Participant.mask`` encodes ``Σ weight × tensor`` in the ring Z/2^64 (fixed point, ``FRACTION_BITS``)
   plus the weight itself (entry ``WEIGHT_ENTRY``), and adds ``PRG(b_u) + Σ_v ±PRG(s_uv)``; the pairwise
   masks cancel in the sum over everyone in U2;
4. the leader names the survivors S (masked input received) and the dropped D = U2 − S;
   ``Participant.reveal`` hands over its share of ``b_u`` for ``u`` in S and of ``u``'s mask key for
   ``u`` in D, never both for one ``u`` (both would unmask ``u``'s input);
5. ``unmask`` rebuilds those secrets from ``threshold`` reveals, removes the self masks and the dropped
   nodes' pairwise masks, and returns the sum of the survivors' weighted inputs and of their weights;
   ``weighted_mean`` divides and casts back to each tensor's dtype.

Each participant has two X25519 key pairs (its public key is both, 64 bytes): one for the pairwise masks,
whose private key is secret-shared, and one for encrypting the shares, which never leaves the node.
With a single pair, revealing a dropped node's key would also open every share addressed to it, and with
enough dropped nodes the leader could rebuild a survivor's mask key as well (the reason Bonawitz et al.
use two).

What this does not cover: a leader that sends different survivor lists to different participants is
only held back by the threshold (``default_threshold``); there are no signatures on the messages, so the
transport (mTLS between SL nodes) must authenticate who sent what. Inputs are hidden, the sum is not: the
leader, or any group that knows all inputs but one, learns the last one from the sum.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

FRACTION_BITS = 24
"""Fixed-point fraction bits: a weighted value ``w·x`` is stored as ``round(w·x·2^24)`` in the ring
Z/2^64 read as signed. Resolution 2^-24 ≈ 6e-8; the sum over all participants must stay within
±2^(63−24) = ±2^39 ≈ ±5.5e11, so each of ``n`` participants may send ``|w·x| < 2^39 / n`` (checked by
``mask``). The mean's absolute error is at most ``|S| · 2^-25 / Σw``; since the mean does not change
when every weight is scaled, weights of order 1..1e6 keep both precision and range."""
SCALE = float(1 << FRACTION_BITS)
WEIGHT_ENTRY = "__secagg_weight__"
"""Name of the extra one-element entry of a masked input that carries the sender's weight."""
PUBLIC_KEY_BYTES = 64
"""A participant's public key: raw X25519 mask key (32 bytes) then raw X25519 share-encryption key."""
PRIME = 2**521 - 1
"""Shamir's field: a Mersenne prime above every 32-byte secret."""
SHARE_BYTES = 66
"""One Shamir share: a field element, big-endian (521 bits round up to 66 bytes)."""

_KEY_BYTES = 32
_GCM_NONCE_BYTES = 12
_PAYLOAD_BYTES = 2 * SHARE_BYTES  # share of the mask key, then share of b_u
_CHUNK = 1 << 16  # ring entries per PRG step (512 KiB): the chunk stays in cache across its streams
_MAX_ENTRIES = 1 << 35  # ChaCha20's 32-bit block counter: 2^32 blocks of 64 bytes per (seed, tensor)
_LABEL = b"swarm-secagg/v1/"

Kind = Literal["self-mask seed", "mask key"]


class SecAggError(RuntimeError):
    """A protocol violation, a bad ciphertext or share, or an input of the wrong layout; names the node."""


class NotEnoughSurvivors(SecAggError):
    """Fewer than ``threshold`` participants took part in a phase; the message says how many and who."""


def default_threshold(n: int) -> int:
    """Shares needed to rebuild a secret among ``n`` participants: ``max(2, ceil(2n/3))``.

    Above n/2 so a leader cannot collect a node's self-mask seed and its mask key from two disjoint
    groups of honest participants (each reveals one kind per node); at 2n/3 that still holds with up to
    n/3 participants colluding with the leader, and up to n/3 may drop out after sharing. At least 2,
    since one share is the secret itself. Raises SecAggError unless ``n >= 2``.
    """
    if not isinstance(n, int) or n < 2:
        raise SecAggError(f"n (participants) must be an integer >= 2 for secure aggregation, got {n!r}")
    return max(2, math.ceil(2 * n / 3))


def check_threshold(threshold: int, n: int) -> None:
    """Raise SecAggError unless ``2 <= threshold <= n``."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 2 <= threshold <= n:
        raise SecAggError(f"threshold must be an integer in 2..{n} (n = {n} participants), got {threshold!r}")


@dataclass(frozen=True)
class RoundSetup:
    """What every party of one round attempt agrees on before phase 1.

    ``participants`` sorted and unique (their 1-based index is their Shamir x-coordinate), ``threshold``
    in 2..n (see ``default_threshold``), ``context`` bytes naming contract, round and attempt (e.g.
    ``b"c1|7|0"``), bound into every key derivation and ciphertext. Use ``RoundSetup.of`` to sort and
    pick the default threshold.
    """

    participants: tuple[str, ...]
    threshold: int
    context: bytes

    def __post_init__(self) -> None:
        names = self.participants
        if not isinstance(names, tuple) or not all(isinstance(p, str) and p for p in names):
            raise SecAggError(f"participants must be a tuple of non-empty node names, got {names!r}")
        if list(names) != sorted(set(names)):
            raise SecAggError(f"participants must be sorted and unique, got {list(names)}")
        if len(names) < 2:
            raise SecAggError(f"participants must name at least 2 nodes, got {list(names)}")
        check_threshold(self.threshold, len(names))
        if not isinstance(self.context, bytes) or not self.context:
            raise SecAggError(
                f"context must be non-empty bytes naming contract, round, attempt: {self.context!r}"
            )

    @classmethod
    def of(cls, participants: Iterable[str], context: bytes, threshold: int | None = None) -> RoundSetup:
        """Sorted participants; ``threshold`` defaults to ``default_threshold(len(participants))``."""
        names = tuple(sorted(participants))
        return cls(names, default_threshold(len(names)) if threshold is None else threshold, context)

    def x_of(self, name: str) -> int:
        """The Shamir x-coordinate of ``name``: its 1-based index among the participants."""
        try:
            return self.participants.index(name) + 1
        except ValueError:
            raise SecAggError(
                f"{name!r} is not a participant of this round ({', '.join(self.participants)})"
            ) from None


@dataclass(frozen=True)
class RoundKeys:
    """One participant's ephemeral X25519 private keys for one round attempt (raw 32 bytes each)."""

    mask_private: bytes = field(repr=False)
    share_private: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("mask_private", "share_private"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != _KEY_BYTES:
                raise SecAggError(f"RoundKeys.{name} must be {_KEY_BYTES} raw bytes")

    @classmethod
    def generate(cls) -> RoundKeys:
        """Fresh keys; make new ones for every round attempt, never reuse them."""
        return cls(
            X25519PrivateKey.generate().private_bytes_raw(), X25519PrivateKey.generate().private_bytes_raw()
        )

    @property
    def public(self) -> bytes:
        """The 64 bytes to publish: the mask public key then the share-encryption public key."""
        return _public_of(self.mask_private) + _public_of(self.share_private)


@dataclass(frozen=True)
class TensorSpec:
    """Shape and numpy dtype name (``"float32"``, ``"int64"``, ...) of one tensor of the model."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if np.dtype(self.dtype).kind not in "fiub":
            raise SecAggError(
                f"dtype {self.dtype!r} cannot be aggregated: use a float, integer or bool dtype"
            )


def layout_of(tensors: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, TensorSpec]:
    """The layout ``unmask`` checks masked inputs against, read from one example input."""
    return {name: TensorSpec(tuple(int(d) for d in a.shape), a.dtype.name) for name, a in tensors.items()}


@dataclass(frozen=True)
class _Public:
    mask: X25519PublicKey
    share: X25519PublicKey
    raw: bytes


class Participant:
    """One participant's side of one round attempt; keeps the state that makes it refuse to over-reveal.

    Call ``share_keys``, then ``mask`` (once), then ``reveal`` (as often as the leader asks, never both
    secrets of one node).
    """

    def __init__(self, me: str, setup: RoundSetup, keys: RoundKeys) -> None:
        setup.x_of(me)
        self.me = me
        self.setup = setup
        self._keys = keys
        self._public: dict[str, _Public] | None = None
        self._shared: dict[str, bytes] | None = None
        self._self_seed = b""
        self._sharers: frozenset[str] | None = None
        self._revealed: dict[str, Kind] = {}

    def share_keys(self, public_keys: Mapping[str, bytes]) -> dict[str, bytes]:
        """Phase 2: ``{v: ciphertext for v}`` for every ``v`` that published a key (``me`` included).

        ``public_keys`` maps participants to their ``RoundKeys.public``; at least ``threshold`` of them.
        Called again with the same keys it returns the same ciphertexts (a retried relay).
        """
        pks = _check_public_keys(self.setup, public_keys)
        if self._shared is not None:
            assert self._public is not None
            if {n: p.raw for n, p in pks.items()} != {n: p.raw for n, p in self._public.items()}:
                raise SecAggError(f"{self.me}: share_keys called again with other public keys")
            return dict(self._shared)
        own = pks.get(self.me)
        if own is None or own.raw != self._keys.public:
            raise SecAggError(f"{self.me}: the public keys must include {self.me}'s own RoundKeys.public")
        _need(self.setup, pks, "published a public key")
        self._self_seed = secrets.token_bytes(_KEY_BYTES)
        xs = [self.setup.x_of(v) for v in pks]
        key_shares = _split(self._keys.mask_private, self.setup.threshold, xs)
        seed_shares = _split(self._self_seed, self.setup.threshold, xs)
        out: dict[str, bytes] = {}
        for v, pk in pks.items():
            x = self.setup.x_of(v)
            aead = AESGCM(self._channel_key(v, pk))
            nonce = secrets.token_bytes(_GCM_NONCE_BYTES)
            out[v] = nonce + aead.encrypt(nonce, key_shares[x] + seed_shares[x], self._aad(self.me, v))
        self._public, self._shared = pks, out
        return dict(out)

    def mask(
        self, tensors: Mapping[str, npt.NDArray[np.generic]], weight: float, sharers: Collection[str]
    ) -> dict[str, npt.NDArray[np.uint64]]:
        """Phase 3: the masked encoding of ``weight × tensors`` plus ``WEIGHT_ENTRY``, as uint64 arrays.

        ``weight`` >= 0 (e.g. nodeWeightage × samples); ``sharers`` is U2, the nodes whose ciphertexts the
        leader relayed (``me`` among them, at least ``threshold``). Float, integer and bool tensors are
        encoded as float64 × weight in fixed point; each keeps its shape. Only once per round attempt:
        two inputs under the same masks would give away their difference.
        """
        if self._public is None:
            raise SecAggError(f"{self.me}: mask before share_keys: there is no self-mask seed yet")
        if self._sharers is not None:
            raise SecAggError(f"{self.me}: mask called twice in one round attempt; make new RoundKeys")
        u2 = frozenset(sharers)
        unknown = sorted(u2 - self._public.keys())
        if unknown:
            raise SecAggError(f"{self.me}: sharers {unknown} never published a public key")
        if self.me not in u2:
            raise SecAggError(
                f"{self.me}: not among the sharers {sorted(u2)}, so its input cannot be unmasked"
            )
        _need(self.setup, u2, "shared keys")
        encoded = encode(tensors, weight, len(self.setup.participants))
        streams: list[tuple[bytes, int]] = [(self._self_seed, 1)]
        for v in sorted(u2 - {self.me}):
            seed = _pair_seed(self.setup.context, self._keys.mask_private, self.me, v, self._public[v].mask)
            streams.append((seed, 1 if self.me < v else -1))
        for name, arr in encoded.items():
            _add_streams(arr.reshape(-1), name, streams)
        self._sharers = u2
        return encoded

    def reveal(
        self, received: Mapping[str, bytes], survivors: Collection[str], dropped: Collection[str]
    ) -> dict[str, bytes]:
        """Phase 4: ``{u: share}``, the share of ``b_u`` for ``u`` in ``survivors``, of ``u``'s mask key
        for ``u`` in ``dropped``.

        ``received`` maps each sharer ``u`` to the ciphertext ``u`` addressed to ``me``. Refuses (a
        SecAggError) when survivors and dropped overlap, do not together make the sharers ``me`` masked
        with, leave out ``me``, number fewer than ``threshold`` survivors, or ask for the other secret of
        a node than an earlier call did.
        """
        s, d = frozenset(survivors), frozenset(dropped)
        both = sorted(s & d)
        if both:
            raise SecAggError(f"{self.me}: refusing to reveal: {both} listed as both survivor and dropped")
        if self._sharers is None:
            raise SecAggError(f"{self.me}: refusing to reveal before its own input was masked")
        if self.me not in s:
            raise SecAggError(f"{self.me}: refusing to reveal: not listed among the survivors {sorted(s)}")
        if s | d != self._sharers:
            raise SecAggError(
                f"{self.me}: refusing to reveal: survivors + dropped {sorted(s | d)} differ from the "
                f"sharers it masked with {sorted(self._sharers)}"
            )
        _need(self.setup, s, "survived (sent a masked input)")
        seed: Kind = "self-mask seed"
        key: Kind = "mask key"
        wanted = dict.fromkeys(s, seed) | dict.fromkeys(d, key)
        conflicts = sorted(u for u, kind in wanted.items() if self._revealed.get(u, kind) != kind)
        if conflicts:
            raise SecAggError(
                f"{self.me}: refusing to reveal for {conflicts}: the other secret of each was revealed "
                "before, and both together would unmask its input"
            )
        out: dict[str, bytes] = {}
        for u, kind in sorted(wanted.items()):
            ct = received.get(u)
            if ct is None:
                raise SecAggError(f"{self.me}: no ciphertext received from sharer {u}")
            payload = self._open(u, ct)
            out[u] = payload[SHARE_BYTES:] if kind == "self-mask seed" else payload[:SHARE_BYTES]
        self._revealed.update(wanted)
        return out

    def _channel_key(self, peer: str, pk: _Public) -> bytes:
        shared = _exchange(self._keys.share_private, pk.share, peer)
        return _kdf(b"share-encryption", shared, self.setup.context, *sorted((self.me, peer)))

    def _aad(self, sender: str, recipient: str) -> bytes:
        return _frame(_LABEL + b"shares", self.setup.context, sender.encode(), recipient.encode())

    def _open(self, sender: str, ct: bytes) -> bytes:
        assert self._public is not None
        pk = self._public.get(sender)
        if pk is None:
            raise SecAggError(f"{self.me}: ciphertext from {sender}, which published no public key")
        if not isinstance(ct, bytes) or len(ct) != _GCM_NONCE_BYTES + _PAYLOAD_BYTES + 16:
            raise SecAggError(f"{self.me}: the ciphertext from {sender} has the wrong length")
        try:
            plain = AESGCM(self._channel_key(sender, pk)).decrypt(
                ct[:_GCM_NONCE_BYTES], ct[_GCM_NONCE_BYTES:], self._aad(sender, self.me)
            )
        except InvalidTag:
            raise SecAggError(
                f"{self.me}: the ciphertext from {sender} does not authenticate (tampered, or not "
                f"addressed to {self.me} in this round attempt)"
            ) from None
        return plain


def encode(
    tensors: Mapping[str, npt.NDArray[np.generic]], weight: float, n: int
) -> dict[str, npt.NDArray[np.uint64]]:
    """``weight × tensors`` and ``WEIGHT_ENTRY`` in fixed point (uint64, shapes kept), without masks.

    ``n`` is the number of participants whose inputs may be summed: each ``|weight × value|`` must stay
    below ``2^(63 − FRACTION_BITS) / n`` so the sum cannot wrap around. Raises SecAggError naming the
    tensor for non-finite or out-of-range values, a dtype that is not float/integer/bool, or the
    reserved name.
    """
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise SecAggError(f"weight must be a finite number >= 0, got {weight!r}")
    bound = 2.0**63 / n
    out: dict[str, npt.NDArray[np.uint64]] = {WEIGHT_ENTRY: _fixed(np.array([w]), 1.0, bound, "the weight")}
    for name, tensor in tensors.items():
        if name == WEIGHT_ENTRY:
            raise SecAggError(f"tensor name {WEIGHT_ENTRY!r} is reserved for the weight")
        a = np.asarray(tensor)
        if a.dtype.kind not in "fiub":
            raise SecAggError(f"tensor {name!r} has dtype {a.dtype}: use a float, integer or bool dtype")
        if a.size > _MAX_ENTRIES:
            raise SecAggError(f"tensor {name!r} has {a.size} entries, over the limit of {_MAX_ENTRIES}")
        out[name] = _fixed(a, w, bound, f"tensor {name!r}")
    return out


def unmask(
    setup: RoundSetup,
    public_keys: Mapping[str, bytes],
    sharers: Collection[str],
    masked: Mapping[str, Mapping[str, npt.NDArray[np.generic]]],
    reveals: Mapping[str, Mapping[str, bytes]],
    layout: Mapping[str, TensorSpec],
) -> tuple[dict[str, npt.NDArray[np.float64]], float]:
    """Phase 5 (the leader): the sum of the survivors' ``weight × tensors`` (float64) and of their weights.

    ``masked`` maps each survivor (S) to its masked input, checked against ``layout``; ``sharers`` is U2
    and D = U2 − S; ``reveals`` maps each revealing participant to its ``Participant.reveal`` answer.
    Raises NotEnoughSurvivors when fewer than ``threshold`` nodes survived or revealed a share of some
    secret, and SecAggError naming the node for a wrong layout, a malformed share, or a rebuilt mask key
    that does not match its public key.
    """
    pks = _check_public_keys(setup, public_keys)
    u2 = frozenset(sharers)
    unknown = sorted(u2 - pks.keys())
    if unknown:
        raise SecAggError(f"sharers {unknown} never published a public key")
    s = frozenset(masked)
    outsiders = sorted(s - u2)
    if outsiders:
        raise SecAggError(f"masked inputs from {outsiders}, which are not among the sharers {sorted(u2)}")
    d = u2 - s
    _need(setup, s, "sent a masked input")
    for reveal_by in reveals:
        setup.x_of(reveal_by)
    shapes = {name: spec.shape for name, spec in layout.items()} | {WEIGHT_ENTRY: (1,)}
    for node in sorted(s):
        _check_layout(node, masked[node], shapes)

    acc = {name: np.zeros(shape, dtype=np.uint64) for name, shape in shapes.items()}
    for node in sorted(s):
        for name, a in masked[node].items():
            acc[name] += a.view(np.uint64)  # wraps mod 2^64, as intended
    streams: list[tuple[bytes, int]] = []
    for u in sorted(s):
        streams.append((_rebuild(setup, u, reveals, "self-mask seed"), -1))
    for u in sorted(d):
        key = _rebuild(setup, u, reveals, "mask key")
        if _public_of(key) != pks[u].raw[:_KEY_BYTES]:
            raise SecAggError(
                f"the mask key rebuilt for dropped {u} does not match its public key: a share is wrong"
            )
        for v in sorted(s):
            # v added +PRG(s_vu) when v < u; take off what v added
            streams.append((_pair_seed(setup.context, key, u, v, pks[v].mask), -1 if v < u else 1))
    for name, a in acc.items():
        _add_streams(a.reshape(-1), name, streams)
    weight = float(acc.pop(WEIGHT_ENTRY).view(np.int64)[0]) / SCALE
    sums = {name: a.view(np.int64).astype(np.float64) / SCALE for name, a in acc.items()}
    return sums, weight


def weighted_mean(
    sums: Mapping[str, npt.NDArray[np.float64]], weight: float, layout: Mapping[str, TensorSpec]
) -> dict[str, npt.NDArray[np.generic]]:
    """``sums / weight`` in each tensor's dtype: floats cast, integers rounded, bools true at >= 0.5."""
    if not weight > 0:
        raise SecAggError(f"the survivors' weights sum to {weight}: there is no mean (need a weight > 0)")
    out: dict[str, npt.NDArray[np.generic]] = {}
    for name, spec in layout.items():
        mean = sums[name] / weight
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            out[name] = mean.astype(dtype)
        elif dtype.kind == "b":
            out[name] = mean >= 0.5
        else:
            info = np.iinfo(dtype)
            out[name] = np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return out


def masked_to_safetensors(masked: Mapping[str, npt.NDArray[np.uint64]]) -> bytes:
    """A masked input as safetensors bytes (dtype U64), e.g. to serve it to the leader."""
    return bytes(_st_save(dict(masked)))


def masked_from_safetensors(data: bytes, node: str) -> dict[str, npt.NDArray[np.uint64]]:
    """Parse ``node``'s masked input; SecAggError naming ``node`` when it is not U64 safetensors."""
    try:
        loaded = _st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise SecAggError(f"the masked input of {node} is not safetensors: {exc}") from None
    for name, a in loaded.items():
        if a.dtype != np.uint64:
            raise SecAggError(
                f"the masked input of {node} has tensor {name!r} of dtype {a.dtype}, not uint64"
            )
    return loaded


def bytes_map_to_json(values: Mapping[str, bytes]) -> dict[str, str]:
    """``{name: bytes}`` (public keys, ciphertexts, reveals) as JSON-able ``{name: base64}``."""
    return {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}


def bytes_map_from_json(obj: object, what: str) -> dict[str, bytes]:
    """The inverse of ``bytes_map_to_json``; SecAggError naming ``what`` (e.g. "reveal of node-2")."""
    if not isinstance(obj, dict):
        raise SecAggError(f"{what} must be a JSON object of base64 strings, got {type(obj).__name__}")
    out: dict[str, bytes] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SecAggError(f"{what}: entry {k!r} must map a name to a base64 string")
        try:
            out[k] = base64.b64decode(v, validate=True)
        except binascii.Error:
            raise SecAggError(f"{what}: entry {k!r} is not valid base64") from None
    return out


# --- building blocks -----------------------------------------------------------------------------------


def _frame(*parts: bytes) -> bytes:
    """Length-prefixed concatenation, so no two different part lists give the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _kdf(label: bytes, secret: bytes, context: bytes, a: str, b: str) -> bytes:
    info = _frame(_LABEL + label, context, a.encode(), b.encode())
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(secret)


def _public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _exchange(private: bytes, public: X25519PublicKey, peer: str) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(public)
    except ValueError:  # a low-order point gives the all-zero secret
        raise SecAggError(f"the public key of {peer} is not usable for X25519 (low-order point)") from None


def _pair_seed(context: bytes, private: bytes, me: str, peer: str, peer_public: X25519PublicKey) -> bytes:
    """s_uv: the same 32 bytes for u and v (ECDH is symmetric, the names enter in sorted order)."""
    return _kdf(b"pairwise-mask", _exchange(private, peer_public, peer), context, *sorted((me, peer)))


def _check_public_keys(setup: RoundSetup, public_keys: Mapping[str, bytes]) -> dict[str, _Public]:
    out: dict[str, _Public] = {}
    for name in sorted(public_keys):
        setup.x_of(name)
        raw = public_keys[name]
        if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
            raise SecAggError(f"the public key of {name} must be {PUBLIC_KEY_BYTES} bytes (RoundKeys.public)")
        out[name] = _Public(
            X25519PublicKey.from_public_bytes(raw[:_KEY_BYTES]),
            X25519PublicKey.from_public_bytes(raw[_KEY_BYTES:]),
            raw,
        )
    return out


def _need(setup: RoundSetup, nodes: Collection[str], did: str) -> None:
    if len(nodes) < setup.threshold:
        raise NotEnoughSurvivors(
            f"only {len(nodes)} of {len(setup.participants)} participants {did} "
            f"({', '.join(sorted(nodes)) or 'none'}); the threshold is {setup.threshold}"
        )


def _check_layout(
    node: str, tensors: Mapping[str, npt.NDArray[np.generic]], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    missing, extra = sorted(shapes.keys() - tensors.keys()), sorted(tensors.keys() - shapes.keys())
    if missing or extra:
        raise SecAggError(f"the masked input of {node} lacks tensors {missing} and has unexpected {extra}")
    for name, shape in shapes.items():
        a = tensors[name]
        if not isinstance(a, np.ndarray) or a.dtype != np.uint64:
            raise SecAggError(f"the masked input of {node} has tensor {name!r} that is not a uint64 array")
        if a.shape != shape:
            raise SecAggError(
                f"the masked input of {node} has tensor {name!r} of shape {list(a.shape)}, "
                f"expected {list(shape)}"
            )


def _fixed(a: npt.NDArray[np.generic], weight: float, bound: float, what: str) -> npt.NDArray[np.uint64]:
    x = np.asarray(np.multiply(a, weight * SCALE, dtype=np.float64))  # 0-d stays an array
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not peak < bound:  # also catches NaN
        if not math.isfinite(peak):
            raise SecAggError(f"{what} has non-finite values (after × weight {weight})")
        raise SecAggError(
            f"{what} × weight reaches {peak / SCALE:.6g}, over the fixed-point range ±{bound / SCALE:.6g} "
            f"(2^{63 - FRACTION_BITS} / participants): scale the weights down"
        )
    return np.asarray(np.rint(x)).astype(np.int64).view(np.uint64)


def _add_streams(flat: npt.NDArray[np.uint64], name: str, streams: list[tuple[bytes, int]]) -> None:
    """flat += Σ sign · PRG(seed) in place: ChaCha20 keyed by the seed, its output read as uint64 LE."""
    if not flat.size or not streams:
        return
    # counter 0, then a 96-bit nonce per tensor name: a seed's streams differ between tensors
    nonce = b"\0\0\0\0" + hashlib.sha256(_frame(_LABEL + b"prg", name.encode())).digest()[:12]
    ciphers = [
        (Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor(), sign) for seed, sign in streams
    ]
    zeros = bytes(8 * min(_CHUNK, flat.size))
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        block = zeros[: 8 * part.size]
        for enc, sign in ciphers:
            stream = np.frombuffer(enc.update(block), dtype="<u8")
            if sign > 0:
                part += stream
            else:
                part -= stream


def _split(secret: bytes, threshold: int, xs: Iterable[int]) -> dict[int, bytes]:
    """Shamir shares ``{x: f(x)}`` of the 32-byte ``secret`` with a random polynomial of degree t − 1."""
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def _combine(shares: Mapping[int, int], threshold: int) -> int:
    """f(0) by Lagrange interpolation through the first ``threshold`` shares (by x)."""
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def _rebuild(setup: RoundSetup, u: str, reveals: Mapping[str, Mapping[str, bytes]], kind: Kind) -> bytes:
    shares: dict[int, int] = {}
    for by in sorted(reveals):
        share = reveals[by].get(u)
        if share is None:
            continue
        if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
            raise SecAggError(f"the share of {u}'s {kind} revealed by {by} is not {SHARE_BYTES} bytes")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise SecAggError(f"the share of {u}'s {kind} revealed by {by} is outside the field")
        shares[setup.x_of(by)] = y
    if len(shares) < setup.threshold:
        who = [setup.participants[x - 1] for x in sorted(shares)]
        raise NotEnoughSurvivors(
            f"only {len(shares)} participants revealed a share of {u}'s {kind} ({', '.join(who) or 'none'}); "
            f"the threshold is {setup.threshold}"
        )
    secret = _combine(shares, setup.threshold)
    # a real secret is 32 bytes; wrong shares land anywhere in the 521-bit field
    if secret >= 1 << (8 * _KEY_BYTES):
        raise SecAggError(f"the shares revealed for {u}'s {kind} are inconsistent: a revealed share is wrong")
    return secret.to_bytes(_KEY_BYTES, "big")
