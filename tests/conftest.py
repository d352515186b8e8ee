"""Shared fixtures: one dynalite server per test session (the local engine's DynamoDB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dynalite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dynalite server on a free loopback port for the session; stopped by PID at the end."""
    from recpipe.local.dynamodb import Dynalite

    with Dynalite(Path(tmp_path_factory.mktemp("dynalite")) / "dynamodb") as server:
        yield server.endpoint
