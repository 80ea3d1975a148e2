"""Swarm Learning node runtime: SN ledger, SL merge protocol, ML callback."""
