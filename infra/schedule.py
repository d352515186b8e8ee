"""Scheduled retraining: an EventBridge Scheduler schedule that starts the pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import Aws, Duration, TimeZone
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct


class RetrainingSchedule(Construct):
    """Starts an execution with ``execution_input`` (``{}`` = the deploy-time defaults) on a cron.

    A disabled schedule is still deployed (state ``DISABLED``) so that it can be switched on in the
    console without a deploy. Its role may only ``states:StartExecution`` on this one machine.
    """

    def __init__(self, scope: Construct, construct_id: str, *, state_machine: sfn.IStateMachine,
                 expression: str, time_zone: str, enabled: bool,
                 execution_input: Mapping[str, Any]) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self, "Role",
            # Only schedules of this account may assume it (confused-deputy protection).
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}),
            description="recpipe retraining schedule: starts the pipeline",
        )
        self.schedule = scheduler.Schedule(
            self, "Schedule",
            description="recpipe scheduled retraining",
            schedule=scheduler.ScheduleExpression.expression(expression, TimeZone.of(time_zone)),
            enabled=enabled,
            target=targets.StepFunctionsStartExecution(
                state_machine,
                input=scheduler.ScheduleTargetInput.from_object(dict(execution_input)),
                role=self.role,
                retry_attempts=3,
                max_event_age=Duration.hours(1),
            ),
        )
