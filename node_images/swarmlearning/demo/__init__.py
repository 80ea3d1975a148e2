"""Programs the ML image runs when a SwarmTask gives no command (``python -m swarmlearning.demo.digits``)."""
