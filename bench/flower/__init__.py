"""Flower side of the benchmarks. The scripts here run in ``.venv-bench`` (NumPy + flwr only) as
subprocesses; they never import the ``bench`` package, torch or this project's packages."""
