"""Norm-clipped mean, a Swarm Learning merge plugin (entry point ``clippedmean``)."""

from swarm_clipped_mean.merge import clipped_mean

__all__ = ["clipped_mean"]
