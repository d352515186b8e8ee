"""Release Lambda: give the run lock back.

Two callers:

* the state machine's Release states (success and failure paths): ``{"run_id": str}``;
* the ``LockCleanup`` EventBridge rule (``infra/lock_cleanup.py``): a "Step Functions Execution
  Status Change" event of an execution that was stopped (``ABORTED``), ``TIMED_OUT`` or ``FAILED``.
  The first two always skip their Catch, and a ``States.Runtime`` failure does too, so nothing
  else would release the lock before it expires (48 h). A FAILED run usually released its lock in
  its Catch already; then there is nothing of its own to delete and the call changes nothing.
  The run id is derived from the execution name the way Prepare derived it.

Either way the lock goes only if that run owns it. Returns ``{"released": bool}`` (plus
``"ignored": true`` for a status-change event of another status, which the rule does not send).
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from recpipe import runs
from recpipe.executions.status import MAY_HOLD_LOCK, STATUS_CHANGE_EVENT
from recpipe.lambda_errors import InputError
from recpipe.results.lock import release_lock

logger = Logger(service="recpipe-release")


@functools.cache
def _dynamodb() -> Any:
    return boto3.client("dynamodb")


def run_to_release(event: Any) -> str | None:
    """The run whose lock ``event`` asks to release; ``None`` for a status-change event of another
    status (a SUCCEEDED run released the lock in the state machine)."""
    if isinstance(event, dict) and "detail-type" in event:
        return _stopped_run(event)
    run_id = event.get("run_id") if isinstance(event, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise InputError("The Release event must be {\"run_id\": str} or an EventBridge "
                         f"{STATUS_CHANGE_EVENT!r} event; 'run_id' is {run_id!r} in {event!r}.")
    return run_id


def _stopped_run(event: dict[str, Any]) -> str | None:
    if event["detail-type"] != STATUS_CHANGE_EVENT:
        raise InputError("The Release function handles EventBridge events of detail-type "
                         f"{STATUS_CHANGE_EVENT!r} only, got {event['detail-type']!r}.")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise InputError(f"The {STATUS_CHANGE_EVENT!r} event has no 'detail' object, got {detail!r}.")
    for field in ("status", "name", "stateMachineArn"):
        if not isinstance(detail.get(field), str) or not detail[field]:
            raise InputError(f"The {STATUS_CHANGE_EVENT!r} event's 'detail.{field}' must be a non-empty "
                             f"string, got {detail.get(field)!r}.")
    status, name = detail["status"], detail["name"]
    if status not in MAY_HOLD_LOCK:
        logger.info(f"Ignored: execution {name} ended {status}; only {', '.join(MAY_HOLD_LOCK)} "
                    f"executions may skip the state machine's own Release",
                    extra={"execution_name": name, "status": status,
                           "state_machine_arn": detail["stateMachineArn"]})
        return None
    run_id = runs.derive_run_id(name)
    logger.info(f"Execution {name} ended {status}; releasing the lock of run {run_id} if it holds it",
                extra={"execution_name": name, "status": status, "run_id": run_id,
                       "execution_arn": detail.get("executionArn"),
                       "state_machine_arn": detail["stateMachineArn"]})
    return run_id


def lambda_handler(event: dict[str, Any], context: Any, *, dynamodb: Any = None) -> dict[str, bool]:
    run_id = run_to_release(event)
    if run_id is None:
        return {"released": False, "ignored": True}
    released = release_lock(dynamodb or _dynamodb(), runs.table_name(), run_id)
    logger.info("Lock released" if released else "Lock not held by this run",
                extra={"run_id": run_id, "released": released})
    return {"released": released}
