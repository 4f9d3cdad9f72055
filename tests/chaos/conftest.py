"""The chaos suite: long kill -9 loops, run by ``make chaos`` (``pytest -m chaos tests/chaos``).

Tests marked ``chaos`` are skipped unless the marker is selected, so ``make test`` keeps only
the bounded versions (unmarked tests in this folder) and stays fast.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long fault-injection loop: run it with `make chaos`")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
