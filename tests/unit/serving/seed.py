"""Writing a published version the way Publish does (rows from the library's own row builders)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recpipe import tables
from recpipe.serving import items

GENERATED_AT = "2026-12-01T00:00:00Z"
EXPIRES_AT = 4_102_444_800


def user_row(user_id: str, run_id: str, entries: Sequence[tuple[str, float | None]]) -> dict[str, Any]:
    key = tables.user_key(user_id, run_id)
    return {
        tables.PARTITION_KEY: {"S": key[tables.PARTITION_KEY]},
        tables.SORT_KEY: {"S": key[tables.SORT_KEY]},
        "user_id": {"S": user_id},
        "run_id": {"S": run_id},
        "items": {"L": [{"M": {"item_id": {"S": item}, "score": {"NULL": True} if score is None
                                                       else {"N": tables.score_number(score)}}}
                        for item, score in entries]},
    }


def write_version(ddb: Any, table: str, run_id: str, *, top_n: int,
                  users: Mapping[str, Sequence[tuple[str, float | None]]],
                  item_ids: Sequence[str] = (), vectors: np.ndarray | None = None, similar_items: int = 0,
                  popularity: np.ndarray | None = None, activate: bool = True) -> None:
    """A complete version: version item, user rows, item rows + popular row (when vectors given)."""
    ddb.put_item(TableName=table, Item={
        **{k: {"S": v} for k, v in tables.version_key(run_id).items()},
        "state": {"S": "complete"}, "run_id": {"S": run_id}, "top_n": {"N": str(top_n)}})
    for user_id, entries in users.items():
        ddb.put_item(TableName=table, Item=user_row(user_id, run_id, entries))
    if vectors is not None:
        indices, scores = items.most_similar(vectors, similar_items)
        for row in items.item_rows(indices, scores, 0, list(item_ids), run_id, GENERATED_AT, EXPIRES_AT):
            ddb.put_item(TableName=table, Item=row)
        counts = popularity if popularity is not None else np.zeros(len(item_ids), dtype=np.int64)
        ddb.put_item(TableName=table, Item=items.popular_row(counts, list(item_ids), top_n, similar_items,
                                                             run_id, GENERATED_AT, EXPIRES_AT))
    if activate:
        ddb.put_item(TableName=table, Item={**{k: {"S": v} for k, v in tables.ACTIVE_KEY.items()},
                                            "run_id": {"S": run_id}})


class CountingClient:
    """A DynamoDB client that counts the calls made through it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attribute(*args, **kwargs)
        return call
