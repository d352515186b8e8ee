"""PublishShard and Commit: each shard's ranked, seen-filtered rows under the run's version, the
shard reports, then Commit's check, version and pointer flip; idempotent retries; rollback; the writer."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import numpy as np
import pytest
import scipy.sparse as sp
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas.commit import handler as commit_handler
from lambdas.commit.commit import CommitRequest, commit
from lambdas.publish import handler
from lambdas.publish.exceptions import WriteRetriesExhaustedError
from lambdas.publish.publish import PublishShardRequest, publish_shard
from lambdas.publish.writer import BatchWriter
from recpipe import tables, vectors
from recpipe.formats import recordio
from recpipe.lambda_errors import ConfigurationError, InputError, NotFoundError, SchemaVersionError
from recpipe.results import shards
from recpipe.results.exceptions import PointerConflictError, ShardReportError, VersionNotActivatableError
from recpipe.results.versions import activate

TABLE = "results"
BUCKET = "recpipe-test"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
STARTED = "2026-03-01T11:59:30.123Z"  # $$.Execution.StartTime: what every child's rows carry
STARTED_AT = datetime(2026, 3, 1, 11, 59, 30, 123000, tzinfo=UTC)
N_USERS, N_ITEMS, K, TOP_N, DIM = 11, 40, 12, 5, 6
USERS_PER_SHARD = 4
SIMILAR = 3  # publish.similar_items


@dataclass
class Aws:
    s3: Any
    ddb: Any


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    monkeypatch.setenv(tables.TABLE_ENV, TABLE)
    with mock_aws():
        s3: Any = boto3.client("s3")
        ddb: Any = boto3.client("dynamodb")
        s3.create_bucket(Bucket=BUCKET)
        ddb.create_table(**tables.create_table_kwargs(TABLE))
        yield Aws(s3, ddb)


@dataclass
class Run:
    run_id: str
    entries: list[dict[str, Any]]
    events: list[dict[str, Any]]          # one PublishShard event per entry (the Map's ItemSelector)
    commit_event: dict[str, Any]
    scores: np.ndarray                     # (n_users, n_items) exact float32 user . item
    seen: sp.csr_matrix
    user_ids: list[str]
    item_ids: list[str]
    reads: list[str] = field(default_factory=list)


def _put(aws: Aws, key: str, body: bytes) -> None:
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _npz(matrix: sp.csr_matrix) -> bytes:
    buf = io.BytesIO()
    sp.save_npz(buf, matrix)
    return buf.getvalue()


def _pbr(array: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    recordio.write_dense(buf, array.astype(np.float32), labels)
    return buf.getvalue()


def make_run(aws: Aws, run_id: str = "r1", *, seed: int = 0, items_shards: int = 1,
             metrics: dict[str, Any] | None = None, negate: bool = True) -> Run:
    """The processed layout of docs/CONTRACTS.md (shards/serve.json and per-shard files), Repackage's
    vectors and the k-NN transform output, written by hand. The transform's distances are negated
    (``negate``): only its labels may be used."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{i:03d}" for i in range(N_USERS)]
    item_ids = [f"item-{i}" for i in range(N_ITEMS)]
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    scores = users @ items.T
    seen = sp.random(N_USERS, N_ITEMS, density=0.15, format="lil", random_state=seed)
    seen[0, :] = 0
    # User 1 has seen all but 5 items: its 3 best and 2 worst. Its neighbours yield only 3 items;
    # the top-up adds the 2 others.
    by_score = np.argsort(-scores[1], kind="stable")
    seen[1, :] = 1
    seen[1, [*by_score[:3], *by_score[-2:]]] = 0
    seen = sp.csr_matrix(seen)
    seen.data[:] = 1.0
    popularity = np.asarray((seen != 0).sum(axis=0)).reshape(-1).astype(np.int64)

    processed = f"runs/{run_id}/processed/"
    manifest = {
        "schema_version": 1,
        "counts": {"users": N_USERS, "items": N_ITEMS},
        "feature_dim": N_USERS + N_ITEMS,
        "files": {"user_ids": "meta/user_ids.txt", "item_ids": "meta/item_ids.txt",
                  "seen_all": "meta/seen_all.npz", "popularity_all": "meta/popularity_all.npy"},
        "shards": {"users_per_shard": USERS_PER_SHARD, "serve": "shards/serve.json", "eval": None},
    }
    _put(aws, processed + "manifest.json", json.dumps(manifest).encode())
    for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
        _put(aws, f"{processed}meta/{name}.txt", ("\n".join(ids) + "\n").encode())
    _put(aws, processed + "meta/seen_all.npz", _npz(seen))  # global: no child may read it
    buf = io.BytesIO()
    np.save(buf, popularity)
    _put(aws, processed + "meta/popularity_all.npy", buf.getvalue())

    vectors_prefix = f"runs/{run_id}/serve/vectors/"
    _put(aws, vectors_prefix + "items/items.pbr", _pbr(items, np.arange(N_ITEMS, dtype=np.float32)))
    transform = f"runs/{run_id}/serve/transform/"
    entries: list[dict[str, Any]] = []
    for shard, start in enumerate(range(0, N_USERS, USERS_PER_SHARD)):
        stop = min(start + USERS_PER_SHARD, N_USERS)
        prefix = f"shards/serve/{shard:05d}/"
        entries.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
        _put(aws, processed + prefix + "user_ids.txt", ("\n".join(user_ids[start:stop]) + "\n").encode())
        _put(aws, processed + prefix + "seen.npz", _npz(seen[start:stop]))
        name = vectors.user_shard_name(start, stop)
        _put(aws, vectors_prefix + "users/" + name, _pbr(users[start:stop]))
        lines = []
        for u in range(start, stop):
            nearest = np.argsort(-scores[u], kind="stable")[:K]
            order = rng.permutation(K)  # the service's order is not to be trusted
            sign = -1.0 if negate else 1.0
            lines.append(json.dumps({
                "predicted_label": float(nearest[0]),
                "labels": [float(x) for x in nearest[order]],
                "distances": [sign * float(scores[u, x]) for x in nearest[order]],
            }))
        _put(aws, transform + name + ".out", ("\n".join(lines) + "\n").encode())
    for shard in range(items_shards):
        entries.append({"kind": "items", "shard": shard, "start": shard * 20,
                        "stop": min(N_ITEMS, shard * 20 + 20)})
    _put(aws, processed + "shards/serve.json", json.dumps(entries).encode())

    locations = shards.publish_locations(BUCKET, run_id, f"s3://{BUCKET}/{vectors_prefix}")
    common = {
        "run_id": run_id,
        "manifest": f"s3://{BUCKET}/{processed}manifest.json",
        "transform_output": f"s3://{BUCKET}/{transform}",
        "vectors": locations["vectors"],
        "reports": locations["reports"],
        "top_n": TOP_N,
        "ttl_days": 30,
        "started_at": STARTED,
        "similar_items": SIMILAR,
    }
    events = [{**common, "shard": entry} for entry in entries]
    if metrics is None:
        metrics = {"ndcg_at_10": 0.25, "users_evaluated": 11}
    commit_event = {"run_id": run_id, "shards": locations["shards"], "reports": locations["reports"],
                    "metrics": metrics}
    return Run(run_id, entries, events, commit_event, scores, seen, user_ids, item_ids)


