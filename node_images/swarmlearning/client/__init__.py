"""What every platform's ``SwarmCallback`` shares, framework-free (HPE's ``swarmlearning.client`` too).

``from swarmlearning.client.swarm import SwarmCallbackBase, SwarmError, SLPlatforms``
"""
