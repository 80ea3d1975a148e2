"""What every reconciler gets: the API facade, the ledger reader, per-object locks, status writing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import status as st
from ..kube import Kube, NotFound
from ..ledger_reader import LedgerReader

log = logging.getLogger(__name__)


class KeyedLocks:
    """One lock per object key; the table only grows with the number of objects ever seen."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}

    @contextmanager
    def hold(self, kind: str, namespace: str, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault((kind, namespace, name), threading.Lock())
        with lock:
            yield


@dataclass
class Context:
    """Shared by all reconciles of one operator process."""

    kube: Kube
    ledger: LedgerReader | None = None
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    def write_status(self, plural: str, body: Mapping[str, Any], new: dict[str, Any]) -> bool:
        """Patch `.status` when `new` changes anything; returns whether it patched."""
        old = body.get("status") or {}
        if not st.differs(old, new):
            return False
        meta = body["metadata"]
        try:
            self.kube.patch_custom_status(plural, meta["namespace"], meta["name"], new)
        except NotFound:
            return False  # deleted while we reconciled: nothing left to report on
        return True

    def event(self, body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        meta = body.get("metadata") or {}
        (log.warning if warning else log.info)(
            "%s %s/%s: %s: %s", body.get("kind"), meta.get("namespace"), meta.get("name"), reason, message
        )
        self.kube.post_event(body, "Warning" if warning else "Normal", reason, message)
