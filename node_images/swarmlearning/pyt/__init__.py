"""PyTorch binding, import-compatible with HPE Swarm Learning.

``from swarmlearning.pyt import SwarmCallback``
"""

from swarmlearning.pyt.callback import SwarmCallback, SwarmError

__all__ = ["SwarmCallback", "SwarmError"]
