"""etcd users and roles for swarm identities (the permission table of :mod:`swarmlearning.ledger.keys`).

etcd authenticates a gRPC client by its certificate CN, so every certificate that talks to etcd needs
an etcd user of the same name. The sentinel SN creates the first ones before enabling auth
(:func:`bootstrap_auth`); afterwards whoever issues a certificate (the operator, ``swarmctl run``,
``swarmctl sn provision``) calls :func:`provision` with a root identity.
"""

from __future__ import annotations

from swarmlearning.etcd import EtcdClient
from swarmlearning.ledger import keys
from swarmlearning.pki import ROLES


async def provision(client: EtcdClient, name: str, role: str) -> None:
    """Create etcd user ``name`` with the rights of certificate role ``role`` (idempotent).

    ``sn`` and ``admin`` get etcd's ``root`` role; ``sl`` gets ``node-<name>`` (read everything,
    write its own prefix and the signed shared ranges); ``operator`` gets read-only access.
    ``client`` must be authenticated as a root user (or auth still disabled).
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not allowed: use one of {', '.join(ROLES)}")
    await client.user_add(name)
    if role in ("sn", "admin"):
        await client.user_grant_role(name, "root")
    elif role == "operator":
        await _reader_role(client)
        await client.user_grant_role(name, keys.READER_ROLE)
    else:
        r = keys.node_role(name)
        await client.role_add(r)
        await client.role_grant(r, keys.ROOT, prefix=True, perm="read")
        await client.role_grant(r, keys.node_prefix(name), prefix=True, perm="readwrite")
        for shared in keys.SHARED_PREFIXES:
            await client.role_grant(r, shared, prefix=True, perm="readwrite")
        await client.user_grant_role(name, r)


async def _reader_role(client: EtcdClient) -> None:
    await client.role_add(keys.READER_ROLE)
    await client.role_grant(keys.READER_ROLE, keys.ROOT, prefix=True, perm="read")


async def bootstrap_auth(client: EtcdClient, sentinel: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
    """On a fresh cluster: create ``root``, the sentinel's user and ``extra`` (name, role) users, enable auth.

    Idempotent: on a cluster with auth already enabled it only provisions ``extra``.
    """
    if not await client.auth_enabled():
        await client.user_add("root")
        await client.user_grant_role("root", "root")
        await provision(client, sentinel, "sn")
        await _reader_role(client)
    for name, role in extra:
        await provision(client, name, role)
    if not await client.auth_enabled():
        await client.auth_enable()
