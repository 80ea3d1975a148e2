"""Privacy for the round protocol: what a round's leader and the swarm may learn about a site's weights.

``secagg`` is the cryptographic core of secure aggregation (the leader learns only the weighted sum of
the inputs, not any single one); differential privacy lives beside it. These modules are pure logic with
no torch and no networking: the SL node's round protocol calls them at each phase.
"""
