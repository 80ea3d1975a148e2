"""Hypothesis settings for tests/fuzz: deterministic (derandomize, no example database) and bounded."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> settings:
    """Settings for one fuzz test: the same examples every run, ``max_examples`` of them, no per-example
    deadline (a slow machine is not a finding; hangs are caught by pytest-timeout)."""
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=max_examples,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )
