"""Key layout of the swarm state in etcd, and who may write what.

Everything lives under ``/swarm/``. ``<seq>`` is zero-padded to 12 digits and ``<round>`` to 8, so
lexical order is numeric order.

=================================================  =====================================  ==========
key                                                value                                  writers
=================================================  =====================================  ==========
/swarm/ledger/head                                 ``{"seq": n, "hash": h}``, chain head  any node
/swarm/ledger/records/<seq>                        signed record (canonical JSON)         any node
/swarm/contracts/<contract>                        seq of the contract record             any node
/swarm/rounds/<contract>/<round>/close             seq of the round's close record        any node
/swarm/rounds/<contract>/<round>/result            seq of the round's result record       any node
/swarm/rounds/<contract>/<round>/slice/<k>         seq of slice k's record (sharded       any node
                                                   merge)
/swarm/rounds/<contract>/latest                    seq of the latest result record        any node
/swarm/nodes/<name>/certs/<fingerprint>            the node's certificate (PEM)           <name>
/swarm/nodes/<name>/member                         endpoint, leader eligibility (leased)   <name>
/swarm/nodes/<name>/ready/<contract>/<round>       digest, weight, samples (leased)       <name>
/swarm/nodes/<name>/session/<contract>             its ML process connected or gone       <name>
                                                   (leased)
/swarm/nodes/<name>/leader/<contract>/<round>/<a>  leadership of attempt a (own lease)    <name>
/swarm/nodes/<name>/leader/<contract>/<round>/     leadership of slice k, attempt a       <name>
  s<k>.<a>                                         (sharded merge; own lease)
/swarm/nodes/<name>/models/<contract>/<round>      ``has`` the round's merged model, or   <name>
                                                   ``fetching`` it (leased while fetching)
=================================================  =====================================  ==========

etcd users are certificate CNs (gRPC with client-cert auth). Permission table:

========================  =====================================================================
user (cert role)          etcd role and ranges
========================  =====================================================================
root, SN nodes, admins    etcd ``root`` role: everything, incl. membership and auth
SL node ``<name>``        role ``node-<name>``: READ ``/swarm/``; READWRITE ``/swarm/nodes/<name>/``;
                          READWRITE ``/swarm/ledger/``, ``/swarm/contracts/``, ``/swarm/rounds/``
operator                  role ``swarm-reader``: READ ``/swarm/``
========================  =====================================================================

The shared ranges (ledger, contracts, rounds) hold only signed records or pointers to them; readers
verify signatures and the hash chain (:func:`swarmlearning.ledger.records.verify_chain`), so a node
forging or altering a shared entry is detected, not trusted. A node cannot touch another node's
``/swarm/nodes/<other>/`` keys: etcd answers PermissionDenied.
"""

from __future__ import annotations

ROOT = "/swarm/"
HEAD = "/swarm/ledger/head"
RECORDS = "/swarm/ledger/records/"
CONTRACTS = "/swarm/contracts/"
ROUNDS = "/swarm/rounds/"
NODES = "/swarm/nodes/"
SHARED_PREFIXES = ("/swarm/ledger/", CONTRACTS, ROUNDS)

READER_ROLE = "swarm-reader"


def record_key(seq: int) -> str:
    return f"{RECORDS}{seq:012d}"


def contract_key(contract: str) -> str:
    return f"{CONTRACTS}{contract}"


def round_prefix(contract: str, round_no: int) -> str:
    return f"{ROUNDS}{contract}/{round_no:08d}/"


def close_key(contract: str, round_no: int) -> str:
    return round_prefix(contract, round_no) + "close"


def result_key(contract: str, round_no: int) -> str:
    return round_prefix(contract, round_no) + "result"


def latest_key(contract: str) -> str:
    return f"{ROUNDS}{contract}/latest"


def node_prefix(name: str) -> str:
    return f"{NODES}{name}/"


def cert_key(name: str, fingerprint: str) -> str:
    return f"{NODES}{name}/certs/{fingerprint}"


def member_key(name: str) -> str:
    return f"{NODES}{name}/member"


def ready_prefix(name: str, contract: str) -> str:
    return f"{NODES}{name}/ready/{contract}/"


def ready_key(name: str, contract: str, round_no: int) -> str:
    return f"{ready_prefix(name, contract)}{round_no:08d}"


def session_key(name: str, contract: str) -> str:
    """Whether ``name``'s ML process for ``contract`` is connected or gone (on the membership lease)."""
    return f"{NODES}{name}/session/{contract}"


def leader_key(name: str, contract: str, round_no: int, attempt: int) -> str:
    return f"{NODES}{name}/leader/{contract}/{round_no:08d}/{attempt}"


def slice_key(contract: str, round_no: int, slice_no: int) -> str:
    """Guard and pointer of slice ``slice_no``'s record in a sharded round."""
    return f"{round_prefix(contract, round_no)}slice/{slice_no:04d}"


def slice_leader_key(name: str, contract: str, round_no: int, slice_no: int, attempt: int) -> str:
    """Leadership of one slice of a sharded round (same depth as :func:`leader_key`, so a round with
    any leader key, of the round or of a slice, counts as being worked on)."""
    return f"{NODES}{name}/leader/{contract}/{round_no:08d}/s{slice_no}.{attempt}"


def model_prefix(name: str, contract: str) -> str:
    return f"{NODES}{name}/models/{contract}/"


def model_key(name: str, contract: str, round_no: int) -> str:
    """Whether ``name`` holds (or is fetching) the merged model of the round; one per contract."""
    return f"{model_prefix(name, contract)}{round_no:08d}"


def node_role(name: str) -> str:
    """etcd role of SL node ``name``."""
    return f"node-{name}"
