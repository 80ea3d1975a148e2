"""Merged models kept on disk, so the swarm's model outlives its SL nodes.

Layout: ``<dir>/<contract>/<round:08d>-<digest[:16]>.safetensors``, written atomically (temporary
file, then rename), so several SL nodes may share one directory (a local run's folder) and a reader
never sees half a file. By default only the newest merged model of a contract is kept (each new round
replaces it); ``keep_rounds`` keeps every round's.

A restarted SL node loads the newest one back into its :class:`~swarmlearning.sl.peers.ModelStore`:
it serves it to peers and rejoins from it even when every other SL node has exited. What it loads is
only used if its digest is the one the ledger recorded for that round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from swarmlearning.sl.weights import digest

log = logging.getLogger("swarmlearning.sl")

_NAME = re.compile(r"^(\d{8})-([0-9a-f]{16})\.safetensors$")


@dataclass(frozen=True)
class ArchivedModel:
    contract: str
    round_no: int
    data: bytes
    digest: str


@dataclass(frozen=True)
class ModelArchive:
    """Merged models of every contract under ``root``."""

    root: Path
    keep_rounds: bool = False
    """Keep every round's merged model (default: only the newest per contract)."""

    def path(self, contract: str, round_no: int, digest_hex: str) -> Path:
        return self.root / contract / f"{round_no:08d}-{digest_hex[:16]}.safetensors"

    def save(self, contract: str, round_no: int, data: bytes, digest_hex: str) -> Path:
        """Write the merged model of ``round_no`` (a no-op if it is there); drops older rounds unless
        ``keep_rounds``. Returns the file's path."""
        target = self.path(contract, round_no, digest_hex)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        if not self.keep_rounds:
            for old in self._files(contract):
                if old[0] < round_no:
                    with contextlib.suppress(FileNotFoundError):
                        old[1].unlink()
        return target

    def find(self, contract: str, round_no: int, digest_hex: str) -> bytes | None:
        """The merged model of ``round_no`` if a file with exactly that digest is here."""
        try:
            data = self.path(contract, round_no, digest_hex).read_bytes()
        except OSError:
            return None
        return data if digest(data) == digest_hex else None

    def _files(self, contract: str) -> list[tuple[int, Path]]:
        folder = self.root / contract
        if not folder.is_dir():
            return []
        out = []
        for f in folder.iterdir():
            if m := _NAME.match(f.name):
                out.append((int(m.group(1)), f))
        return sorted(out)

    def latest(self) -> list[ArchivedModel]:
        """The newest intact model of every contract (a file whose bytes do not match the digest in
        its name is skipped with a warning)."""
        out: list[ArchivedModel] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for round_no, f in reversed(self._files(folder.name)):
                data = f.read_bytes()
                d = digest(data)
                if d[:16] != _NAME.match(f.name).group(2):  # type: ignore[union-attr]
                    log.warning("model archive: %s does not match its digest; ignoring it", f)
                    continue
                out.append(ArchivedModel(folder.name, round_no, data, d))
                break
        return out
