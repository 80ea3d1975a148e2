"""Kopf controller for Swarm Learning custom resources (SwarmNetwork, LearningNode, SwarmTask)."""
