"""Publish at scale, locally: the deployed "Publish" Distributed Map + "Commit" over synthetic shards.

Writes a synthetic serve variant for ``--users`` users in shards of ``--users-per-shard`` (the layout
of docs/CONTRACTS.md: ``processed/shards/serve.json``, per-shard ``user_ids.txt``/``seen.npz``,
Repackage's user and item vectors, the k-NN transform output), then runs the two states taken from
``workflows/statemachine.asl.json`` in moto's interpreter with the local engine's hook (the real
PublishShard and Commit handlers, children ``--concurrency`` at a time) against dynalite, and checks
that every user has a row under the new version and the pointer flipped.

Baseline, measured in the same run: one child's writer alone (``BatchWriter``, 8 threads) putting
one shard's pre-built rows into the same dynalite. ``publish_vs_one_writer`` is the whole Publish's
rows per second over that baseline's (what the concurrent children buy on this machine).

    .venv/bin/python bench/publish.py [--users 300000] [--users-per-shard 25000] [--concurrency 8]

Ends with ``RESULT users=<n> shards=<n> publish_s=<s> rows_per_s=<r> one_writer_rows_per_s=<r>
publish_vs_one_writer=<ratio> users_written=<n> peak_rss_mb=<MB>``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import re
import resource
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import scipy.sparse as sp

from recpipe import tables, vectors
from recpipe.formats import recordio
from recpipe.results import shards

BUCKET, TABLE, REGION, ACCOUNT = "recpipe-bench", "recpipe-bench", "us-east-1", "123456789012"
N_ITEMS, DIM, K, TOP_N, SEEN = 20_000, 33, 50, 20, 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def pbr(array: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    recordio.write_dense(buf, array, labels)
    return buf.getvalue()


def write_run(s3: Any, run_id: str, n_users: int, per_shard: int,
              rng: np.random.Generator) -> list[dict[str, Any]]:
    import orjson

    processed, vec, transform = (f"runs/{run_id}/processed/", f"runs/{run_id}/serve/vectors/",
                                 f"runs/{run_id}/serve/transform/")
    popularity = rng.zipf(1.3, N_ITEMS).astype(np.int64)
    buf = io.BytesIO()
    np.save(buf, popularity)
    put(s3, processed + "meta/popularity_all.npy", buf.getvalue())
    put(s3, processed + "meta/item_ids.txt", "".join(f"item-{i}\n" for i in range(N_ITEMS)).encode())
    manifest = {"schema_version": 1, "counts": {"users": n_users, "items": N_ITEMS},
                "files": {"item_ids": "meta/item_ids.txt", "popularity_all": "meta/popularity_all.npy"},
                "shards": {"users_per_shard": per_shard, "serve": shards.SERVE_SHARDS, "eval": None}}
    put(s3, processed + "manifest.json", json.dumps(manifest).encode())
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    put(s3, vec + "items/items.pbr", pbr(items, np.arange(N_ITEMS, dtype=np.float32)))
    entries = []
    for shard, start in enumerate(range(0, n_users, per_shard)):
        stop = min(start + per_shard, n_users)
        n = stop - start
        prefix = f"shards/serve/{shard:05d}/"
        entries.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
        ids = "".join(f"user-{u}\n" for u in range(start, stop))
        put(s3, processed + prefix + "user_ids.txt", ids.encode())
        cols = rng.integers(0, N_ITEMS, size=(n, SEEN))
        seen = sp.csr_matrix((np.ones(cols.size, np.float32), (np.repeat(np.arange(n), SEEN), cols.ravel())),
                             shape=(n, N_ITEMS))
        seen.sum_duplicates()
        buf = io.BytesIO()
        sp.save_npz(buf, seen)
        put(s3, processed + prefix + "seen.npz", buf.getvalue())
        name = vectors.user_shard_name(start, stop)
        put(s3, vec + "users/" + name, pbr(rng.normal(size=(n, DIM)).astype(np.float32)))
        labels = rng.integers(0, N_ITEMS, size=(n, K)).astype(np.float64)
        distances = np.sort(rng.normal(size=(n, K)).astype(np.float32), axis=1)
        lines = b"\n".join(orjson.dumps({"labels": lab, "distances": dis}, option=orjson.OPT_SERIALIZE_NUMPY)
                           for lab, dis in zip(labels, distances, strict=True))
        put(s3, transform + name + ".out", lines + b"\n")
    for shard in range(-(-N_ITEMS // per_shard)):
        entries.append({"kind": "items", "shard": shard, "start": shard * per_shard,
                        "stop": min(N_ITEMS, (shard + 1) * per_shard)})
    put(s3, processed + shards.SERVE_SHARDS, json.dumps(entries).encode())
    return entries


def publish_machine() -> str:
    """The deployed Publish and Commit states, ending in Succeed/Fail, placeholders filled."""
    from workflows.definition import load_definition

    top = load_definition()["States"]
    publish, commit = copy.deepcopy(top["Publish"]), copy.deepcopy(top["Commit"])
    catch = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}]
    publish["Catch"], commit["Catch"], commit["Next"] = catch, catch, "Done"
    machine = {"StartAt": "Publish", "States": {
        "Publish": publish, "Commit": commit, "Done": {"Type": "Succeed"},
        "Failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"}}}
    values = {"DataBucket": BUCKET,
              **{f"{name}FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
                 for name in ("PublishShard", "Commit")}}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], json.dumps(machine))


def one_writer_baseline(ddb: Any, per_shard: int) -> float:
    """Rows per second of one BatchWriter (as one child uses it) putting one shard's rows."""
    from lambdas.publish.publish import user_rows
    from lambdas.publish.writer import BatchWriter
    from recpipe import topn

    n = min(per_shard, 25_000)
    ranked = topn.Ranked(np.tile(np.arange(TOP_N), (n, 1)), np.full((n, TOP_N), 0.5), 0)
    rows = list(user_rows(ranked, [f"base-{u}" for u in range(n)], [{"S": f"item-{i}"} for i in range(TOP_N)],
                          "baseline", "2026-01-01T00:00:00Z", 1_900_000_000))
    start = time.perf_counter()
    written = BatchWriter(ddb, TABLE).write(rows)
    return written / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--users-per-shard", type=int, default=25_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--similar-items", type=int, default=0,
                        help="publish.similar_items for the items shards (0: only their popular row)")
    args = parser.parse_args()

    import boto3
    from moto import mock_aws

    from recpipe.executions.follow import follow
    from recpipe.local.dynamodb import Dynalite, client, ensure_table
    from recpipe.local.lambdas import LocalLambda
    from recpipe.local.moto_hook import installed
    from workflows.definition import FUNCTIONS

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, Dynalite(Path(tmp) / "dynamodb") as dynalite:
        ensure_table(dynalite.endpoint, TABLE)
        env = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
               "AWS_ENDPOINT_URL_DYNAMODB": dynalite.endpoint, tables.TABLE_ENV: TABLE,
               tables.BUCKET_ENV: BUCKET, "POWERTOOLS_LOG_LEVEL": "ERROR"}
        with mock.patch.dict(os.environ, env), mock_aws():
            os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = dynalite.endpoint
            s3 = boto3.client("s3", region_name=REGION)
            s3.create_bucket(Bucket=BUCKET)
            ddb = client(dynalite.endpoint)
            t0 = time.perf_counter()
            entries = write_run(s3, "bench", args.users, args.users_per_shard, rng)
            print(f"synthetic data: {args.users:,} users in {len(entries)} shard entries, "
                  f"{time.perf_counter() - t0:.1f} s")
            baseline = one_writer_baseline(ddb, args.users_per_shard)
            print(f"baseline: one child's writer alone: {baseline:,.0f} rows/s")

            lambdas = LocalLambda({name: FUNCTIONS[name] for name in ("PublishShard", "Commit")},
                                  region=REGION, account=ACCOUNT)
            run = {"run_id": "bench", "bucket": BUCKET,
                   "uris": {"manifest": f"s3://{BUCKET}/runs/bench/processed/manifest.json"},
                   "transform_outputs": {"serve": f"s3://{BUCKET}/runs/bench/serve/transform/"},
                   "config": {"publish": {"top_n": TOP_N, "version_ttl_days": 7,
                                          "max_concurrency": args.concurrency,
                                          "similar_items": args.similar_items}},
                   "publish": shards.publish_locations(BUCKET, "bench", f"s3://{BUCKET}/runs/bench/serve/vectors/")}
            sfn = boto3.client("stepfunctions", region_name=REGION)
            with installed({"lambda": lambdas}):
                arn = sfn.create_state_machine(name="publish-bench", definition=publish_machine(),
                                               roleArn=f"arn:aws:iam::{ACCOUNT}:role/bench")["stateMachineArn"]
                start = time.perf_counter()
                state_input = json.dumps({"run": run, "evaluation": {"metrics": None}})
                execution = sfn.start_execution(stateMachineArn=arn, name="bench", input=state_input)
                follow(sfn, execution["executionArn"], poll_s=1.0, timeout_s=7200)
                publish_s = time.perf_counter() - start
            described = sfn.describe_execution(executionArn=execution["executionArn"])
            if described["status"] != "SUCCEEDED":
                raise SystemExit(f"Publish failed: {described.get('error')}: {described.get('cause')}")
            result = json.loads(described["output"])["publish"]
            pointer = ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in tables.ACTIVE_KEY.items()})
            assert pointer["Item"]["run_id"]["S"] == "bench", pointer
            count = sum(page["Count"] for page in ddb.get_paginator("scan").paginate(
                TableName=TABLE, Select="COUNT", FilterExpression="sk = :v AND begins_with(pk, :u)",
                ExpressionAttributeValues={":v": {"S": "v#bench"}, ":u": {"S": tables.USER_PREFIX}}))
            assert result["users_written"] == count == args.users, (result, count)
    rate = args.users / publish_s
    n_user_shards = sum(1 for e in entries if e["kind"] == "users")
    print(f"Publish + Commit: {args.users:,} users, {n_user_shards} user shards, concurrency "
          f"{args.concurrency}: {publish_s:.1f} s ({rate:,.0f} rows/s, {rate / baseline:.2f}x one writer); "
          f"every user has a row, pointer flipped")
    print(f"RESULT users={args.users} shards={n_user_shards} publish_s={publish_s:.1f} rows_per_s={rate:.0f} "
          f"one_writer_rows_per_s={baseline:.0f} publish_vs_one_writer={rate / baseline:.2f} "
          f"users_written={count} peak_rss_mb={peak_rss_mb():.0f}")


if __name__ == "__main__":
    main()
