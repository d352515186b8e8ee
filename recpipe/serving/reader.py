"""The read path over the results table (layout: :mod:`recpipe.tables`).

A request costs one read once the active version is cached:

* ``recommendations(user_id, n)``: ``GetItem(user#<id>, v#<run>)``. A user the version has no row
  for gets a fallback (``"fallback": true``): with ``recent`` item ids, those items' similar-item
  lists read with one ``BatchGetItem`` and merged (an item's score is its best similarity to any of
  the given items; the given items themselves are left out; topped up from the popular list with
  ``score: null`` when short, as Publish tops up); without them, the version's popular list
  (``score`` = how many users interacted with the item). Item ids the version does not know are
  ignored and listed in ``unknown_items``.
* ``similar(item_id, n)``: ``GetItem(item#<id>, v#<run>)``.

The active version (pointer, then the version item and the popular row in one ``BatchGetItem``) is
cached for ``pointer_ttl_s`` seconds (``RECPIPE_POINTER_TTL_SECONDS`` in the API Lambda): after a
pointer flip or a rollback, readers switch within that time. The pointer is re-read each time the
cache expires, the version data only when the pointer names another run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from recpipe import tables
from recpipe.serving.exceptions import (
    InvalidRequestError,
    NoActiveVersionError,
    NotFoundError,
    TableReadError,
)

DEFAULT_N = 10
DEFAULT_POINTER_TTL_S = 10.0
# The API Lambda's environment variable for pointer_ttl_s (set by infra/api.py).
POINTER_TTL_ENV = "RECPIPE_POINTER_TTL_SECONDS"
# A BatchGetItem call takes at most 100 keys; a fallback from more recent items would not be better.
MAX_RECENT = 50
_BATCH_ATTEMPTS = 5

Entry = dict[str, Any]  # {"item_id": str, "score": int | float | None}


@dataclass(frozen=True)
class ActiveVersion:
    """What the reader caches about the version the pointer names."""

    run_id: str
    top_n: int
    similar_items: int  # M of the item rows (0: this version has none)
    popular: tuple[Entry, ...]


def _number(attribute: Mapping[str, Any]) -> int | float | None:
    """A low-level DynamoDB score (``{"N": ...}`` or NULL) as the CLI prints it (ints stay ints)."""
    text = attribute.get("N")
    if text is None:
        return None
    value = Decimal(text)
    return int(value) if value == value.to_integral_value() else float(value)


def entries(raw: Mapping[str, Any] | None) -> list[Entry]:
    """The ``items`` attribute of a low-level row as ``[{"item_id", "score"}]`` (best first)."""
    if not raw:
        return []
    out: list[Entry] = []
    for element in raw.get("L", []):
        fields = element.get("M", {})
        item_id = fields.get("item_id", {})
        out.append({"item_id": str(item_id.get("S", item_id.get("N", ""))),
                    "score": _number(fields.get("score", {"NULL": True}))})
    return out


def _key(key: Mapping[str, str]) -> dict[str, dict[str, str]]:
    return {name: {"S": value} for name, value in key.items()}


def parse_n(value: str | int | None, high: int, *, name: str = "n") -> int:
    """The ``n`` query parameter: an int in [1, ``high``]; absent means min(10, ``high``)."""
    if value is None or value == "":
        return min(DEFAULT_N, high)
    try:
        number = int(value) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not 1 <= number <= high:
        raise InvalidRequestError(f"The {name!r} parameter must be an int in [1, {high}], got {value!r}.")
    return number


def parse_recent(value: str | Sequence[str] | None) -> list[str]:
    """``recent=a,b,c`` -> ``["a", "b", "c"]``: blanks dropped, duplicates dropped (first kept)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    found = list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if len(found) > MAX_RECENT:
        raise InvalidRequestError(
            f"The 'recent' parameter names at most {MAX_RECENT} items, got {len(found)}.")
    return found


def merge_similar(lists: Iterable[Sequence[Entry]], exclude: Iterable[str], n: int,
                  popular: Sequence[Entry] = ()) -> list[Entry]:
    """Merge similar-item lists: each item scored by its best score in any list, best first (ties
    keep the order of first appearance), ``exclude`` left out; topped up from ``popular`` with
    ``score: None`` when fewer than ``n`` remain."""
    skip = set(exclude)
    best: dict[str, float] = {}
    for found in lists:
        for entry in found:
            item_id, score = entry["item_id"], entry["score"]
            if item_id in skip or score is None:
                continue
            if item_id not in best or score > best[item_id]:
                best[item_id] = score
    order = {item_id: rank for rank, item_id in enumerate(best)}
    ranked = sorted(best, key=lambda i: (-best[i], order[i]))[:n]
    out: list[Entry] = [{"item_id": item_id, "score": best[item_id]} for item_id in ranked]
    chosen = skip | set(ranked)
    for entry in popular:
        if len(out) >= n:
            break
        if entry["item_id"] not in chosen:
            out.append({"item_id": entry["item_id"], "score": None})
            chosen.add(entry["item_id"])
    return out


