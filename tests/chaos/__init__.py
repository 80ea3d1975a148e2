"""Chaos harness: real faults (network, processes) injected into a local swarm."""
