"""Suite-wide hooks: how the tests are spread over pytest-xdist workers (tests/xdist_groups.py)."""

from __future__ import annotations

import pytest
from xdist_groups import assign_groups


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    assign_groups(items, config)
