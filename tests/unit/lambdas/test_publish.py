"""Publish: ranked, seen-filtered rows under the run's version, then the pointer flip; retries; rollback."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
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

from lambdas.publish import handler
from lambdas.publish.exceptions import WriteRetriesExhaustedError
from lambdas.publish.publish import PublishRequest, publish
from lambdas.publish.writer import BatchWriter
from recpipe import tables, vectors
from recpipe.lambda_errors import ConfigurationError, InputError, NotFoundError, SchemaVersionError
from recpipe.results.exceptions import PointerConflictError, VersionNotActivatableError
from recpipe.results.versions import activate

TABLE = "results"
BUCKET = "recpipe-test"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
N_USERS, N_ITEMS, K, TOP_N = 11, 40, 12, 5


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
    event: dict[str, Any]
    scores: np.ndarray  # (n_users, n_items) the k-NN scores
    seen: sp.csr_matrix
    user_ids: list[str]
    item_ids: list[str]


def make_run(aws: Aws, run_id: str = "r1", *, seed: int = 0, shards: int = 3,
             metrics: dict[str, Any] | None = None) -> Run:
    """Processed outputs and transform output written by hand, as CONTRACTS.md describes them."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{i:03d}" for i in range(N_USERS)]
    item_ids = [f"item-{i}" for i in range(N_ITEMS)]
    scores = rng.normal(size=(N_USERS, N_ITEMS)).round(4)
    seen = sp.random(N_USERS, N_ITEMS, density=0.15, format="lil", random_state=seed)
    seen[0, :] = 0
    # User 1 has seen all but 5 items: its 3 best and 2 worst. Its neighbours yield only 3 items;
    # the top-up adds the 2 others.
    by_score = np.argsort(-scores[1], kind="stable")
    seen[1, :] = 1
    seen[1, [*by_score[:3], *by_score[-2:]]] = 0
    seen = sp.csr_matrix(seen)
    seen.data[:] = 1.0
    processed = f"runs/{run_id}/processed/"
    manifest = {
        "schema_version": 1,
        "counts": {"users": N_USERS, "items": N_ITEMS},
        "feature_dim": N_USERS + N_ITEMS,
        "files": {"user_ids": "meta/user_ids.txt", "item_ids": "meta/item_ids.txt",
                  "seen_all": "meta/seen_all.npz", "seen_train": "meta/seen_train.npz"},
    }
    aws.s3.put_object(Bucket=BUCKET, Key=processed + "manifest.json", Body=json.dumps(manifest).encode())
    for name, ids in (("user_ids", user_ids), ("item_ids", item_ids)):
        body = ("\n".join(ids) + "\n").encode()
        aws.s3.put_object(Bucket=BUCKET, Key=f"{processed}meta/{name}.txt", Body=body)
    buf = io.BytesIO()
    sp.save_npz(buf, seen)
    aws.s3.put_object(Bucket=BUCKET, Key=processed + "meta/seen_all.npz", Body=buf.getvalue())

    transform = f"runs/{run_id}/serve/transform/"
    for start, stop in vectors.shard_ranges(N_USERS, shards):
        lines = []
        for u in range(start, stop):
            nearest = np.argsort(-scores[u], kind="stable")[:K]
            order = rng.permutation(K)  # the service's order is not to be trusted
            lines.append(json.dumps({
                "predicted_label": float(nearest[0]),
                "labels": [float(x) for x in nearest[order]],
                "distances": [float(scores[u, x]) for x in nearest[order]],
            }))
        key = transform + vectors.user_shard_name(start, stop) + ".out"
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines) + "\n").encode())
    event = {
        "run_id": run_id,
        "transform_output": f"s3://{BUCKET}/{transform}",
        "manifest": f"s3://{BUCKET}/{processed}manifest.json",
        "top_n": TOP_N,
        "ttl_days": 30,
        "metrics": metrics if metrics is not None else {"ndcg_at_10": 0.25, "users_evaluated": 11},
    }
    return Run(run_id, event, scores, seen, user_ids, item_ids)


