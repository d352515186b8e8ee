"""Read API benchmark: the API Lambda's handler against the local DynamoDB (dynalite), beside a raw
``GetItem`` loop on the same table in the same run.

    .venv/bin/python bench/serve.py                    # 2,000 users, 3 rounds of 1,000 requests each
    .venv/bin/python bench/serve.py --requests 300     # quicker

A fresh dynalite holds one published version (users with ``--top-n`` scored items, item rows with
20 similar items, the popular row), written with the library's row builders. Each round times, one
request at a time (a Lambda environment serves one request at a time):

- ``getitem``: ``GetItem(user#<id>, v#<run>)`` with the same boto3 client: the floor of any reader;
- ``handler``: ``lambdas.api.handler.lambda_handler`` on an HTTP API 2.0 event (routing,
  validation, the cached pointer, the row read, JSON): what the deployed function does per request;
- ``fallback``: the same for unknown users with ``recent=`` two items (one BatchGetItem);
- ``http``: through ``recpipe serve``'s adapter on a loopback port (urllib, one connection per request).

The paths take turns request by request (rotating order), so that a load swing on the shared
machine hits them alike; ratios are against ``getitem`` of the same run. Ends with
``RESULT rps=<handler> p99_ms=<handler> ratio_to_getitem=<handler rps / getitem rps>``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambdas.api import handler
from recpipe import tables
from recpipe.local.dynamodb import Dynalite, client, ensure_table
from recpipe.serving import Reader, items
from recpipe.serving.http import LocalApiServer, to_event

RUN = "bench-run"
TABLE = "bench-results"


def _put_all(ddb: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 25):
        todo = [{"PutRequest": {"Item": row}} for row in rows[start:start + 25]]
        while todo:
            left = ddb.batch_write_item(RequestItems={TABLE: todo}).get("UnprocessedItems", {})
            todo = left.get(TABLE, [])


def seed(ddb: Any, n_users: int, n_items: int, top_n: int) -> None:
    rng = np.random.default_rng(0)
    item_ids = [str(i) for i in range(n_items)]
    vectors = rng.normal(size=(n_items, 16)).astype(np.float32)
    stamp, expires = "2026-12-01T00:00:00Z", 4_102_444_800
    rows: list[dict[str, Any]] = []
    for user in range(n_users):
        chosen = rng.choice(n_items, size=top_n, replace=False)
        scores = np.sort(rng.normal(size=top_n))[::-1]
        key = tables.user_key(str(user), RUN)
        rows.append({tables.PARTITION_KEY: {"S": key[tables.PARTITION_KEY]},
                     tables.SORT_KEY: {"S": key[tables.SORT_KEY]}, "user_id": {"S": str(user)},
                     "run_id": {"S": RUN}, "generated_at": {"S": stamp},
                     tables.TTL_ATTRIBUTE: {"N": str(expires)},
                     "items": {"L": [{"M": {"item_id": {"S": item_ids[i]},
                                            "score": {"N": tables.score_number(float(s))}}}
                                     for i, s in zip(chosen, scores, strict=True)]}})
    indices, similar = items.most_similar(vectors, 20)
    rows.extend(items.item_rows(indices, similar, 0, item_ids, RUN, stamp, expires))
    rows.append(items.popular_row(rng.integers(0, 1000, n_items), item_ids, top_n, 20, RUN, stamp, expires))
    _put_all(ddb, rows)
    ddb.put_item(TableName=TABLE, Item={**{k: {"S": v} for k, v in tables.version_key(RUN).items()},
                                        "state": {"S": "complete"}, "run_id": {"S": RUN},
                                        "top_n": {"N": str(top_n)}})
    ddb.put_item(TableName=TABLE, Item={**{k: {"S": v} for k, v in tables.ACTIVE_KEY.items()},
                                        "run_id": {"S": RUN}})


def timed(call: Callable[[int], object], requests: int) -> list[float]:
    out = []
    for index in range(requests):
        started = time.perf_counter()
        call(index)
        out.append(time.perf_counter() - started)
    return out


class _StubClient:
    """Answers every GetItem with one fixed row (and the pointer): the handler's own cost."""

    def __init__(self, row: dict[str, Any], version: dict[str, Any]) -> None:
        self.row, self.version = row, version

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["Key"][tables.PARTITION_KEY]["S"] == tables.ACTIVE_PK:
            return {"Item": {"run_id": {"S": RUN}}}
        return {"Item": self.row}

    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
        return {"Responses": {TABLE: [self.version]}}


