"""A moto results table holding one published version with item rows (the serving tests' world)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from recpipe import tables
from tests.unit.serving.seed import write_version

TABLE = "results"
RUN = "run-2"
ITEM_IDS = [f"i{k}" for k in range(12)]
TOP_N = 20
SIMILAR = 5


@dataclass
class World:
    ddb: Any
    table: str
    run_id: str
    vectors: np.ndarray
    popularity: np.ndarray
    users: dict[str, list[tuple[str, float | None]]]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        ddb: Any = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**tables.create_table_kwargs(TABLE))
        rng = np.random.default_rng(7)
        vectors = rng.normal(size=(len(ITEM_IDS), 4)).astype(np.float32)
        popularity = np.array([5, 0, 9, 9, 1, 3, 0, 7, 2, 2, 4, 8], dtype=np.int64)
        users: dict[str, list[tuple[str, float | None]]] = {
            "1": [(f"i{k}", 2.5 - 0.1 * k) for k in range(10)] + [("i11", None), ("i10", None)],
            "2": [("i3", 0.75), ("i4", 1.5e-7)],
        }
        write_version(ddb, TABLE, RUN, top_n=TOP_N, users=users, item_ids=ITEM_IDS, vectors=vectors,
                      similar_items=SIMILAR, popularity=popularity)
        yield World(ddb, TABLE, RUN, vectors, popularity, users)