def expected_items(run: Run, u: int) -> list[str]:
    """Top N by exact score among the k nearest, unseen; then the most popular unseen items."""
    nearest = np.argsort(-run.scores[u], kind="stable")[:K]
    seen_u = set(run.seen[u].indices.tolist())
    chosen = [int(i) for i in nearest if int(i) not in seen_u][:TOP_N]
    popularity = np.asarray(run.seen.sum(axis=0)).ravel()
    for i in sorted(range(N_ITEMS), key=lambda i: (-popularity[i], i)):
        if len(chosen) == TOP_N:
            break
        if i not in seen_u and i not in chosen:
            chosen.append(i)
    return [run.item_ids[i] for i in chosen]


def get(aws: Aws, key: dict[str, str]) -> dict[str, Any] | None:
    item = aws.ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in key.items()},
                            ConsistentRead=True).get("Item")
    return {k: TypeDeserializer().deserialize(v) for k, v in item.items()} if item else None


def scan(aws: Aws) -> list[dict[str, Any]]:
    items = aws.ddb.scan(TableName=TABLE)["Items"]
    return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def run_shard(aws: Aws, event: dict[str, Any], writer: BatchWriter | None = None) -> dict[str, Any]:
    writer = writer or BatchWriter(aws.ddb, TABLE, workers=2, sleep=lambda _: None)
    return publish_shard(PublishShardRequest.from_event(event), s3=aws.s3, dynamodb=aws.ddb, table=TABLE,
                         writer=writer)


