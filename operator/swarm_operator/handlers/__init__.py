"""Thin Kopf handlers: each watch event becomes a call to the reconciler of the object it concerns.

No change handlers, timers or daemons: those would make Kopf add finalizers and keep handler state
on the objects. Deletion needs no handler: children carry owner references and the garbage collector
removes them. Periodic re-reconciling (ledger progress) is the resync task in `lifecycle`.

Importing this package registers the handlers with Kopf.
"""

from . import lifecycle, networks, nodes, pods, tasks
from .runtime import install

__all__ = ["install", "lifecycle", "networks", "nodes", "pods", "tasks"]
