"""Names shared by builders, reconcilers and handlers: API group, labels, child object names, ports.

Child names are derived from the owner's name only, so a restarted operator finds the same objects
(idempotence rests on it).
"""

from __future__ import annotations

GROUP = "swarmlearning.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

NETWORK_KIND = "SwarmNetwork"
NODE_KIND = "LearningNode"
TASK_KIND = "SwarmTask"
NETWORKS = "swarmnetworks"
NODES = "learningnodes"
TASKS = "swarmtasks"

OPERATOR_NAME = "swarm-operator"
"""Value of app.kubernetes.io/managed-by on every child, and the Event source component."""

LEDGER_READER = "swarm-operator"
"""etcd user (certificate CN) of the operator's read-only ledger identity; the sentinel creates it."""

# Fixed default ports (docs/architecture.md). HPE's licence port 5814 has no counterpart.
P2P_PORT = 30303
API_PORT = 30304
SL_PORT = 30305
REST_PORT = 30306

# Labels
L_NAME = "app.kubernetes.io/name"
L_INSTANCE = "app.kubernetes.io/instance"
L_COMPONENT = "app.kubernetes.io/component"
L_MANAGED_BY = "app.kubernetes.io/managed-by"
L_PART_OF = "app.kubernetes.io/part-of"
L_NETWORK = f"{GROUP}/network"
L_NODE = f"{GROUP}/learning-node"
L_TASK = f"{GROUP}/task"
L_MEMBER = f"{GROUP}/member"
L_ATTEMPT = f"{GROUP}/attempt"

COMPONENT_SN = "sn"
COMPONENT_SL = "sl"
COMPONENT_TASK = "task-peer"
COMPONENT_CONSOLE = "console"

# Mount points inside node containers (the node images expect them).
TLS_DIR = "/etc/swarm/tls"
CHANNEL_DIR = "/var/run/swarm"
CHANNEL_SOCKET = f"{CHANNEL_DIR}/sl.sock"
SN_DATA_DIR = "/var/lib/swarm/sn"
NODE_UID = 65532
"""Non-root uid the node images run as (distroless 'nonroot')."""


def sn_pod(network: str, ordinal: int) -> str:
    return f"{network}-sn-{ordinal}"


def sn_pvc(network: str, ordinal: int) -> str:
    return f"{network}-sn-data-{ordinal}"


def sn_service(network: str) -> str:
    """Service exposing the SN P2P (30303) and API (30304) ports."""
    return f"{network}-sn"


def sn_headless(network: str) -> str:
    """Headless Service giving every SN member a stable DNS name for peer discovery."""
    return f"{network}-sn-peers"


def sn_tls_secret(network: str, ordinal: int) -> str:
    """Certificate of one SN member (CN = its pod name, the member's etcd user)."""
    return f"{network}-sn-{ordinal}-tls"


def rest_service(network: str) -> str:
    return f"{network}-rest"


def console(network: str) -> str:
    """Deployment, ServiceAccount, RoleBinding and certificate CN (etcd user) of a network's console."""
    return f"{network}-console"


def console_tls_secret(network: str) -> str:
    """The console's identity: a certificate of the swarm CA (role `operator`) for TLS, etcd and SL."""
    return f"{network}-console-tls"


def console_cluster_binding(namespace: str, network: str) -> str:
    """The ClusterRoleBinding granting one console TokenReview/SubjectAccessReview (cluster-scoped APIs)."""
    return f"swarm-learning-console:{namespace}:{network}"


CONSOLE_ROLE = "swarm-learning-console"
"""ClusterRole (chart) bound per namespace by a RoleBinding: reading the three custom resources and
LocalSubjectAccessReviews in the network's namespace."""
CONSOLE_REVIEWS_ROLE = "swarm-learning-console-reviews"
"""ClusterRole (chart) bound by a ClusterRoleBinding: creating TokenReviews and SubjectAccessReviews,
which are cluster-scoped, so no RoleBinding can grant them."""
A_CONSOLE_OWNER = f"{GROUP}/owner"
"""Annotation `<namespace>/<name>/<uid>` of the network on its cluster-scoped ClusterRoleBinding (no owner
reference can point from a cluster-scoped object to a namespaced one)."""


def ca_secret(network: str, configured: str | None = None) -> str:
    return configured or f"{network}-ca"


def sl_service(node: str) -> str:
    return f"{node}-sl"


def identity_secret(node: str) -> str:
    return f"{node}-identity"


def task_pod(task: str, node: str, attempt: int) -> str:
    return f"{task}-{node}-{attempt}"


def sn_member_host(network: str, ordinal: int, namespace: str) -> str:
    """Stable DNS name of one SN member (pod hostname + headless Service subdomain)."""
    return f"{sn_pod(network, ordinal)}.{sn_headless(network)}.{namespace}.svc"


def sn_api_endpoint(network: str, namespace: str, port: int = API_PORT) -> str:
    """The in-cluster SN API endpoint (`host:port`) SL nodes connect to."""
    return f"{sn_service(network)}.{namespace}.svc:{port}"