def run_commit(aws: Aws, run: Run, now: datetime = NOW) -> dict[str, Any]:
    return commit(CommitRequest.from_event(run.commit_event), s3=aws.s3, dynamodb=aws.ddb, table=TABLE,
                  now=now)


def publish_all(aws: Aws, run: Run, now: datetime = NOW, writer: BatchWriter | None = None) -> dict[str, Any]:
    for event in run.events:
        run_shard(aws, event, writer)
    return run_commit(aws, run, now)


def test_shards_then_commit_write_ranked_unseen_rows_and_flip_the_pointer(aws: Aws) -> None:
    run = make_run(aws)
    result = publish_all(aws, run)
    assert result == {"run_id": "r1", "users_written": N_USERS, "topped_up_users": 1, "previous_run_id": None,
                      "shards": 4}

    expires = int((STARTED_AT + timedelta(days=30)).timestamp())
    for u, user_id in enumerate(run.user_ids):
        row = get(aws, tables.user_key(user_id, "r1"))
        assert row is not None
        assert row["user_id"] == user_id and row["run_id"] == "r1"
        assert row["generated_at"] == "2026-03-01T11:59:30Z"
        assert row[tables.TTL_ATTRIBUTE] == expires
        assert [e["item_id"] for e in row["items"]] == expected_items(run, u), u
        ranked = [e["score"] for e in row["items"] if e["score"] is not None]
        assert ranked == sorted(ranked, reverse=True)
        seen_ids = {run.item_ids[i] for i in run.seen[u].indices}
        assert seen_ids.isdisjoint(e["item_id"] for e in row["items"])
    # User 1 could only get 3 items from its neighbours: two more come from the top-up, without a score.
    heavy = get(aws, tables.user_key("u001", "r1"))
    assert heavy is not None
    assert [e["score"] is None for e in heavy["items"]] == [False] * 3 + [True] * 2
    first = get(aws, tables.user_key("u000", "r1"))
    assert first is not None  # the exact product, not the (negated) distance
    assert first["items"][0]["score"] == Decimal(f"{float(run.scores[0].max()):.7g}")

    version = get(aws, tables.version_key("r1"))
    assert version is not None
    assert version["state"] == "complete"
    assert version["users_written"] == N_USERS and version["topped_up_users"] == 1
    assert version["metrics"] == {"ndcg_at_10": Decimal("0.25"), "users_evaluated": Decimal(11)}
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer == {"pk": "meta#active", "sk": "pointer", "run_id": "r1", "ndcg_at_10": Decimal("0.25"),
                       "activated_at": "2026-03-01T12:00:00Z"}


def test_each_shard_reports_its_rows_and_items_entries_report_none_yet(aws: Aws) -> None:
    run = make_run(aws)
    reports = [run_shard(aws, event) for event in run.events]
    assert [(r["kind"], r["shard"], r["rows"]) for r in reports] == [
        ("users", 0, 4), ("users", 1, 4), ("users", 2, 3), ("items", 0, 20)]
    key = "runs/r1/publish/users-00002.json"
    stored = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored == reports[2] and stored["start"] == 8 and stored["stop"] == 11
    assert get(aws, tables.ACTIVE_KEY) is None  # no child flips anything


