"""Failure alerts: an encrypted SNS topic fed by an EventBridge rule and CloudWatch alarms.

The topic's policy (``AWS::SNS::TopicPolicy``, which CDK writes for the EventBridge target and for
TLS) replaces SNS's default policy, so every publisher must be admitted explicitly: EventBridge by
the rule target, each CloudWatch alarm by :meth:`FailureAlerts.notify` (``cloudwatch.amazonaws.com``,
only for that alarm of this account).
"""

from __future__ import annotations

from aws_cdk import Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from recpipe.executions.status import STATUS_CHANGE_EVENT, UNSUCCESSFUL


class FailureAlerts(Construct):
    """Every execution that ends FAILED, TIMED_OUT or ABORTED is published to ``self.topic`` (with
    the execution ARN and a console link); the ``ExecutionsFailed`` alarm, and any alarm given to
    :meth:`notify`, also notify it."""

    def __init__(self, scope: Construct, construct_id: str, *, state_machine: sfn.StateMachine,
                 email: str | None) -> None:
        super().__init__(scope, construct_id)
        # The AWS-managed SNS key cannot be used by EventBridge or CloudWatch: a customer key whose
        # policy lets those two services encrypt messages for this topic.
        self.key = kms.Key(
            self, "Key",
            description="recpipe alerts topic encryption",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        for service in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
            self.key.add_to_resource_policy(iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal(service)],
                resources=["*"],  # in a key policy, "*" means this key
            ))
        self.topic = sns.Topic(
            self, "Topic",
            display_name="recpipe pipeline failures",
            master_key=self.key,
            enforce_ssl=True,
        )
        if email:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))

        self.rule = events.Rule(
            self, "ExecutionFailed",
            description="recpipe pipeline executions that failed, timed out or were aborted",
            event_pattern=events.EventPattern(
                source=["aws.states"],
                detail_type=[STATUS_CHANGE_EVENT],
                detail={"status": list(UNSUCCESSFUL),
                        "stateMachineArn": [state_machine.state_machine_arn]},
            ),
        )
        self.rule.add_target(events_targets.SnsTopic(
            self.topic,
            message=events.RuleTargetInput.from_text(
                f"recpipe pipeline execution {events.EventField.from_path('$.detail.name')} ended "
                f"{events.EventField.from_path('$.detail.status')}: "
                f"{events.EventField.from_path('$.detail.executionArn')} "
                f"(error: {events.EventField.from_path('$.detail.error')}; "
                f"cause: {events.EventField.from_path('$.detail.cause')})"),
        ))

        self.alarm = cloudwatch.Alarm(
            self, "ExecutionsFailedAlarm",
            alarm_description="A recpipe pipeline execution failed (ExecutionsFailed >= 1 in 5 minutes).",
            metric=state_machine.metric_failed(period=Duration.minutes(5), statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.notify(self.alarm)

    def notify(self, alarm: cloudwatch.Alarm) -> None:
        """``alarm`` notifies the topic: its alarm action, and a topic policy statement that lets
        CloudWatch publish on behalf of that alarm only (aws:SourceArn, aws:SourceAccount)."""
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid=f"CloudWatchAlarm{Names.unique_id(alarm)}",
            actions=["sns:Publish"],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            resources=[self.topic.topic_arn],
            conditions={"ArnEquals": {"aws:SourceArn": alarm.alarm_arn},
                        "StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
        ))
