"""Feeding the object cache from Kopf's watches, and the triggers of child changes.

Every cached kind has a Kopf index: Kopf calls its function (async: on the event loop, before any other
handler of that event) for every listed or changed object, and it stores the object in the cache; the
function returns None, so Kopf's own index stays empty. Kopf starts no handler before every indexed
kind's initial listing is done, so no reconcile ever reads a half-filled cache. Deletions reach the
cache through an event handler (Kopf calls no index function for them).

Watches of the core kinds select `app.kubernetes.io/managed-by=swarm-operator` on the server
(settings.py, kube.CHILD_SELECTOR), so the cache holds the operator's children only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from .. import names
from ..kube import CACHED_CORE, CACHED_CUSTOM, ObjectCache
from ..reconcile import learning_node, network, task
from .runtime import context


def _cache() -> ObjectCache:
    cache = context().kube.cache
    if cache is None:
        raise RuntimeError("the operator's Kube has no ObjectCache (main.py attaches one)")
    return cache


def _register(kind: str, group: str, version: str, plural: str) -> None:
    async def observe(body: kopf.Body, **_: Any) -> None:
        _cache().observe(kind, body)

    async def forget(**kw: Any) -> None:
        event = kw["event"]
        if event.get("type") == "DELETED":
            meta = (event.get("object") or {}).get("metadata") or {}
            ns, name = meta.get("namespace") or "", meta.get("name") or ""
            _cache().forget(kind, ns, name, meta.get("resourceVersion"))

    kopf.index(group, version, plural, id=f"cache-{plural}")(observe)
    kopf.on.event(group, version, plural, id=f"uncache-{plural}")(forget)


for _plural in CACHED_CUSTOM:
    _register(_plural, names.GROUP, names.VERSION, _plural)
for _kind, (_group, _version, _plural) in CACHED_CORE.items():
    _register(_kind, _group, _version, _plural)

_OWNER_RECONCILERS = {
    "SwarmNetwork": network.reconcile,
    "LearningNode": learning_node.reconcile,
    "SwarmTask": task.reconcile,
}


def _reconcile_owner(event: dict[str, Any]) -> None:
    """Reconcile the controller owner of a child that changed behind our back."""
    meta = (event.get("object") or {}).get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        fn = _OWNER_RECONCILERS.get(ref.get("kind", ""))
        if ref.get("controller") and fn is not None:
            fn(context(), meta.get("namespace") or "", ref.get("name", ""))


def _child_event(kind: str, group: str, version: str, plural: str, on_change: bool) -> None:
    async def child_event(**kw: Any) -> None:
        event = kw["event"]
        # Our own creates and patches arrive here too; they need no reconcile (level-based: the owner's
        # reconcile that wrote them saw the result already), so they cost no thread. A deletion does:
        # the owner recreates the child.
        if event.get("type") == "DELETED" or on_change:
            await asyncio.get_running_loop().run_in_executor(None, _reconcile_owner, event)

    kopf.on.event(group, version, plural, id=f"child-{plural}")(child_event)


# Pods have their own handler (pods.py). A Deployment's changes are the console's availability.
for _kind in ("Service", "Secret", "PersistentVolumeClaim", "Deployment"):
    _child_event(_kind, *CACHED_CORE[_kind], on_change=_kind == "Deployment")