def test_items_shards_write_similar_items_and_the_popular_row(aws: Aws) -> None:
    run = make_run(aws, items_shards=2)
    reports = [run_shard(aws, event) for event in run.events if event["shard"]["kind"] == "items"]
    assert [(r["shard"], r["start"], r["stop"], r["rows"], r["popular"]) for r in reports] == [
        (0, 0, 20, 20, True), (1, 20, 40, 20, False)]
    similar = get(aws, tables.item_key("item-25", "r1"))
    assert similar is not None and len(similar["items"]) == SIMILAR
    assert "item-25" not in [e["item_id"] for e in similar["items"]]
    popular = get(aws, tables.popular_key("r1"))
    assert popular is not None and popular["generated_at"] == "2026-03-01T11:59:30Z"
    for event in run.events[:3]:
        run_shard(aws, event)
    assert run_commit(aws, run)["shards"] == 5


def test_a_child_reads_only_its_shard_and_per_item_files(aws: Aws) -> None:
    run = make_run(aws)
    keys: list[str] = []
    real_get = aws.s3.get_object

    def recording_get(**kwargs: Any) -> Any:
        keys.append(kwargs["Key"])
        return real_get(**kwargs)

    aws.s3.get_object = recording_get
    run_shard(aws, run.events[1])
    per_user_global = {"runs/r1/processed/meta/user_ids.txt", "runs/r1/processed/meta/seen_all.npz"}
    assert not per_user_global & set(keys)
    own = vectors.user_shard_name(4, 8)
    for key in keys:
        if "/shards/serve/" in key:
            assert "/shards/serve/00001/" in key, key
        if "/users-" in key:
            assert own in key, key


def test_a_retried_shard_rewrites_the_same_rows_and_report(aws: Aws) -> None:
    run = make_run(aws)
    publish_all(aws, run)
    before = scan(aws)
    report = aws.s3.get_object(Bucket=BUCKET, Key="runs/r1/publish/users-00001.json")["Body"].read()
    run_shard(aws, run.events[1])  # e.g. a Lambda retry after a timeout
    assert aws.s3.get_object(Bucket=BUCKET, Key="runs/r1/publish/users-00001.json")["Body"].read() == report
    # The version item is back to "writing" until Commit runs again; the rows are byte-identical.
    assert [i for i in scan(aws) if i["pk"]["S"].startswith("user#")] == \
        [i for i in before if i["pk"]["S"].startswith("user#")]
    again = run_commit(aws, run, now=NOW + timedelta(hours=5))
    assert again["previous_run_id"] is None
    assert scan(aws) == before


def test_children_without_a_start_time_agree_on_the_first_ones(aws: Aws) -> None:
    run = make_run(aws)
    first, second = ({**e, "started_at": None} for e in run.events[:2])
    publish_shard(PublishShardRequest.from_event(first), s3=aws.s3, dynamodb=aws.ddb, table=TABLE, now=NOW)
    publish_shard(PublishShardRequest.from_event(second), s3=aws.s3, dynamodb=aws.ddb, table=TABLE,
                  now=NOW + timedelta(minutes=3))
    stamps = {i["generated_at"]["S"] for i in scan(aws) if i["pk"]["S"].startswith("user#")}
    assert stamps == {"2026-03-01T12:00:00Z"}


def test_commit_refuses_when_a_shard_did_not_report(aws: Aws) -> None:
    publish_all(aws, make_run(aws, "r1"))
    run = make_run(aws, "r2", seed=1)
    for event in run.events:
        if event["shard"] != run.entries[1]:
            run_shard(aws, event)
    with pytest.raises(ShardReportError, match=r"1 of 4 shard\(s\) wrote no report .*users shard 1 \[4, 8\)"):
        run_commit(aws, run)
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None and pointer["run_id"] == "r1"
    version = get(aws, tables.version_key("r2"))
    assert version is not None and version["state"] == "writing"
    with pytest.raises(VersionNotActivatableError, match="'r2' is in state 'writing'"):
        activate("r2", dynamodb=aws.ddb, table=TABLE)


@pytest.mark.parametrize(("change", "message"), [
    ({"rows": 3}, "3 rows written for 4 users"),
    ({"run_id": "r0"}, "the report belongs to run 'r0'"),
    ({"stop": 9}, "the report's stop is 9"),
    ({"rows": "4"}, "its 'rows' is '4'"),
])
def test_commit_refuses_a_report_that_does_not_match_its_shard(aws: Aws, change: dict[str, Any],
                                                               message: str) -> None:
    run = make_run(aws)
    for event in run.events:
        run_shard(aws, event)
    key = "runs/r1/publish/users-00001.json"
    report = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    _put(aws, key, json.dumps({**report, **change}).encode())
    with pytest.raises(ShardReportError, match=message):
        run_commit(aws, run)
    assert get(aws, tables.ACTIVE_KEY) is None


