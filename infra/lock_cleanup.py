"""Lock cleanup: an execution that ends without its Catch gives the run lock back.

An execution that is stopped (``ABORTED``) or ``TIMED_OUT`` ends at once, without running its Catch,
and so does one that ``FAILED`` on a ``States.Runtime`` error (a bad path, an intrinsic function on
null: no Catch, not even ``States.ALL``, catches those). The state machine's failure path then
never releases the run lock, which would block every run until it expires (48 h,
``recpipe.results.lock.LOCK_TTL_SECONDS``). An EventBridge rule sends those three status changes
of this state machine to the Release function, which derives the run id from the execution name
and deletes the lock only if that run owns it. Most FAILED executions did run their Catch and
released the lock already: the Release function then finds no lock of theirs and changes nothing
(owner-checked and idempotent; a newer run's lock is never touched).

Nothing may be lost silently: events EventBridge cannot deliver (after its retries) and invocations
that fail (after Lambda's asynchronous retries) both land in one encrypted SQS queue, kept 14 days,
and a message there raises an alarm on the alerts topic, i.e. "release the lock by hand".

Known gap: a Lambda invocation is not cancelled when its execution stops, so an execution stopped
during Prepare could take the lock after this cleanup ran; that lock then waits for its expiry or
a manual delete (docs/DEPLOY.md, "The run lock").
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.nag import acknowledge
from recpipe.executions.status import MAY_HOLD_LOCK, STATUS_CHANGE_EVENT

RETRY_ATTEMPTS = 3
MAX_EVENT_AGE = Duration.hours(2)


class LockCleanup(Construct):
    """``self.rule`` (this state machine's ABORTED / TIMED_OUT / FAILED executions ->
    ``release_function``), ``self.failures`` (the dead-letter queue) and ``self.alarm`` (on that
    queue; the stack has it notify the alerts topic)."""

    def __init__(self, scope: Construct, construct_id: str, *, state_machine: sfn.IStateMachine,
                 release_function: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        self.failures = sqs.Queue(
            self, "Failures",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        self.rule = events.Rule(
            self, "ExecutionStopped",
            description="recpipe pipeline executions that were stopped, timed out or failed: release their "
                        "run lock if they still hold it",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=[STATUS_CHANGE_EVENT],
                detail={"status": list(MAY_HOLD_LOCK),
                        "stateMachineArn": [state_machine.state_machine_arn]},
            ),
        )
        self.rule.add_target(events_targets.LambdaFunction(
            release_function,
            dead_letter_queue=self.failures,
            retry_attempts=RETRY_ATTEMPTS,
            max_event_age=MAX_EVENT_AGE,
        ))
        # EventBridge invokes asynchronously: a function error is retried by Lambda, then recorded here.
        # (The state machine invokes the same function synchronously; this configuration does not apply.)
        release_function.configure_async_invoke(
            on_failure=destinations.SqsDestination(self.failures),
            retry_attempts=2,
            max_event_age=MAX_EVENT_AGE,
        )

        self.alarm = cloudwatch.Alarm(
            self, "FailuresAlarm",
            alarm_description=("A recpipe run lock could not be released after its execution stopped, "
                               "failed or timed out (see the LockCleanup queue); delete the lock item by "
                               "hand (docs/DEPLOY.md)."),
            metric=self.failures.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic="Maximum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )

        acknowledge(self.failures, "AwsSolutions-SQS3",
                    "This queue is itself the dead-letter queue of the lock-cleanup rule's target and of "
                    "the Release function's asynchronous invocations (cdk-nag only recognises SQS redrive).")
