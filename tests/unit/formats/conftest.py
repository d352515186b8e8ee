"""Fixtures of the formats tests: the golden SageMaker artifacts in ``tests/fixtures``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import FM, FM_ROWSPARSE, NTM_REAL


@pytest.fixture(scope="session")
def fm_fixture() -> Path:
    return FM


@pytest.fixture(scope="session")
def fm_rowsparse_fixture() -> Path:
    return FM_ROWSPARSE


@pytest.fixture(scope="session")
def ntm_fixture() -> Path:
    return NTM_REAL / "model.tar.gz"
