"""The console's one window on the Kubernetes API: bearer tokens (TokenReview), rights
(SubjectAccessReview) and the swarm's custom resources. Only used in a cluster (``--kubernetes``).

The kubernetes client is synchronous: its calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from .auth import RIGHTS, Principal

log = logging.getLogger("swarmlearning.console.kube")

GROUP = "swarmlearning.dev"
VERSION = "v1alpha1"
RIGHT_ATTRIBUTES: dict[str, dict[str, str]] = {
    "status": {"verb": "get", "group": GROUP, "resource": "swarmnetworks"},
    "model": {"verb": "get", "group": GROUP, "resource": "swarmtasks", "subresource": "model"},
}
"""What each console right is checked as (SubjectAccessReview in the network's namespace)."""


@dataclass(frozen=True)
class TaskRef:
    name: str
    contract: str
    phase: str


class KubeAccess:
    """TokenReview and SubjectAccessReview with the console's ServiceAccount, in ``namespace``, for
    the SwarmNetwork ``network``."""

    def __init__(self, namespace: str, network: str) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self._client = client
        self.namespace = namespace
        self.network = network

    async def review(self, token: str) -> Principal | None:
        return await asyncio.to_thread(self._review, token)

    def _review(self, token: str) -> Principal | None:
        c = self._client
        tr = c.AuthenticationV1Api().create_token_review(
            c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token))
        )
        status = tr.status
        if not status or not status.authenticated or not status.user:
            return None
        user = status.user
        rights = set()
        for right in RIGHTS:
            attrs = dict(RIGHT_ATTRIBUTES[right], namespace=self.namespace)
            if right == "status":
                attrs["name"] = self.network
            spec = c.V1SubjectAccessReviewSpec(
                user=user.username,
                groups=user.groups,
                uid=user.uid,
                extra=user.extra,
                resource_attributes=c.V1ResourceAttributes(**attrs),
            )
            sar = c.AuthorizationV1Api().create_subject_access_review(c.V1SubjectAccessReview(spec=spec))
            if sar.status and sar.status.allowed:
                rights.add(right)
        return Principal(user.username or "?", "kubernetes", frozenset(rights))

    async def tasks(self) -> list[TaskRef]:
        """The namespace's SwarmTasks with their contract and phase (empty when they cannot be read)."""
        return await asyncio.to_thread(self._tasks)

    def _tasks(self) -> list[TaskRef]:
        try:
            listed = cast(
                dict[str, Any],
                self._client.CustomObjectsApi().list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, "swarmtasks"
                ),
            )
            items: list[dict[str, Any]] = listed["items"]
        except Exception as exc:  # the API server's answer is advisory here: the ledger is the truth
            log.warning("listing SwarmTasks in %s failed: %s", self.namespace, exc)
            return []
        out = []
        for t in items:
            name = t.get("metadata", {}).get("name", "")
            sync = t.get("spec", {}).get("sync") or {}
            out.append(TaskRef(name, sync.get("contract") or name, (t.get("status") or {}).get("phase", "")))
        return out
