"""The first-run check on a deployed stack (docs/DEPLOY.md, "First run on your account").

Collected only when ``RECPIPE_AWS_STACK`` names a deployed stack: it uploads data, runs the real
pipeline (SageMaker jobs cost money, a run takes ~30-60 minutes) and reads the artifacts. Never part
of ``make test``; without the variable pytest skips this directory at collection (nothing of it is
imported).

    RECPIPE_AWS_STACK=Recpipe AWS_REGION=eu-west-1 .venv/bin/python -m pytest tests/aws -s

The figures are gathered in one report, printed at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STACK_ENV = "RECPIPE_AWS_STACK"

# Without a stack, nothing here is collected (conftest.py itself is not a test module).
collect_ignore_glob = [] if os.environ.get(STACK_ENV) else ["*.py"]


@pytest.fixture(scope="session")
def report() -> Iterator[dict[str, Any]]:
    """Findings by section; printed by :func:`pytest_terminal_summary`."""
    findings: dict[str, Any] = {}
    yield findings


_REPORTS: list[dict[str, Any]] = []


@pytest.fixture(scope="session", autouse=True)
def _keep_report(report: dict[str, Any]) -> None:
    _REPORTS.append(report)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.aws.first_run import format_report

    for findings in _REPORTS:
        if findings:
            terminalreporter.write_sep("=", "recpipe first-run report")
            terminalreporter.write_line(format_report(findings))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("first-run"))
