"""SL node: the swarm side of one site (ledger rounds, leader merges, mTLS weights exchange).

``python -m swarmlearning.sl`` (or ``swarmctl sl start``) runs one; see :mod:`swarmlearning.sl.node`.
Importing this package does not import torch; the node module does.
"""
