"""The Commit step: the run's version becomes the one readers are served, or nothing changes.

After the "Publish" Map, Commit reads the shard list (``processed/shards/serve.json``, the same file
the Map's ItemReader read) and every shard's report (:func:`recpipe.results.shards.check_reports`).
Only when every entry reported, with one row per user, it completes the version item (users
written, top-ups, metrics) and flips the active pointer (:func:`recpipe.results.versions.commit_version`).
Otherwise it raises :class:`~recpipe.results.exceptions.ShardReportError`: the failure path releases
the lock and the previous version stays active. (A failing child already fails the Map on AWS,
``ToleratedFailureCount`` 0; this check is the proof Commit relies on, not the Map's ResultWriter
files.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from recpipe import runs
from recpipe.lambda_errors import InputError
from recpipe.results import shards, versions

logger = Logger(service="recpipe-commit")


@dataclass(frozen=True)
class CommitRequest:
    """The Commit event (docs/CONTRACTS.md), validated."""

    run_id: str
    shards: str          # s3:// URI of the shard list
    reports: str         # s3:// prefix of the shard reports
    metrics: dict[str, Any] | None = None

    @classmethod
    def from_event(cls, event: Any) -> CommitRequest:
        if not isinstance(event, Mapping):
            raise InputError(f"The Commit event must be a JSON object, got {type(event).__name__}.")
        missing = [key for key in ("run_id", "shards", "reports") if key not in event]
        if missing:
            raise InputError(f"The Commit event lacks {', '.join(repr(k) for k in missing)}.")
        shard_list = event["shards"]
        if isinstance(shard_list, Mapping):  # the ItemReader's {"Bucket", "Key"}
            bucket, key = shard_list.get("Bucket"), shard_list.get("Key")
            if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
                raise InputError(f"The Commit event's 'shards' must be an S3 URI or {{\"Bucket\", \"Key\"}}, "
                                 f"got {shard_list!r}.")
            shard_list = runs.s3_uri(bucket, key)
        checked = (("run_id", event["run_id"]), ("shards", shard_list), ("reports", event["reports"]))
        for key, value in checked:
            if not isinstance(value, str) or not value:
                raise InputError(f"The Commit event's {key!r} must be a non-empty string, got {value!r}.")
        runs.parse_s3_uri(shard_list)
        runs.parse_s3_uri(event["reports"])
        metrics = event.get("metrics")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise InputError(f"The Commit event's 'metrics' must be an object or null, got {metrics!r}.")
        return cls(event["run_id"], shard_list, event["reports"],
                   dict(metrics) if metrics is not None else None)


def commit(request: CommitRequest, *, s3: Any, dynamodb: Any, table: str,
           now: datetime | None = None) -> dict[str, Any]:
    """Check the reports, complete the version, flip the pointer. Returns ``{"run_id", "users_written",
    "topped_up_users", "previous_run_id", "shards"}``."""
    now = now or datetime.now(UTC)
    entries = shards.load_shard_list(s3, request.shards)
    totals = shards.check_reports(s3, request.run_id, entries, request.reports)
    committed = versions.commit_version(dynamodb, table, request.run_id, users=totals.users_written,
                                        topped_up=totals.topped_up_users, metrics=request.metrics, now=now)
    return {
        "run_id": request.run_id,
        "users_written": totals.users_written,
        "topped_up_users": totals.topped_up_users,
        "previous_run_id": committed["previous_run_id"],
        "shards": totals.shards,
    }
