"""SN nodes: etcd members forming the Swarm Network (sentinel bootstraps, others join as learners)."""

from swarmlearning.sn.node import SNConfig, SNNode, SNStartError

__all__ = ["SNConfig", "SNNode", "SNStartError"]
