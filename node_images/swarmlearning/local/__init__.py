"""Local swarm runs (``swarmctl run examples/local/<x>``): SN, SL and ML nodes as processes on loopback."""
