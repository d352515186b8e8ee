"""Shared fixtures of the formats tests: the golden SageMaker artifacts under /work/shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("RECPIPE_SHARED_FIXTURES", "/work/shared/fixtures"))


@pytest.fixture(scope="session")
def fm_fixture() -> Path:
    path = FIXTURES / "sagemaker-fm"
    if not (path / "model.tar.gz").exists():
        pytest.skip(f"golden FM artifact not found under {path}")
    return path


@pytest.fixture(scope="session")
def ntm_fixture() -> Path:
    path = FIXTURES / "sagemaker-ntm-real" / "model.tar.gz"
    if not path.exists():
        pytest.skip(f"real NTM artifact not found at {path}")
    return path
