"""The ``harness`` fixture: one moto execution environment per test (tests/unit/workflows/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.workflows.harness import Harness, make_harness


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    yield from make_harness(monkeypatch)