def expected_items(run: Run, u: int) -> list[str]:
    """Top N by score among the k nearest, unseen; then the most popular unseen items."""
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


def run_publish(aws: Aws, run: Run, **kwargs: Any) -> dict[str, Any]:
    writer = kwargs.pop("writer", None) or BatchWriter(aws.ddb, TABLE, workers=2, sleep=lambda _: None)
    return publish(PublishRequest.from_event(run.event), s3=aws.s3, dynamodb=aws.ddb, table=TABLE,
                   now=kwargs.pop("now", NOW), writer=writer)


def test_publish_writes_ranked_unseen_rows_then_flips_the_pointer(aws: Aws) -> None:
    run = make_run(aws)
    result = run_publish(aws, run)
    assert result == {"run_id": "r1", "users_written": N_USERS, "topped_up_users": 1, "previous_run_id": None}

    for u, user_id in enumerate(run.user_ids):
        row = get(aws, tables.user_key(user_id, "r1"))
        assert row is not None
        assert row["user_id"] == user_id and row["run_id"] == "r1"
        assert row["generated_at"] == "2026-03-01T12:00:00Z"
        assert row[tables.TTL_ATTRIBUTE] == int((NOW + timedelta(days=30)).timestamp())
        assert [e["item_id"] for e in row["items"]] == expected_items(run, u), u
        ranked = [e["score"] for e in row["items"] if e["score"] is not None]
        assert ranked == sorted(ranked, reverse=True)
        assert all(isinstance(s, Decimal) for s in ranked)
        seen_ids = {run.item_ids[i] for i in run.seen[u].indices}
        assert seen_ids.isdisjoint(e["item_id"] for e in row["items"])
    # User 1 could only get 3 items from its neighbours: two more come from the top-up, without a score.
    heavy = get(aws, tables.user_key("u001", "r1"))
    assert heavy is not None
    assert [e["score"] is None for e in heavy["items"]] == [False] * 3 + [True] * 2
    first = get(aws, tables.user_key("u000", "r1"))
    assert first is not None
    assert first["items"][0]["score"] == Decimal(f"{run.scores[0].max():.7g}")

    version = get(aws, tables.version_key("r1"))
    assert version is not None
    assert version["state"] == "complete"
    assert version["users_written"] == N_USERS and version["topped_up_users"] == 1
    assert version["metrics"] == {"ndcg_at_10": Decimal("0.25"), "users_evaluated": Decimal(11)}
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer == {"pk": "meta#active", "sk": "pointer", "run_id": "r1", "ndcg_at_10": Decimal("0.25"),
                       "activated_at": "2026-03-01T12:00:00Z"}
    assert tables.TTL_ATTRIBUTE not in pointer


def test_republishing_the_same_run_gives_the_same_table(aws: Aws) -> None:
    run = make_run(aws)
    run_publish(aws, run)
    before = scan(aws)
    again = run_publish(aws, run, now=NOW + timedelta(hours=5))
    assert again["previous_run_id"] is None
    assert scan(aws) == before


def test_next_run_keeps_the_previous_version_and_can_be_rolled_back(aws: Aws) -> None:
    run_publish(aws, make_run(aws, "r1", seed=0))
    later = NOW + timedelta(days=1)
    result = run_publish(aws, make_run(aws, "r2", seed=1, metrics={}), now=later)
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


def test_a_failed_publish_leaves_the_previous_version_served(aws: Aws) -> None:
    run_publish(aws, make_run(aws, "r1"))
    with pytest.raises(RuntimeError, match="timed out"):
        run_publish(aws, make_run(aws, "r2", seed=1), writer=FailingWriter(aws.ddb, TABLE, workers=1))
    pointer = get(aws, tables.ACTIVE_KEY)
    assert pointer is not None and pointer["run_id"] == "r1"
    version = get(aws, tables.version_key("r2"))
    assert version is not None and version["state"] == "writing"
    with pytest.raises(VersionNotActivatableError, match="'r2' is in state 'writing'"):
        activate("r2", dynamodb=aws.ddb, table=TABLE)


