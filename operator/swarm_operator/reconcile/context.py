"""What every reconciler gets: the API facade (reads from its cache), the ledger reader, the coalescing
of triggers, status writing."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
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


class Coalescer:
    """Runs at most one reconcile per key at a time and folds the triggers that arrive meanwhile into
    one more run (a controller work queue without the queue: the triggering thread runs it).

    `run(key, fn)`: when no run of `key` is under way, runs `fn` now, then again as long as triggers
    arrived while it ran; returns True. When one is under way, marks `key` dirty and returns False at
    once: the running thread reruns `fn` afterwards, reading the state as it is then. A burst of N
    watch events for one object thus costs at most two reconciles, not N.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._running: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self.folded = 0
        """Triggers folded into a run under way (for tests and metrics)."""

    def run(self, key: Hashable, fn: Callable[[], None]) -> bool:
        with self._guard:
            if key in self._running:
                self._dirty.add(key)
                self.folded += 1
                return False
            self._running.add(key)
        try:
            while True:
                fn()
                with self._guard:
                    if key not in self._dirty:
                        self._running.discard(key)
                        return True
                    self._dirty.discard(key)
        except BaseException:
            with self._guard:
                self._running.discard(key)
                self._dirty.discard(key)
            raise

    def busy(self, key: Hashable) -> bool:
        with self._guard:
            return key in self._running


@dataclass
class Context:
    """Shared by all reconciles of one operator process."""

    kube: Kube
    ledger: LedgerReader | None = None
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    triggers: Coalescer = field(default_factory=Coalescer)

    def write_status(self, plural: str, body: Mapping[str, Any], new: dict[str, Any]) -> bool:
        """Patch `.status` with the fields of `new` that differ from `body`'s (one request, nothing when
        nothing changed); returns whether it patched."""
        patch = st.status_patch(body.get("status"), new)
        if patch is None:
            return False
        meta = body["metadata"]
        try:
            self.kube.patch_custom_status(plural, meta["namespace"], meta["name"], patch)
        except NotFound:
            return False  # deleted while we reconciled: nothing left to report on
        return True

    def event(self, body: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        meta = body.get("metadata") or {}
        (log.warning if warning else log.info)(
            "%s %s/%s: %s: %s", body.get("kind"), meta.get("namespace"), meta.get("name"), reason, message
        )
        self.kube.post_event(body, "Warning" if warning else "Normal", reason, message)
