"""``recpipe unlock``: who holds the run lock, and releasing it when its run has ended."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from recpipe.cli.core import (
    AWS,
    DYNAMODB,
    REGION,
    STACK,
    STATE_MACHINE,
    TABLE,
    WORKDIR,
    command,
    console,
    fail,
)
from recpipe.cli.display import iso_epoch
from recpipe.cli.target import Target, open_table
from recpipe.executions.status import RUNNING


def _lock_owner_state(target: Target, lock: Mapping[str, Any], now: float) -> tuple[str, str]:
    """(``ended`` | ``running`` | ``unknown``, why) for the run holding ``lock``."""
    from recpipe.remote import aws as remote

    owner = str(lock.get("owner"))
    expires = lock.get("expires_at")
    if expires is not None and float(expires) <= now:
        return "ended", f"the lock expired at {iso_epoch(expires)} (no execution outlives its lock)"
    execution_name = str(lock.get("execution_name") or owner)
    if target.aws:
        if not target.state_machine_arn:
            return "unknown", ("the state machine is not known, so the execution cannot be checked (pass "
                               "--stack or --state-machine-arn)")
        sfn = remote.boto3_client("stepfunctions",
                                  target.region or remote.region_of_arn(target.state_machine_arn))
        found = remote.execution_status(sfn, target.state_machine_arn, execution_name)
        if found is None:
            return "unknown", f"no execution named '{execution_name}' in {target.state_machine_arn}"
        if found == RUNNING:
            return "running", f"its execution '{execution_name}' is RUNNING"
        return "ended", f"its execution '{execution_name}' ended {found}"
    from recpipe.executions import records

    for record in reversed(records.all_records(target.workdir)):
        if owner == record.get("run_id") or execution_name == record.get("execution_name"):
            if record.get("status") == RUNNING:
                return "running", f"its local record says RUNNING ({records.records_dir(target.workdir)})"
            return "ended", f"its local run ended {record.get('status')}"
    return "unknown", (f"no local record of run '{owner}' under {records.records_dir(target.workdir)}: it "
                       "may still be running in another 'recpipe run' (a record is written when a run ends), "
                       "or it was killed")


@command
def unlock(
    force: Annotated[bool, typer.Option(
        "--force", help="Release even when the owning run may still be running.")] = False,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
    state_machine_arn: str | None = STATE_MACHINE,
) -> None:
    """Show which run holds the run lock and release it.

    Only one run at a time may hold the lock (taken by Prepare, released when the run ends, also
    when it is stopped). A lock left behind by a run that has ended (succeeded, failed, stopped, or
    the lock expired) is released at once. When the owning run may still be running (its execution
    is RUNNING on AWS, or its state cannot be checked: no local record, or no state machine known
    with --aws), releasing needs --force: that run keeps going, a new run can then start beside
    it, and the two race to publish (the later pointer flip fails with PointerConflictError). The
    lock is deleted only if that same run still holds it.
    """
    from recpipe.remote.exceptions import RemoteError
    from recpipe.results import read
    from recpipe.results.lock import release_lock

    with open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region,
                    state_machine_arn=state_machine_arn, want_state_machine=True) as target:
        lock = read.lock_item(target.ddb, target.table)
        if not lock:
            console.print(f"The run lock is free in {target.where}: no run holds it.")
            return
        owner = str(lock.get("owner"))
        console.print(f"The run lock in {target.where} is held by run [bold]{escape(owner)}[/] "
                      f"(execution {escape(str(lock.get('execution_name', '?')))}, taken "
                      f"{lock.get('acquired_at', '?')}, "
                      f"expires {iso_epoch(lock.get('expires_at')) or '?'}).")
        try:
            state, why = _lock_owner_state(target, lock, dt.datetime.now(dt.UTC).timestamp())
        except RemoteError as exc:  # e.g. no states:DescribeExecution permission: cannot tell
            state, why = "unknown", str(exc)
        console.print(f"  {escape(why)}.")
        if state != "ended" and not force:
            verb = "is still running" if state == "running" else "may still be running"
            raise fail(f"Not released: run {owner} {verb}. Releasing lets a new run start beside it; "
                       "pass --force to release anyway (see 'recpipe unlock --help').")
        released = release_lock(target.ddb, target.table, owner)
        now_held = None if released else read.lock_item(target.ddb, target.table)
    if not released:
        holder = now_held.get("owner") if now_held else None
        raise fail(f"The lock changed meanwhile (now held by {holder or 'no run'}); nothing was deleted.",
                   code=1)
    console.print(f"Lock of run {escape(owner)} released" + (" (forced)." if state != "ended" else "."))
