"""``swarmctl``: the command line (certificates, SN nodes, ledger audit, local runs, cluster views)."""