def test_next_run_keeps_the_previous_version_and_can_be_rolled_back(aws: Aws) -> None:
    publish_all(aws, make_run(aws, "r1", seed=0))
    later = NOW + timedelta(days=1)
    result = publish_all(aws, make_run(aws, "r2", seed=1, metrics={}), now=later)
    assert result["previous_run_id"] == "r1"
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None
    assert (pointer["run_id"], pointer["previous_run_id"]) == ("r2", "r1")
    assert "ndcg_at_10" not in pointer  # r2 came without metrics
    assert get(aws, tables.user_key("u000", "r1")) is not None  # the old version stays until its TTL

    rolled_back = activate("r1", dynamodb=aws.ddb, table=TABLE, now=later)
    assert rolled_back == {"run_id": "r1", "previous_run_id": "r2"}
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None
    assert (pointer["run_id"], pointer["previous_run_id"]) == ("r1", "r2")
    assert pointer["ndcg_at_10"] == Decimal("0.25")  # from r1's version item
    # Activating the active version changes nothing.
    assert activate("r1", dynamodb=aws.ddb, table=TABLE, now=later)["previous_run_id"] == "r2"


class FailingWriter(BatchWriter):
    def write(self, items: Any) -> int:
        written = super().write(list(items)[:3])
        raise RuntimeError(f"Lambda timed out after {written} rows")


def test_a_failed_shard_writes_no_report_and_commit_refuses(aws: Aws) -> None:
    publish_all(aws, make_run(aws, "r1"))
    run = make_run(aws, "r2", seed=1)
    with pytest.raises(RuntimeError, match="timed out"):
        run_shard(aws, run.events[0], writer=FailingWriter(aws.ddb, TABLE, workers=1))
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/r2/publish/")
    for event in run.events[1:]:
        run_shard(aws, event)
    with pytest.raises(ShardReportError, match="users shard 0"):
        run_commit(aws, run)
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None and pointer["run_id"] == "r1"


def test_activate_refuses_unknown_and_expired_versions(aws: Aws) -> None:
    publish_all(aws, make_run(aws, "r1"))
    with pytest.raises(VersionNotActivatableError, match="'r9' is unknown"):
        activate("r9", dynamodb=aws.ddb, table=TABLE)
    with pytest.raises(VersionNotActivatableError, match="'r1' expired at 2026-03-31"):
        activate("r1", dynamodb=aws.ddb, table=TABLE, now=NOW + timedelta(days=31))


def test_commit_refuses_a_version_never_begun(aws: Aws) -> None:
    run = make_run(aws, items_shards=0)
    run.commit_event["shards"] = {"Bucket": BUCKET, "Key": "runs/r1/empty.json"}
    _put(aws, "runs/r1/empty.json", b"[]")
    with pytest.raises(VersionNotActivatableError, match="'r1' was never begun"):
        run_commit(aws, run)


class MovesPointerWriter(BatchWriter):
    """A rollback flips the pointer while this run's shards are being written."""

    def write(self, items: Any) -> int:
        self.dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "meta#active"}, "sk": {"S": "pointer"},
                                                      "run_id": {"S": "intruder"}})
        return super().write(items)


def test_pointer_flip_is_conditional_on_the_pointer_the_version_began_with(aws: Aws) -> None:
    publish_all(aws, make_run(aws, "r1"))
    run = make_run(aws, "r2", seed=1)
    with pytest.raises(PointerConflictError, match="changed from 'r1' to 'intruder'"):
        publish_all(aws, run, writer=MovesPointerWriter(aws.ddb, TABLE, workers=1))
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None and pointer["run_id"] == "intruder"


