"""Flower app of the round-latency benchmark."""
