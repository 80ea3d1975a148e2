"""The one module that talks to the Kubernetes API server (the official `kubernetes` client, synchronous).

Everything goes in and out as plain manifest dicts (camelCase, as kubectl shows them): responses are
read unparsed (`_preload_content=False`) and decoded as JSON, so builders' dicts and observed objects
have the same shape. Every request carries a timeout. Errors: `NotFound`, `Conflict` and `Rejected`
(the API server refused the object: invalid, forbidden by an admission policy or quota) are the outcomes
reconcilers branch on; anything else propagates (Kopf retries the handler).

Reads can come from an `ObjectCache` instead (the operator attaches one; tests and tools use the plain
facade): the cache is fed by the operator's watches (Kopf indexes, handlers/cache.py) and by the
responses of this module's own writes (write-through), so a reconcile reads its primary object and its
children from memory and only its writes go to the API server.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import metrics, names

log = logging.getLogger(__name__)

USER_AGENT = f"{names.OPERATOR_NAME}/0.1.0"
"""User-Agent of the operator's own API requests (Kopf's watches say `kopf/<version>`): audit logs and
the scale benchmark tell its requests apart by it."""

REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for every API request: a hung API server must not hang a reconcile."""

Obj = dict[str, Any]


class KubeError(Exception):
    """An API request failed; the message names the verb, kind and object."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """Already exists (create) or resourceVersion conflict (update)."""


class Rejected(KubeError):
    """The API server refused the request (HTTP 400, 403 or 422): an invalid object, an admission policy
    (Pod Security, ValidatingAdmissionPolicy) or a quota. `detail` is the API server's own message, which
    names the offending field."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


_REJECTED = (400, 403, 422)


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


# ------------------------------------------------------------------------------------------ cache

CACHED_CORE: dict[str, tuple[str, str, str]] = {
    "Pod": ("", "v1", "pods"),
    "Service": ("", "v1", "services"),
    "Secret": ("", "v1", "secrets"),
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "Deployment": ("apps", "v1", "deployments"),
}
"""Core kinds the operator's cache holds, with their (group, version, plural). Only objects labelled
`app.kubernetes.io/managed-by=swarm-operator` (CHILD_SELECTOR) are watched: the operator's children."""
CHILD_SELECTOR = f"{names.L_MANAGED_BY}={names.OPERATOR_NAME}"
CACHED_CUSTOM = (names.NETWORKS, names.NODES, names.TASKS)
"""Custom resources the cache holds (all of them, in the watched namespaces), keyed by plural."""

DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
"""Annotations no reconciler reads, dropped from cached copies (a copy of the whole object each)."""


SPEC_KEPT = {"Pod": ("nodeName",)}
"""Kinds whose cached copy keeps only these spec fields: a pod's spec (containers, env, volumes) is most
of its size, and reconcilers read only where it runs."""


def slim(obj: Mapping[str, Any], kind: str = "") -> Obj:
    """`obj` as the cache keeps it: without metadata.managedFields and the annotations of
    DROPPED_ANNOTATIONS (reconcilers never read them; they are often half an object's size), and for
    the kinds of SPEC_KEPT only those spec fields. The nested values are shared with `obj`, not copied."""
    out = dict(obj)
    if kind in SPEC_KEPT:
        spec = out.get("spec") or {}
        out["spec"] = {k: spec[k] for k in SPEC_KEPT[kind] if k in spec}
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    ann = meta.get("annotations")
    if ann and any(k in ann for k in DROPPED_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in ann.items() if k not in DROPPED_ANNOTATIONS}
    out["metadata"] = meta
    return out


def newer(candidate: str | None, current: str | None) -> bool:
    """True when resourceVersion `candidate` supersedes `current`. resourceVersions are opaque; etcd
    gives integers, compared as such (so a late watch event never overwrites the response of a later
    write); anything else counts as newer (the watch order is then the truth)."""
    if current is None or candidate is None:
        return True
    if candidate.isdigit() and current.isdigit():
        return int(candidate) >= int(current)
    return True


CacheKey = tuple[str, str, str]
"""(kind or custom plural, namespace ("" when cluster-scoped), name)."""


