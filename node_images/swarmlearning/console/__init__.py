"""The swarm console: a read-only REST API, live events and web UI for one swarm (docs/console.md)."""
