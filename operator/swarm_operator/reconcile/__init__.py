"""Level-based reconcilers, one module per kind: read the object and its children, converge, write status.

Each reconcile is idempotent and safe to run at any time (on any watch event, on resync, after an
operator restart); a per-object lock keeps two concurrent triggers of one object from racing.
"""
