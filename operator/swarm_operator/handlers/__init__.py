"""Thin Kopf handlers: each watch event becomes a call to the reconciler of the object it concerns.

No change handlers, timers or daemons: those would make Kopf add finalizers and keep handler state
on the objects. Deletion needs no handler: children carry owner references and the garbage collector
removes them. Periodic re-reconciling (ledger progress) is the resync task in `lifecycle`, which reads
the object cache (no request per object). `cache` feeds that cache from the same watches.

Importing this package registers the handlers with Kopf (`cache` first: its handlers run first).
"""

from . import cache, lifecycle, networks, nodes, pods, tasks
from .runtime import install

__all__ = ["cache", "install", "lifecycle", "networks", "nodes", "pods", "tasks"]
