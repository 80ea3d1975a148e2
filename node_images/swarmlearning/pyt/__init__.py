"""PyTorch binding, import-compatible with HPE Swarm Learning.

``from swarmlearning.pyt import SwarmCallback``
"""

from swarmlearning.pyt.callback import PrivacyBudgetSpent, SwarmCallback, SwarmError

__all__ = ["PrivacyBudgetSpent", "SwarmCallback", "SwarmError"]