class ObjectCache:
    """Thread-safe store of the latest observed version of each watched object, with a label index.

    `kinds`: the kinds it holds (core kind names, custom plurals); reads of any other kind go to the API.
    A read of a held kind is answered from memory only: an object the watches never delivered is
    absent. Returned objects are shared, never copied: callers must not mutate them. They are `slim`
    copies: a pod's spec holds only `nodeName`.
    """

    def __init__(self, kinds: Iterable[str] = (*CACHED_CORE, *CACHED_CUSTOM)) -> None:
        self.kinds = frozenset(kinds)
        self._guard = threading.Lock()
        self._objects: dict[CacheKey, Obj] = {}
        # (kind, namespace, label key, label value) -> names carrying that label
        self._by_label: dict[tuple[str, str, str, str], set[str]] = {}
        # (kind, namespace) -> names, for listing a namespace without scanning every kind
        self._by_namespace: dict[tuple[str, str], set[str]] = {}

    def holds(self, kind: str) -> bool:
        return kind in self.kinds

    def __len__(self) -> int:
        return len(self._objects)

    def observe(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Store `obj` (a watch event's or a write's response) unless the cache has a newer version;
        returns whether it was stored."""
        meta = obj.get("metadata") or {}
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not key[2]:
            return False
        slimmed = slim(obj, kind)
        with self._guard:
            old = self._objects.get(key)
            if old is not None:
                if not newer(meta.get("resourceVersion"), old["metadata"].get("resourceVersion")):
                    return False
                self._unindex(key, old)
            self._objects[key] = slimmed
            self._by_namespace.setdefault(key[:2], set()).add(key[2])
            for k, v in (slimmed["metadata"].get("labels") or {}).items():
                self._by_label.setdefault((kind, key[1], k, str(v)), set()).add(key[2])
        return True

    def forget(self, kind: str, namespace: str, name: str, resource_version: str | None = None) -> bool:
        """Drop an object (deleted); with `resource_version`, only a version not newer than it (a
        DELETED event arriving after the name was created again must not drop the new object)."""
        key = (kind, namespace, name)
        with self._guard:
            old = self._objects.get(key)
            if old is None:
                return False
            have = old["metadata"].get("resourceVersion")
            if (
                resource_version is not None
                and have is not None
                and have.isdigit()
                and resource_version.isdigit()
                and int(have) > int(resource_version)
            ):
                return False  # the name was created again after the deleted version
            del self._objects[key]
            self._unindex(key, old)
        return True

    def _unindex(self, key: CacheKey, old: Obj) -> None:
        kind, ns, name = key
        for k, v in (old["metadata"].get("labels") or {}).items():
            names_ = self._by_label.get((kind, ns, k, str(v)))
            if names_ is not None:
                names_.discard(name)
                if not names_:
                    del self._by_label[(kind, ns, k, str(v))]
        in_ns = self._by_namespace.get((kind, ns))
        if in_ns is not None:
            in_ns.discard(name)
            if not in_ns:
                del self._by_namespace[(kind, ns)]

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._objects.get((kind, namespace, name))

    def find(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        """Objects of `kind` in `namespace` carrying all `labels` (sorted by name; none = every object)."""
        with self._guard:
            if not labels:
                found = set(self._by_namespace.get((kind, namespace), ()))
            else:
                sets = [self._by_label.get((kind, namespace, k, str(v)), set()) for k, v in labels.items()]
                found = set.intersection(*(set(s) for s in sorted(sets, key=len)))
            return [self._objects[(kind, namespace, n)] for n in sorted(found)]

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Objects of `kind` in `namespace` (None = every namespace), sorted by namespace and name."""
        with self._guard:
            if namespace is not None:
                keys = [(kind, namespace, n) for n in sorted(self._by_namespace.get((kind, namespace), ()))]
            else:
                keys = sorted(k for k in self._objects if k[0] == kind)
            return [self._objects[k] for k in keys]


class Kube:
    """Typed facade over the API: get/list/create/patch/delete of the kinds the operator manages.

    With a `cache`, reads of the kinds it holds are answered from it (no request) and the objects
    returned by creates, patches and deletes are stored in it, so the next read sees the write before
    its watch event arrives.
    """

    def __init__(self, api_client: kubernetes.client.ApiClient, cache: ObjectCache | None = None) -> None:
        self.api_client = api_client
        self.cache = cache
        self.api_client.user_agent = USER_AGENT

    @classmethod
    def connect(
        cls, kubeconfig: str | None = None, context: str | None = None, cache: ObjectCache | None = None
    ) -> Kube:
        """In-cluster service account when available (and no kubeconfig given), else the kubeconfig."""
        config = kubernetes.client.Configuration()
        if kubeconfig is None:
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(context=context, client_configuration=config)
        else:
            kubernetes.config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=config
            )
        # Handlers run in a thread pool; the default pool of 4 connections would make them queue.
        config.connection_pool_maxsize = 32
        return cls(kubernetes.client.ApiClient(config), cache)

    def close(self) -> None:
        self.api_client.close()

    # ---------------------------------------------------------------------------------- plumbing

    def request(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API request with raw JSON in and out (the generated models would coerce our dicts).
        `what` ("<verb> <kind> ...") names it in errors and in the request counter of metrics.py."""
        verb, _, rest = what.partition(" ")
        metrics.API_REQUESTS.labels(verb, rest.partition(" ")[0]).inc()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        req = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api_client.call_api(*req, _request_timeout=REQUEST_TIMEOUT)
            resp.read()
        except ApiException as e:
            if e.status in _REJECTED:
                detail = _reason(e.body.encode() if isinstance(e.body, str) else e.body)
                raise Rejected(f"{what}: refused ({detail})", detail) from e
            raise KubeError(f"{what}: {e.reason}") from e
        except OSError as e:  # urllib3 errors derive from it: refused, timeout, TLS
            raise KubeError(f"{what}: {e}") from e
        if not 200 <= resp.status <= 299:
            detail = _reason(resp.data)
            if resp.status == 404:
                raise NotFound(f"{what}: not found ({detail})")
            if resp.status == 409:
                raise Conflict(f"{what}: conflict ({detail})")
            if resp.status in _REJECTED:
                raise Rejected(f"{what}: refused ({detail})", detail)
            raise KubeError(f"{what}: HTTP {resp.status} {detail}")
        data: Obj = json.loads(resp.data) if resp.data else {}
        return data

    # ---------------------------------------------------------------------------- core objects

    def get(self, kind: str, namespace: str, name: str, read_through: bool = False) -> Obj | None:
        """The object, or None when absent. From the cache when it holds `kind`; `read_through`: ask the
        API server when the cache has no such object (one the watches do not select, e.g. a
        user-supplied CA Secret without our labels)."""
        if self.cache is not None and self.cache.holds(kind):
            found = self.cache.get(kind, namespace, name)
            if found is not None or not read_through:
                return found
        try:
            return self.request("GET", _path(kind, namespace, name), f"get {kind} {namespace}/{name}")
        except NotFound:
            return None

    def find(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        """Objects of `kind` in `namespace` carrying all `labels` (from the cache when it holds `kind`)."""
        if self.cache is not None and self.cache.holds(kind):
            return self.cache.find(kind, namespace, labels)
        sel = _selector(labels)
        out = self.request(
            "GET",
            _path(kind, namespace),
            f"list {kind} {namespace} {sel}",
            query={"labelSelector": sel} if sel else None,
        )
        items: list[Obj] = out.get("items", [])
        return items

    def create(self, obj: Mapping[str, Any], dry_run: bool = False) -> Obj:
        """Create `obj`; raises Conflict when it exists already, Rejected when the API server refuses it.

        `dry_run`: server-side dry run (every admission check runs, nothing is stored), so a set of
        children can be checked before any of them is created.
        """
        meta = obj["metadata"]
        ns = meta.get("namespace", "")  # "" for cluster-scoped kinds
        out = self.request(
            "POST",
            _path(obj["kind"], ns),
            f"create {obj['kind']} {ns}/{meta.get('name', '')}",
            body=dict(obj),
            query={"dryRun": "All"} if dry_run else None,
        )
        if not dry_run:
            self._written(obj["kind"], out)
        return out

    def _written(self, kind: str, out: Obj) -> None:
        """Write-through: the object a write returned goes into the cache (if it holds `kind`)."""
        if self.cache is not None and self.cache.holds(kind) and out.get("metadata"):
            self.cache.observe(kind, out)

    def ensure(self, obj: Mapping[str, Any]) -> tuple[Obj, bool]:
        """Create `obj` unless an object of that name exists; returns (object, created)."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "")  # "" for cluster-scoped kinds
        existing = self.get(obj["kind"], ns, meta["name"])
        if existing is not None:
            return existing, False
        try:
            return self.create(obj), True
        except Conflict:
            # Lost a race with another reconcile of the same owner: the object is there now.
            again = self.get(obj["kind"], ns, meta["name"], read_through=True)
            if again is None:
                raise
            return again, False

    def patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        strategy: str = "application/merge-patch+json",
    ) -> Obj:
        """JSON merge patch by default (lists are replaced whole)."""
        out = self.request(
            "PATCH",
            _path(kind, namespace, name),
            f"patch {kind} {namespace}/{name}",
            body=dict(body),
            content_type=strategy,
        )
        self._written(kind, out)
        return out

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        """Merge patch of a core object's status subresource (tests drive kwok pods' phases with it)."""
        return self.request(
            "PATCH",
            _path(kind, namespace, name) + "/status",
            f"patch {kind} {namespace}/{name} status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            out = self.request(
                "DELETE",
                _path(kind, namespace, name),
                f"delete {kind} {namespace}/{name}",
                body={"propagationPolicy": "Background"},
            )
        except NotFound:
            if self.cache is not None and self.cache.holds(kind):
                self.cache.forget(kind, namespace, name)
            return False
        if self.cache is not None and self.cache.holds(kind):
            meta = out.get("metadata") or {}
            if out.get("kind") == kind and meta.get("deletionTimestamp"):
                self.cache.observe(kind, out)  # graceful (a pod): it stays, terminating, until its event
            else:
                self.cache.forget(kind, namespace, name)
        return True

    # ------------------------------------------------------------------------ custom resources

    def get_custom(self, plural: str, namespace: str, name: str) -> Obj | None:
        if self.cache is not None and self.cache.holds(plural):
            return self.cache.get(plural, namespace, name)
        try:
            return self.request("GET", _cpath(plural, namespace, name), f"get {plural} {namespace}/{name}")
        except NotFound:
            return None

    def list_custom(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """All objects of `plural` in `namespace` (None = every namespace)."""
        if self.cache is not None and self.cache.holds(plural):
            return self.cache.list(plural, namespace)
        out = self.request("GET", _cpath(plural, namespace), f"list {plural} {namespace or '(all)'}")
        items: list[Obj] = out.get("items", [])
        return items

    def patch_custom_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        """JSON merge patch of `.status` through the status subresource (None values delete fields)."""
        out = self.request(
            "PATCH",
            _cpath(plural, namespace, name) + "/status",
            f"patch {plural} {namespace}/{name} status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        self._written(plural, out)
        return out

    # --------------------------------------------------------------------------------- events

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about `involved` (a custom resource body). Failures are logged, not raised:
        an Event is a courtesy, never a reason to fail a reconcile."""
        meta = involved.get("metadata") or {}
        ts = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        ns = meta.get("namespace", "default")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", names.API_VERSION),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.OPERATOR_NAME},
            "reportingComponent": names.OPERATOR_NAME,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.request("POST", _path("Event", ns), f"create Event {ns}", body=event)
        except KubeError as e:
            log.warning("could not post Event %s for %s/%s: %s", reason, ns, meta.get("name"), e)


_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "Secret": "secrets",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Event": "events",
    "ServiceAccount": "serviceaccounts",
}
_GROUPED = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
_CLUSTER_SCOPED = {"ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings")}
"""Cluster-scoped kinds: their namespace argument is ignored (pass "")."""


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    if kind in _CLUSTER_SCOPED:
        prefix, plural = _CLUSTER_SCOPED[kind]
        base = f"{prefix}/{plural}"
    elif kind in _GROUPED:
        prefix, plural = _GROUPED[kind]
        base = f"{prefix}/namespaces/{namespace}/{plural}"
    else:
        base = f"/api/v1/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{base}/{name}" if name else base


def _cpath(plural: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{names.GROUP}/{names.VERSION}"
    base = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{base}/{name}" if name else base


def _reason(data: bytes | None) -> str:
    try:
        body = json.loads(data or b"{}")
        return str(body.get("message") or body)
    except (ValueError, TypeError):
        return (data or b"").decode(errors="replace")[:200]
