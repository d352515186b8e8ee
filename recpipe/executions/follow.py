"""Follow a Step Functions execution (moto's or AWS's) until it ends, reporting state changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from recpipe.executions.history import ExecutionOutcome, outcome_from
from recpipe.executions.status import RUNNING

UpdateCallback = Callable[[ExecutionOutcome], None]


def full_history(sfn: Any, arn: str) -> list[dict[str, Any]]:
    """Every history event (paginating on AWS; moto returns all events in one call)."""
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
    seen_tokens: set[str] = set()
    while True:
        page = sfn.get_execution_history(**kwargs)
        events.extend(page.get("events", []))
        token = page.get("nextToken")
        if not token or token in seen_tokens:
            break
        seen_tokens.add(token)
        kwargs["nextToken"] = token
    unique = {int(e["id"]): e for e in events}
    return [unique[i] for i in sorted(unique)]


def snapshot(sfn: Any, arn: str) -> ExecutionOutcome:
    describe = sfn.describe_execution(executionArn=arn)
    return outcome_from(describe, full_history(sfn, arn))


def follow(sfn: Any, arn: str, *, on_update: UpdateCallback | None = None, poll_s: float = 0.25,
           tick: Callable[[], None] | None = None, timeout_s: float | None = None) -> ExecutionOutcome:
    """Poll until the execution leaves RUNNING; ``on_update`` gets each new snapshot, ``tick`` runs
    between polls (the CLI drains progress events there)."""
    started = time.monotonic()
    while True:
        outcome = snapshot(sfn, arn)
        if on_update is not None:
            on_update(outcome)
        if outcome.status != RUNNING:
            return outcome
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return outcome
        deadline = time.monotonic() + poll_s
        while time.monotonic() < deadline:
            if tick is not None:
                tick()
            time.sleep(min(0.05, poll_s))
