"""The Publish fan-out's files: the shard list the Map reads, and the report each shard writes.

The processing step writes ``processed/shards/serve.json``: a JSON array, user shards first, then
item shards (docs/CONTRACTS.md)::

    {"kind": "users", "shard": 0, "start": 0, "stop": 25000, "prefix": "shards/serve/00000/"}
    {"kind": "items", "shard": 0, "start": 0, "stop": 25000}

The "Publish" Distributed Map reads it with its ``ItemReader`` (never through the state data: at
thousands of shards the list would outgrow the 256 KB state limit) and runs one "PublishShard" child
per entry. Each child writes its report to ``runs/<id>/publish/<kind>-<shard:05d>.json``
(:func:`report_uri`), and "Commit" accepts the run only when every entry has a report that matches
it (:func:`check_reports`). The Map's ``ResultWriter`` output is for operators; Commit does not read
it (moto, the local engine's interpreter, writes only its manifest).

:func:`publish_locations` is the run document's ``publish`` block (Prepare writes it): where the
Map and its children read and write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from recpipe import runs
from recpipe.lambda_errors import InputError, NotFoundError
from recpipe.results.exceptions import ShardReportError

KIND_USERS = "users"
KIND_ITEMS = "items"
KINDS = (KIND_USERS, KIND_ITEMS)
SERVE_SHARDS = "shards/serve.json"  # relative to the processed prefix
REPORTS_DIR = "publish"  # under the run prefix
# Reports are small objects: Commit reads them this many at a time (thousands of shards in seconds).
READ_THREADS = 16


def publish_locations(bucket: str, run_id: str, serve_vectors: str) -> dict[str, Any]:
    """The run document's ``publish`` block: ``shards`` (the ItemReader's Bucket/Key), ``reports``
    (the shard reports' prefix URI), ``vectors`` (the serve variant's vectors prefix: Repackage's
    ``items/`` and ``users/`` are under it)."""
    run_key = runs.parse_s3_uri(runs.run_prefix(bucket, run_id))[1]
    return {
        "shards": {"Bucket": bucket, "Key": f"{run_key}processed/{SERVE_SHARDS}"},
        "reports": runs.prefix_uri(runs.run_prefix(bucket, run_id), REPORTS_DIR),
        "vectors": serve_vectors,
    }


@dataclass(frozen=True)
class ShardEntry:
    """One entry of ``shards/serve.json``: index range ``[start, stop)`` of users or items."""

    kind: str
    shard: int
    start: int
    stop: int
    prefix: str | None = None  # users: the shard's files, relative to the processed prefix

    @classmethod
    def parse(cls, value: Any, where: str) -> ShardEntry:
        """Validate one entry; ``where`` names it in errors (e.g. ``s3://.../serve.json entry 3``)."""
        if not isinstance(value, Mapping):
            raise InputError(f"{where} must be a JSON object, got {type(value).__name__}.")
        kind = value.get("kind")
        if kind not in KINDS:
            raise InputError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}.")
        numbers = {}
        for key in ("shard", "start", "stop"):
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, int) or number < 0:
                raise InputError(f"{where}: {key!r} must be an int >= 0, got {number!r}.")
            numbers[key] = number
        if numbers["stop"] <= numbers["start"]:
            raise InputError(f"{where}: the range [{numbers['start']}, {numbers['stop']}) is empty.")
        prefix = value.get("prefix")
        if kind == KIND_USERS and (not isinstance(prefix, str) or not prefix):
            raise InputError(f"{where}: a users entry needs its 'prefix' (a path under processed/), "
                             f"got {prefix!r}.")
        return cls(kind, numbers["shard"], numbers["start"], numbers["stop"],
                   prefix if isinstance(prefix, str) else None)

    @property
    def size(self) -> int:
        return self.stop - self.start

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "shard": self.shard, "start": self.start, "stop": self.stop}
        if self.prefix is not None:
            out["prefix"] = self.prefix
        return out