class ThrottlingClient:
    """Wraps a real client: throttles some calls, leaves part of other batches unprocessed."""

    def __init__(self, real: Any, seed: int, *, always: bool = False,
                 code: str = "ThrottlingException") -> None:
        self.real, self.rng, self.always, self.code = real, random.Random(seed), always, code
        self.throttled = self.partial = 0

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
        if self.always or self.rng.random() < 0.3:
            self.throttled += 1
            raise ClientError({"Error": {"Code": self.code, "Message": "slow down"}}, "BatchWriteItem")
        (table, requests), = RequestItems.items()
        keep = self.rng.randint(0, len(requests)) if self.rng.random() < 0.5 else len(requests)
        if keep:
            self.real.batch_write_item(RequestItems={table: requests[:keep]})
        if keep < len(requests):
            self.partial += 1
            return {"UnprocessedItems": {table: requests[keep:]}}
        return {"UnprocessedItems": {}}


def test_writer_retries_throttling_and_unprocessed_items_without_losing_any(aws: Aws) -> None:
    client = ThrottlingClient(aws.ddb, seed=4)
    sleeps: list[float] = []
    writer = BatchWriter(client, TABLE, max_attempts=30, base_delay=0.01, max_delay=0.2, workers=3,
                         sleep=sleeps.append, rng=random.Random(1))
    items = [{"pk": {"S": f"user#{i}"}, "sk": {"S": "v#x"}, "n": {"N": str(i)}} for i in range(260)]
    assert writer.write(iter(items)) == 260
    assert client.throttled > 0 and client.partial > 0
    assert len(sleeps) == writer.retries > 0
    assert all(0.0 <= s <= 0.2 for s in sleeps)
    stored = {i["pk"]["S"] for i in scan(aws)}
    assert stored == {f"user#{i}" for i in range(260)}


def test_writer_gives_up_after_capped_attempts_and_says_how_many_items_are_left(aws: Aws) -> None:
    client = ThrottlingClient(aws.ddb, seed=0, always=True, code="ProvisionedThroughputExceededException")
    sleeps: list[float] = []
    writer = BatchWriter(client, TABLE, max_attempts=4, base_delay=1.0, max_delay=3.0, workers=1,
                         sleep=sleeps.append)
    items = [{"pk": {"S": f"user#{i}"}, "sk": {"S": "v#x"}} for i in range(7)]
    with pytest.raises(WriteRetriesExhaustedError, match=r"7 of 7 item.* after 4 attempts .*pk=user#0"):
        writer.write(items)
    assert client.throttled == 4
    # Full jitter: each pause is drawn from [0, min(cap, base * 2**attempt)].
    assert len(sleeps) == 3 and all(0 <= s <= bound for s, bound in zip(sleeps, [1.0, 2.0, 3.0], strict=True))


def test_writer_does_not_retry_other_errors(aws: Aws) -> None:
    client = ThrottlingClient(aws.ddb, seed=0, always=True, code="ValidationException")
    writer = BatchWriter(client, TABLE, workers=1, sleep=lambda _: None)
    with pytest.raises(ClientError, match="ValidationException"):
        writer.write([{"pk": {"S": "user#1"}, "sk": {"S": "v#x"}}])
    assert client.throttled == 1


