"""Step Functions execution statuses and their EventBridge event, stated once for the CLI, the
Release Lambda and the rules in ``infra`` (stdlib only: the Lambdas and ``infra`` import it)."""

from __future__ import annotations

RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
ABORTED = "ABORTED"

#: Every unsuccessful end: what the alerts report.
UNSUCCESSFUL: tuple[str, ...] = (FAILED, TIMED_OUT, ABORTED)
#: Ends after which the run lock may still be held: a stopped or timed-out execution skips its
#: Catch, and a failure can come from the release itself. The lock-cleanup rule sends these to
#: the Release Lambda, which releases the lock only if that run still owns it.
MAY_HOLD_LOCK: tuple[str, ...] = (ABORTED, TIMED_OUT, FAILED)
#: The EventBridge detail-type of an execution's status change.
STATUS_CHANGE_EVENT = "Step Functions Execution Status Change"
