"""``BatchWriteItem`` that loses nothing: 25 items per call, parallel calls, retries with backoff.

A batch is retried while DynamoDB returns ``UnprocessedItems`` or a throttling error, sleeping
``uniform(0, min(max_delay, base_delay * 2**attempt))`` between attempts ("full jitter"); after
``max_attempts`` the writer raises :class:`WriteRetriesExhaustedError` naming how many items are left.
Any other error is raised at once. Items are low-level DynamoDB JSON (``{"S": ...}``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from lambdas.publish.exceptions import WriteRetriesExhaustedError

BATCH_SIZE = 25  # the BatchWriteItem limit
RETRYABLE_ERRORS = frozenset({
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
})

Item = dict[str, Any]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


@dataclass
class BatchWriter:
    """Writes items to one table; ``sleep``/``rng`` are injectable so tests need not wait."""

    dynamodb: Any
    table: str
    max_attempts: int = 10
    base_delay: float = 0.05
    max_delay: float = 5.0
    workers: int = 8
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    calls: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(self, items: Iterable[Item]) -> int:
        """Write every item (at most ``2 * workers`` batches in flight); return how many were written."""
        written = 0
        if self.workers <= 1:
            for batch in _batches(items, BATCH_SIZE):
                written += self.write_batch(batch)
            return written
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            pending: set[Future[int]] = set()
            try:
                for batch in _batches(items, BATCH_SIZE):
                    if len(pending) >= 2 * self.workers:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        written += sum(f.result() for f in done)
                    pending.add(pool.submit(self.write_batch, batch))
                written += sum(f.result() for f in pending)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return written

    def write_batch(self, batch: list[Item]) -> int:
        """Write up to 25 items, retrying what DynamoDB did not process."""
        if len(batch) > BATCH_SIZE:
            raise ValueError(f"A BatchWriteItem call takes at most {BATCH_SIZE} items, got {len(batch)}.")
        todo = batch
        last_problem = ""
        for attempt in range(self.max_attempts):
            if attempt:
                with self._lock:
                    self.retries += 1
                    delay = self.rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
                self.sleep(delay)
            try:
                with self._lock:
                    self.calls += 1
                response = self.dynamodb.batch_write_item(
                    RequestItems={self.table: [{"PutRequest": {"Item": item}} for item in todo]}
                )
            except Exception as exc:
                code = _error_code(exc)
                if code not in RETRYABLE_ERRORS:
                    raise
                last_problem = code
                continue
            unprocessed = (response.get("UnprocessedItems") or {}).get(self.table, [])
            todo = [request["PutRequest"]["Item"] for request in unprocessed]
            if not todo:
                return len(batch)
            last_problem = "UnprocessedItems"
        first = todo[0]
        key = ", ".join(f"{name}={first[name].get('S')}" for name in ("pk", "sk") if name in first)
        raise WriteRetriesExhaustedError(
            f"{len(todo)} of {len(batch)} item(s) could not be written to table {self.table!r} after "
            f"{self.max_attempts} attempts (last: {last_problem}; first left: {key})."
        )
