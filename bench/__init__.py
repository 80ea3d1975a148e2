"""Benchmarks of the swarm platform side by side with Flower and with physical limits (``make bench``).

Run everything with ``python -m bench`` (from the repository root, in ``.venv``), or one part with
``--only merge|round|quality|operator|scaling``; ``--quick`` caps sizes for development. Flower runs in
its own venv ``.venv-bench`` (see :mod:`bench.envs`) as subprocesses, so its pins never touch ``.venv``.
Every figure is reported as a ratio against a baseline measured in the same run. Results go to
``bench/results/latest.{md,json}`` plus PNG plots; a full run also refreshes ``bench/RESULTS.md``.
"""
