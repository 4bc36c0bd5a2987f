"""One example budget for every property-based (hypothesis) test.

The normal run is small and reproducible (a fixed seed); ``ECGMON_FUZZ_EXAMPLES=N`` raises
the budget for a long run and lets hypothesis pick new examples each time::

    ECGMON_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests -k fuzz -q
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(max_examples: int = 200) -> settings:
    """Settings for one fuzz test: ``max_examples`` in the normal run, more on request."""
    long_run = os.environ.get("ECGMON_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(long_run) if long_run else max_examples,
        deadline=None,
        derandomize=not long_run,
        # Tests that write files use pytest's tmp_path: the same folder for every example.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