def stub_overhead_us(ddb: Any, event: dict[str, Any], user: str, requests: int) -> float:
    key = {k: {"S": v} for k, v in tables.user_key(user, RUN).items()}
    row = ddb.get_item(TableName=TABLE, Key=key)["Item"]
    version = ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in tables.version_key(RUN).items()})
    reader = Reader(_StubClient(row, version["Item"]), TABLE, pointer_ttl_s=3600)
    calls = max(requests, 1000)
    handler.lambda_handler(event, None, reader=reader)
    started = time.perf_counter()
    for _ in range(calls):
        handler.lambda_handler(event, None, reader=reader)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--top-n", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000, help="requests per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, Dynalite(Path(tmp) / "dynamodb") as server:
        ensure_table(server.endpoint, TABLE)
        ddb = client(server.endpoint)
        started = time.perf_counter()
        seed(ddb, args.users, args.items, args.top_n)
        print(f"seeded {args.users} users + {args.items} items into dynalite in "
              f"{time.perf_counter() - started:.1f} s")
        reader = Reader(ddb, TABLE, pointer_ttl_s=60)
        rng = random.Random(1)
        users = [str(rng.randrange(args.users)) for _ in range(args.requests)]
        recent = [f"{rng.randrange(args.items)},{rng.randrange(args.items)}" for _ in range(args.requests)]
        events = [to_event("GET", f"/recommendations/{u}?n=10", {}) for u in users]
        fallback_events = [to_event("GET", f"/recommendations/new-{i}?n=10&recent={r}", {})
                           for i, r in enumerate(recent)]

        def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
            return handler.lambda_handler(event, context, reader=reader)

        def getitem(i: int) -> object:
            return ddb.get_item(TableName=TABLE, Key={k: {"S": v} for k, v in
                                                      tables.user_key(users[i], RUN).items()})["Item"]

        def via_handler(i: int) -> object:
            response = handle(events[i] or {}, None)
            assert response["statusCode"] == 200, response
            return response

        def via_fallback(i: int) -> object:
            response = handle(fallback_events[i] or {}, None)
            assert response["statusCode"] == 200, response
            return response

        api = LocalApiServer(("127.0.0.1", 0), handle)
        thread = threading.Thread(target=api.serve_forever, daemon=True)
        thread.start()

        def via_http(i: int) -> object:
            with urlopen(f"{api.url}recommendations/{users[i]}?n=10", timeout=10) as response:
                return response.read()

        paths: dict[str, Callable[[int], object]] = {
            "getitem": getitem, "handler": via_handler, "fallback": via_fallback, "http": via_http}
        for call in paths.values():  # warm-up: connections, imports, the pointer cache
            timed(call, min(50, args.requests))
        samples: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        for round_ in range(args.rounds):
            for index in range(args.requests):
                # Request by request, the paths take turns (in a rotating order): a load swing on the
                # shared machine hits them alike.
                shift = (index + round_) % len(names)
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    paths[name](index)
                    samples[name].append(time.perf_counter() - started)
        api.shutdown()
        api.server_close()
        overhead_us = stub_overhead_us(ddb, events[0] or {}, users[0], args.requests)

    stats = {}
    for name, values in samples.items():
        array = np.array(values)
        stats[name] = {"rps": len(array) / array.sum(), "p50": np.percentile(array, 50) * 1000,
                       "p99": np.percentile(array, 99) * 1000}
    base = stats["getitem"]["rps"]
    print(f"\n{'path':<10} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'rps vs getitem':>15}")
    for name, s in stats.items():
        print(f"{name:<10} {s['rps']:8.0f} {s['p50']:8.2f} {s['p99']:8.2f} {s['rps'] / base:15.2f}")
    h = stats["handler"]
    print(f"\nhandler CPU per request without DynamoDB (a stub client returning the same row): "
          f"{overhead_us:.0f} us")
    print(f"RESULT rps={h['rps']:.0f} p99_ms={h['p99']:.2f} ratio_to_getitem={h['rps'] / base:.2f} "
          f"getitem_rps={base:.0f} fallback_rps={stats['fallback']['rps']:.0f} "
          f"http_rps={stats['http']['rps']:.0f} handler_cpu_us={overhead_us:.0f}")


if __name__ == "__main__":
    main()