class Reader:
    """Reads recommendations and similar items of the active version of ``table``.

    ``dynamodb`` is a low-level boto3 client; ``clock`` (monotonic seconds) is injectable so tests
    can expire the cache without waiting.
    """

    def __init__(self, dynamodb: Any, table: str, *, pointer_ttl_s: float = DEFAULT_POINTER_TTL_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if pointer_ttl_s < 0:
            raise ValueError(f"pointer_ttl_s must be >= 0, got {pointer_ttl_s!r}.")
        self.dynamodb = dynamodb
        self.table = table
        self.pointer_ttl_s = pointer_ttl_s
        self.clock = clock
        self.sleep = sleep
        self._active: ActiveVersion | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    # -- reads -----------------------------------------------------------------------------------

    def _get(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        try:
            response = self.dynamodb.get_item(TableName=self.table, Key=_key(key))
        except Exception as exc:
            raise TableReadError(f"Reading {key[tables.PARTITION_KEY]} / {key[tables.SORT_KEY]} from table "
                                 f"{self.table!r} failed: {exc}") from exc
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _batch_get(self, keys: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
        """Every found item among ``keys`` (at most 100), retrying unprocessed keys."""
        todo = [_key(k) for k in keys]
        found: list[dict[str, Any]] = []
        for attempt in range(_BATCH_ATTEMPTS):
            if not todo:
                return found
            if attempt:
                self.sleep(0.01 * 2 ** attempt)  # DynamoDB asks callers to back off on unprocessed keys
            try:
                response = self.dynamodb.batch_get_item(RequestItems={self.table: {"Keys": todo}})
            except Exception as exc:
                first = todo[0][tables.PARTITION_KEY]["S"]
                raise TableReadError(f"Reading {len(todo)} rows (first {first}) from table {self.table!r} "
                                     f"failed: {exc}") from exc
            found.extend(response.get("Responses", {}).get(self.table, []))
            todo = (response.get("UnprocessedKeys") or {}).get(self.table, {}).get("Keys", [])
        if todo:
            raise TableReadError(f"{len(todo)} rows of table {self.table!r} were still unprocessed after "
                                 f"{_BATCH_ATTEMPTS} BatchGetItem attempts (throttled).")
        return found

    # -- the active version ------------------------------------------------------------------------

    def active(self) -> ActiveVersion:
        """The active version, re-reading the pointer once ``pointer_ttl_s`` has passed."""
        with self._lock:
            now = self.clock()
            if self._active is not None and now - self._checked_at < self.pointer_ttl_s:
                return self._active
            pointer = self._get(tables.ACTIVE_KEY)
            run_id = pointer.get("run_id", {}).get("S") if pointer else None
            if not run_id:
                self._active = None
                raise NoActiveVersionError(f"No version is published yet in table {self.table!r}.")
            if self._active is None or self._active.run_id != run_id:
                self._active = self._load_version(run_id)
            self._checked_at = now
            return self._active

    def _load_version(self, run_id: str) -> ActiveVersion:
        rows = {row[tables.PARTITION_KEY]["S"]: row
                for row in self._batch_get([tables.version_key(run_id), tables.popular_key(run_id)])}
        version = rows.get(tables.VERSION_PK)
        if version is None or "top_n" not in version:
            raise NoActiveVersionError(f"The active version {run_id!r} has no version item in table "
                                       f"{self.table!r} (expired and deleted?): roll back to a newer one.")
        popular = rows.get(tables.POPULAR_PK, {})
        return ActiveVersion(run_id=run_id, top_n=int(version["top_n"]["N"]),
                             similar_items=int(popular.get("similar_items", {}).get("N", "0")),
                             popular=tuple(entries(popular.get("items"))))

    # -- requests ----------------------------------------------------------------------------------

    def recommendations(self, user_id: str, n: str | int | None = None,
                        recent: str | Sequence[str] | None = None) -> dict[str, Any]:
        """``{"user_id", "run_id", "items": [{"item_id", "score"}], "fallback"}`` (see the module doc)."""
        version = self.active()
        count = parse_n(n, version.top_n)
        given = parse_recent(recent)
        row = self._get(tables.user_key(user_id, version.run_id))
        if row is not None:
            return {"user_id": user_id, "run_id": version.run_id, "items": entries(row.get("items"))[:count],
                    "fallback": False}
        out: dict[str, Any] = {"user_id": user_id, "run_id": version.run_id, "items": [], "fallback": True}
        lists: list[list[Entry]] = []
        if given:
            rows = self._batch_get([tables.item_key(item_id, version.run_id) for item_id in given])
            known = {row[tables.PARTITION_KEY]["S"][len(tables.ITEM_PREFIX):]: row for row in rows}
            lists = [entries(known[item_id].get("items")) for item_id in given if item_id in known]
            out["unknown_items"] = [item_id for item_id in given if item_id not in known]
        if lists:
            out["items"] = merge_similar(lists, given, count, version.popular)
            out["fallback_source"] = "recent"
        else:
            skip = set(given)
            out["items"] = [dict(e) for e in version.popular if e["item_id"] not in skip][:count]
            out["fallback_source"] = "popular"
        return out

    def similar(self, item_id: str, n: str | int | None = None) -> dict[str, Any]:
        """``{"item_id", "run_id", "items": [{"item_id", "score"}]}``; 404 for an unknown item."""
        version = self.active()
        if version.similar_items < 1:
            raise NotFoundError(f"The active version {version.run_id!r} has no similar-item lists "
                                "(published with publish.similar_items = 0, or before they existed).")
        count = parse_n(n, version.similar_items)
        row = self._get(tables.item_key(item_id, version.run_id))
        if row is None:
            raise NotFoundError(f"Unknown item {item_id!r}: the active version {version.run_id!r} has no "
                                "similar items for it.")
        return {"item_id": item_id, "run_id": version.run_id, "items": entries(row.get("items"))[:count]}
