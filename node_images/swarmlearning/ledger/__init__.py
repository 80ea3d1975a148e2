"""The swarm ledger: signed, hash-chained records in etcd, membership, contracts and round coordination.

Public interface (stable; the SL node, the operator and ``swarmctl`` use it):

- :class:`Ledger` — ``await Ledger.connect(endpoints, node_cert)``; membership
  (``register_member``, ``members``), contracts (``ensure_contract``), rounds (``current_round``,
  ``mark_ready``, ``close_round``, ``leader_for``, ``hold_leadership``, ``commit_round``,
  ``wait_round_result``, ``latest_round``), delivery of a round's merged model
  (``mark_has_model``, ``mark_fetching_model``, ``who_has_model``, ``model_delivery``), audit
  (``records``, ``snapshot``, ``verify``).
- Values: :class:`Record`, :class:`Member`, :class:`Participant`, :class:`RoundClose`,
  :class:`ModelDelivery`, :class:`ChainReport`, :class:`LedgerSnapshot`.
- Errors: :class:`LedgerError` and its subclasses :class:`QuorumTimeout`, :class:`LeaderFailed`,
  :class:`NotRegistered`, :class:`RoundAlreadyCommitted`; etcd errors come from
  :mod:`swarmlearning.etcd` (``EtcdPermissionDenied``, ``EtcdUnavailable``, ``EtcdTLSError``...).
- Pure functions: :func:`verify_chain`, :func:`leader_for`, :func:`make_record`, :func:`model_delivery`.

Key layout and the permission table: :mod:`swarmlearning.ledger.keys`. etcd users per certificate:
:mod:`swarmlearning.ledger.access`.
"""

from swarmlearning.ledger.client import (
    ChainContention,
    Head,
    LeaderFailed,
    Leadership,
    Ledger,
    LedgerError,
    LedgerSnapshot,
    NotRegistered,
    QuorumTimeout,
    RoundAlreadyCommitted,
    RoundWatch,
    connected,
)
from swarmlearning.ledger.records import (
    GENESIS_HASH,
    KINDS,
    ChainReport,
    Record,
    RecordError,
    canonical_json,
    make_record,
    verify_chain,
)
from swarmlearning.ledger.rounds import (
    Member,
    ModelDelivery,
    NoEligibleLeader,
    Participant,
    RoundClose,
    leader_for,
    model_delivery,
    slice_leader_for,
)

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "ChainContention",
    "ChainReport",
    "Head",
    "LeaderFailed",
    "Leadership",
    "Ledger",
    "LedgerError",
    "LedgerSnapshot",
    "Member",
    "ModelDelivery",
    "NoEligibleLeader",
    "NotRegistered",
    "Participant",
    "QuorumTimeout",
    "Record",
    "RecordError",
    "RoundAlreadyCommitted",
    "RoundClose",
    "RoundWatch",
    "canonical_json",
    "connected",
    "leader_for",
    "make_record",
    "model_delivery",
    "slice_leader_for",
    "verify_chain",
]
