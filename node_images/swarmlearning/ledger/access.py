"""etcd users and roles for swarm identities (the permission table of :mod:`swarmlearning.ledger.keys`).

etcd authenticates a gRPC client by its certificate CN, so every certificate that talks to etcd needs
an etcd user of the same name. The sentinel SN creates the first ones before enabling auth
(:func:`bootstrap_auth`); afterwards whoever issues a certificate (the operator, ``swarmctl run``,
``swarmctl sn provision``) calls :func:`provision` with a root identity.

Provisioning reads before it writes: every change of the auth store bumps its revision, and etcd then
refuses requests that were in flight with "revision of auth store is old" (the client retries them,
but an operator that re-provisions every user after a restart should not cause a burst of those).
"""

from __future__ import annotations

from typing import Literal

from swarmlearning.etcd import EtcdClient, RolePermission
from swarmlearning.ledger import keys
from swarmlearning.pki import ROLES

_Grant = tuple[str, bool, Literal["read", "write", "readwrite"]]
"""(key, prefix, perm) as :meth:`EtcdClient.role_grant` takes it."""


def _node_grants(name: str) -> list[_Grant]:
    return [
        (keys.ROOT, True, "read"),
        (keys.node_prefix(name), True, "readwrite"),
        *((shared, True, "readwrite") for shared in keys.SHARED_PREFIXES),
    ]


_READER_GRANTS: list[_Grant] = [(keys.ROOT, True, "read")]


async def provision(client: EtcdClient, name: str, role: str) -> None:
    """Create etcd user ``name`` with the rights of certificate role ``role`` (idempotent).

    ``sn`` and ``admin`` get etcd's ``root`` role; ``sl`` gets ``node-<name>`` (read everything,
    write its own prefix and the signed shared ranges); ``operator`` gets read-only access.
    ``client`` must be authenticated as a root user (or auth still disabled). Only what is missing is
    written: for a user that already has its role and permissions the auth store is not changed.
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not allowed: use one of {', '.join(ROLES)}")
    if role in ("sn", "admin"):
        etcd_role = "root"
    elif role == "operator":
        etcd_role = keys.READER_ROLE
        await _ensure_role(client, etcd_role, _READER_GRANTS)
    else:
        etcd_role = keys.node_role(name)
        await _ensure_role(client, etcd_role, _node_grants(name))
    roles = await client.user_roles(name)
    if roles is None:
        await client.user_add(name)
        roles = []
    if etcd_role not in roles:
        await client.user_grant_role(name, etcd_role)


async def _ensure_role(client: EtcdClient, role: str, grants: list[_Grant]) -> None:
    """Create ``role`` if needed and grant what it lacks of ``grants`` (other permissions stay)."""
    have = await client.role_permissions(role)
    if have is None:
        await client.role_add(role)
        have = []
    for key, prefix, perm in grants:
        if RolePermission.of(key, prefix=prefix, perm=perm) not in have:
            await client.role_grant(role, key, prefix=prefix, perm=perm)


async def bootstrap_auth(client: EtcdClient, sentinel: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
    """On a fresh cluster: create ``root``, the sentinel's user and ``extra`` (name, role) users, enable auth.

    Idempotent: on a cluster with auth already enabled it only provisions ``extra`` (and changes
    nothing for those that exist with their rights).
    """
    if not await client.auth_enabled():
        await provision(client, "root", "admin")
        await provision(client, sentinel, "sn")
        await _ensure_role(client, keys.READER_ROLE, _READER_GRANTS)
    for name, role in extra:
        await provision(client, name, role)
    if not await client.auth_enabled():
        await client.auth_enable()
