"""A small local record of executions: one JSON per execution under ``<workdir>/executions/``, read
by ``recpipe status`` and ``recpipe unlock``. The local engine writes one per run (moto's state dies
with the process); ``recpipe run --aws`` writes one for the execution it followed."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from recpipe.executions.exceptions import RecordNotFoundError


def new_execution_name(prefix: str = "local") -> str:
    """``local-20250101-120000-ab12``: a valid run id as is (lower-case slug, < 43 characters)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


def records_dir(workdir: Path) -> Path:
    return Path(workdir) / "executions"


def save(workdir: Path, record: dict[str, Any]) -> Path:
    directory = records_dir(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record['execution_name']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)
    return path


def all_records(workdir: Path) -> list[dict[str, Any]]:
    """Every record, oldest first."""
    directory = records_dir(workdir)
    if not directory.is_dir():
        return []
    out = []
    for path in directory.glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    out.sort(key=lambda r: str(r.get("started", "")))
    return out


def load(workdir: Path, run_id: str | None = None) -> dict[str, Any]:
    """The record of ``run_id`` (or execution name); the latest one when None."""
    records = all_records(workdir)
    if not records:
        raise RecordNotFoundError(f"No local executions recorded under {records_dir(workdir)}; run "
                                  "'recpipe run' first.")
    if run_id is None:
        return records[-1]
    for record in reversed(records):
        if run_id in (record.get("run_id"), record.get("execution_name"), record.get("execution_arn")):
            return record
    known = ", ".join(str(r.get("run_id") or r.get("execution_name")) for r in records[-5:])
    raise RecordNotFoundError(f"No local execution with run id '{run_id}' under {records_dir(workdir)} "
                              f"(latest: {known}).")