def parse_shard_list(document: Any, where: str) -> list[ShardEntry]:
    """Validate a shard list: entries as :meth:`ShardEntry.parse`; per kind, shard numbers unique."""
    if not isinstance(document, list):
        raise InputError(f"{where} must be a JSON array of shard entries, got {type(document).__name__}.")
    entries = [ShardEntry.parse(value, f"{where} entry {i}") for i, value in enumerate(document)]
    seen: set[tuple[str, int]] = set()
    for i, entry in enumerate(entries):
        if (entry.kind, entry.shard) in seen:
            raise InputError(f"{where} entry {i}: {entry.kind} shard {entry.shard} is listed twice.")
        seen.add((entry.kind, entry.shard))
    return entries


def load_shard_list(s3: Any, uri: str) -> list[ShardEntry]:
    return parse_shard_list(runs.get_json(s3, uri), uri)


def report_uri(reports: str, kind: str, shard: int) -> str:
    """``<reports>/<kind>-<shard:05d>.json``."""
    return runs.join_uri(reports, f"{kind}-{shard:05d}.json")


def shard_report(run_id: str, entry: ShardEntry, *, rows: int, **extra: Any) -> dict[str, Any]:
    """The report a child writes: the entry it handled, the rows it wrote, plus ``extra`` counts."""
    return {"run_id": run_id, **entry.as_json(), "rows": rows, **extra}


@dataclass(frozen=True)
class ReportTotals:
    """What Commit records in the version item."""

    shards: int
    users_written: int
    topped_up_users: int
    item_rows: int


def check_reports(s3: Any, run_id: str, entries: Sequence[ShardEntry], reports: str) -> ReportTotals:
    """Read every entry's report and check it: present, same run, same range, and for users one
    row per user. Raises :class:`ShardReportError` naming the shards that failed (all of them, the
    first few in full)."""

    def read(entry: ShardEntry) -> dict[str, Any] | None:
        try:
            report = runs.get_json(s3, report_uri(reports, entry.kind, entry.shard))
        except NotFoundError:
            return None
        return report if isinstance(report, dict) else {"malformed": report}

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        found = list(pool.map(read, entries))
    missing: list[str] = []
    wrong: list[str] = []
    users = topped = item_rows = 0
    for entry, report in zip(entries, found, strict=True):
        name = f"{entry.kind} shard {entry.shard} [{entry.start}, {entry.stop})"
        if report is None:
            missing.append(name)
            continue
        problem = _report_problem(run_id, entry, report)
        if problem:
            wrong.append(f"{name}: {problem}")
            continue
        if entry.kind == KIND_USERS:
            users += int(report["rows"])
            topped += int(report.get("topped_up", 0))
        else:
            item_rows += int(report["rows"])
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(entries)} shard(s) wrote no report under {reports} "
                         f"({'; '.join(missing[:5])}{'; ...' if len(missing) > 5 else ''})")
        if wrong:
            parts.append(f"{len(wrong)} report(s) do not match their shard "
                         f"({'; '.join(wrong[:5])}{'; ...' if len(wrong) > 5 else ''})")
        raise ShardReportError(f"Run {run_id} cannot be committed: " + ", and ".join(parts)
                               + ". Nothing was activated; the previous version is still served.")
    return ReportTotals(len(entries), users, topped, item_rows)


def _report_problem(run_id: str, entry: ShardEntry, report: Mapping[str, Any]) -> str | None:
    if "malformed" in report:
        return "the report is not a JSON object"
    if report.get("run_id") != run_id:
        return f"the report belongs to run {report.get('run_id')!r}"
    for key in ("kind", "start", "stop"):
        if report.get(key) != getattr(entry, key):
            return f"the report's {key} is {report.get(key)!r}"
    rows = report.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        return f"its 'rows' is {rows!r}"
    if entry.kind == KIND_USERS and rows != entry.size:
        return f"{rows} rows written for {entry.size} users"
    return None


def kinds_of(entries: Iterable[ShardEntry]) -> dict[str, int]:
    """Entries per kind (for logs)."""
    counts = dict.fromkeys(KINDS, 0)
    for entry in entries:
        counts[entry.kind] += 1
    return counts