def test_activate_refuses_unknown_and_expired_versions(aws: Aws) -> None:
    run_publish(aws, make_run(aws, "r1"))
    with pytest.raises(VersionNotActivatableError, match="'r9' is unknown"):
        activate("r9", dynamodb=aws.ddb, table=TABLE)
    with pytest.raises(VersionNotActivatableError, match="'r1' expired at 2026-03-31"):
        activate("r1", dynamodb=aws.ddb, table=TABLE, now=NOW + timedelta(days=31))


class MovesPointerWriter(BatchWriter):
    """Another run flips the pointer while this one is writing its rows."""

    def write(self, items: Any) -> int:
        self.dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "meta#active"}, "sk": {"S": "pointer"},
                                                      "run_id": {"S": "intruder"}})
        return super().write(items)


def test_pointer_flip_is_conditional(aws: Aws) -> None:
    run_publish(aws, make_run(aws, "r1"))
    with pytest.raises(PointerConflictError, match="changed from 'r1' to 'intruder'"):
        run_publish(aws, make_run(aws, "r2", seed=1), writer=MovesPointerWriter(aws.ddb, TABLE, workers=1))
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


def test_handler_reads_the_table_name_from_the_environment(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(aws)
    result = handler.lambda_handler(run.event, None, s3=aws.s3, dynamodb=aws.ddb)
    assert result["users_written"] == N_USERS
    monkeypatch.delenv(tables.TABLE_ENV)
    with pytest.raises(ConfigurationError, match=tables.TABLE_ENV):
        handler.lambda_handler(run.event, None, s3=aws.s3, dynamodb=aws.ddb)


GOOD = {"run_id": "r1", "transform_output": "s3://b/t/", "manifest": "s3://b/m.json", "top_n": 5,
        "ttl_days": 3}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "must be a JSON object"),
        ({k: v for k, v in GOOD.items() if k not in ("manifest", "top_n")}, "lacks 'manifest', 'top_n'"),
        ({**GOOD, "top_n": 0}, "'top_n' must be an int in \\[1, 1000\\], got 0"),
        ({**GOOD, "top_n": "5"}, "'top_n' must be an int"),
        ({**GOOD, "ttl_days": True}, "'ttl_days' must be an int"),
        ({**GOOD, "run_id": ""}, "'run_id' must be a non-empty string"),
        ({**GOOD, "metrics": [1]}, "'metrics' must be an object or null"),
        ({**GOOD, "manifest": "b/m.json"}, "Expected an S3 URI"),
    ],
)
def test_malformed_events_are_rejected(event: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PublishRequest.from_event(event)


def test_manifest_schema_version_is_checked(aws: Aws) -> None:
    run = make_run(aws)
    key = "runs/r1/processed/manifest.json"
    manifest = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({**manifest, "schema_version": 2}).encode())
    with pytest.raises(SchemaVersionError, match="schema_version 2"):
        run_publish(aws, run)


def test_missing_inputs_are_named(aws: Aws) -> None:
    run = make_run(aws)
    aws.s3.delete_object(Bucket=BUCKET, Key="runs/r1/processed/meta/seen_all.npz")
    missing = f"s3://{BUCKET}/runs/r1/processed/meta/seen_all.npz does not exist"
    with pytest.raises(NotFoundError, match=missing):
        run_publish(aws, run)
    assert get(aws, tables.ACTIVE_KEY) is None


def test_transform_output_with_the_wrong_number_of_lines_is_refused(aws: Aws) -> None:
    run = make_run(aws, shards=1)
    key = "runs/r1/serve/transform/" + vectors.user_shard_name(0, N_USERS) + ".out"
    body = aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=b"\n".join(body.splitlines()[:-1]))
    message = rf"holds {N_USERS - 1} records but its name says users \[0, {N_USERS}\)"
    with pytest.raises(InputError, match=message):
        run_publish(aws, run)
    assert get(aws, tables.ACTIVE_KEY) is None
