"""The one module that talks to the Kubernetes API server (the official `kubernetes` client, synchronous).

Everything goes in and out as plain manifest dicts (camelCase, as kubectl shows them): responses are
read unparsed (`_preload_content=False`) and decoded as JSON, so builders' dicts and observed objects
have the same shape. Every request carries a timeout. Errors: `NotFound`, `Conflict` and `Rejected`
(the API server refused the object: invalid, forbidden by an admission policy or quota) are the outcomes
reconcilers branch on; anything else propagates (Kopf retries the handler).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import names

log = logging.getLogger(__name__)

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


class Kube:
    """Typed facade over the API: get/list/create/patch/delete of the kinds the operator manages."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
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
        return cls(kubernetes.client.ApiClient(config))

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
        """One API request with raw JSON in and out (the generated models would coerce our dicts)."""
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

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object, or None when absent."""
        try:
            return self.request("GET", _path(kind, namespace, name), f"get {kind} {namespace}/{name}")
        except NotFound:
            return None

    def find(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        """Objects of `kind` in `namespace` carrying all `labels`."""
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
        return self.request(
            "POST",
            _path(obj["kind"], ns),
            f"create {obj['kind']} {ns}/{meta.get('name', '')}",
            body=dict(obj),
            query={"dryRun": "All"} if dry_run else None,
        )

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
            again = self.get(obj["kind"], ns, meta["name"])
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
        return self.request(
            "PATCH",
            _path(kind, namespace, name),
            f"patch {kind} {namespace}/{name}",
            body=dict(body),
            content_type=strategy,
        )

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
            self.request(
                "DELETE",
                _path(kind, namespace, name),
                f"delete {kind} {namespace}/{name}",
                body={"propagationPolicy": "Background"},
            )
        except NotFound:
            return False
        return True

    # ------------------------------------------------------------------------ custom resources

    def get_custom(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.request("GET", _cpath(plural, namespace, name), f"get {plural} {namespace}/{name}")
        except NotFound:
            return None

    def list_custom(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """All objects of `plural` in `namespace` (None = every namespace)."""
        out = self.request("GET", _cpath(plural, namespace), f"list {plural} {namespace or '(all)'}")
        items: list[Obj] = out.get("items", [])
        return items

    def patch_custom_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        """JSON merge patch of `.status` through the status subresource (None values delete fields)."""
        return self.request(
            "PATCH",
            _cpath(plural, namespace, name) + "/status",
            f"patch {plural} {namespace}/{name} status",
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )

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