def test_handlers_read_the_table_name_from_the_environment(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(aws)
    for event in run.events:
        assert handler.lambda_handler(event, None, s3=aws.s3, dynamodb=aws.ddb)["run_id"] == "r1"
    result = commit_handler.lambda_handler(run.commit_event, None, s3=aws.s3, dynamodb=aws.ddb)
    assert result["users_written"] == N_USERS
    monkeypatch.delenv(tables.TABLE_ENV)
    with pytest.raises(ConfigurationError, match=tables.TABLE_ENV):
        handler.lambda_handler(run.events[0], None, s3=aws.s3, dynamodb=aws.ddb)
    with pytest.raises(ConfigurationError, match=tables.TABLE_ENV):
        commit_handler.lambda_handler(run.commit_event, None, s3=aws.s3, dynamodb=aws.ddb)


SHARD = {"kind": "users", "shard": 0, "start": 0, "stop": 4, "prefix": "shards/serve/00000/"}
GOOD = {"run_id": "r1", "shard": SHARD, "manifest": "s3://b/p/manifest.json", "transform_output": "s3://b/t/",
        "vectors": "s3://b/v/", "reports": "s3://b/r/", "top_n": 5, "ttl_days": 3,
        "started_at": "2026-03-01T11:59:30.123Z"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "must be a JSON object"),
        ({k: v for k, v in GOOD.items() if k not in ("manifest", "top_n")}, "lacks 'manifest', 'top_n'"),
        ({**GOOD, "top_n": 0}, "'top_n' must be an int in \\[1, 1000\\], got 0"),
        ({**GOOD, "ttl_days": True}, "'ttl_days' must be an int"),
        ({**GOOD, "run_id": ""}, "'run_id' must be a non-empty string"),
        ({**GOOD, "vectors": "b/v/"}, "Expected an S3 URI"),
        ({**GOOD, "started_at": "yesterday"}, "'started_at' is not an ISO 8601 time"),
        ({**GOOD, "shard": {**SHARD, "kind": "pairs"}}, "'kind' must be one of users, items"),
        ({**GOOD, "shard": {**SHARD, "stop": 0}}, r"the range \[0, 0\) is empty"),
        ({**GOOD, "shard": {**SHARD, "start": -1}}, "'start' must be an int >= 0"),
        ({**GOOD, "shard": {k: v for k, v in SHARD.items() if k != "prefix"}},
         "a users entry needs its 'prefix'"),
    ],
)
def test_malformed_shard_events_are_rejected(event: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PublishShardRequest.from_event(event)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("x", "must be a JSON object"),
        ({"run_id": "r1", "reports": "s3://b/r/"}, "lacks 'shards'"),
        ({"run_id": "r1", "shards": {"Bucket": "b"}, "reports": "s3://b/r/"},
         "'shards' must be an S3 URI or"),
        ({"run_id": "r1", "shards": "s3://b/s.json", "reports": "s3://b/r/", "metrics": [1]},
         "'metrics' must be an object or null"),
    ],
)
def test_malformed_commit_events_are_rejected(event: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        CommitRequest.from_event(event)


def test_shard_list_problems_are_named(aws: Aws) -> None:
    run = make_run(aws)
    key = "runs/r1/processed/shards/serve.json"
    _put(aws, key, json.dumps([*run.entries, run.entries[0]]).encode())
    with pytest.raises(InputError, match=r"serve.json entry 4: users shard 0 is listed twice"):
        run_commit(aws, run)
    _put(aws, key, b'{"kind": "users"}')
    with pytest.raises(InputError, match=r"serve\.json must be a JSON array"):
        run_commit(aws, run)


def test_manifest_schema_version_is_checked(aws: Aws) -> None:
    run = make_run(aws)
    key = "runs/r1/processed/manifest.json"
    manifest = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    _put(aws, key, json.dumps({**manifest, "schema_version": 2}).encode())
    with pytest.raises(SchemaVersionError, match="schema_version 2"):
        run_shard(aws, run.events[0])


def test_missing_shard_inputs_are_named(aws: Aws) -> None:
    run = make_run(aws)
    aws.s3.delete_object(Bucket=BUCKET, Key="runs/r1/processed/shards/serve/00001/seen.npz")
    missing = f"s3://{BUCKET}/runs/r1/processed/shards/serve/00001/seen.npz does not exist"
    with pytest.raises(NotFoundError, match=missing):
        run_shard(aws, run.events[1])


def test_transform_output_with_the_wrong_number_of_lines_is_refused(aws: Aws) -> None:
    run = make_run(aws)
    key = "runs/r1/serve/transform/" + vectors.user_shard_name(4, 8) + ".out"
    body = aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    _put(aws, key, b"\n".join(body.splitlines()[:-1]))
    with pytest.raises(InputError, match=r"holds 3 records but its name says users \[4, 8\)"):
        run_shard(aws, run.events[1])


def test_user_vectors_of_the_wrong_shard_size_are_refused(aws: Aws) -> None:
    run = make_run(aws)
    key = "runs/r1/serve/vectors/users/" + vectors.user_shard_name(4, 8)
    _put(aws, key, _pbr(np.zeros((3, DIM))))
    with pytest.raises(InputError, match="holds 3 user vectors; expected 4"):
        run_shard(aws, run.events[1])
