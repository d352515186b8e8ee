"""An execution that ends without its Catch (stopped, timed out, States.Runtime failure) releases its
run lock: the EventBridge rule -> Release wiring."""

from __future__ import annotations

from typing import Any

from tests.infra.cfn import as_list, statements
from tests.infra.conftest import Synth


def _release_function(synth: Synth) -> str:
    from workflows.definition import FUNCTIONS

    (logical,) = [k for k, r in synth.of_type("AWS::Lambda::Function").items()
                  if r["Properties"]["Handler"] == FUNCTIONS["Release"]]
    return logical


def _state_machine(synth: Synth) -> str:
    return synth.one("AWS::StepFunctions::StateMachine")[0]


def _cleanup_rule(synth: Synth) -> tuple[str, dict[str, Any]]:
    release = {"Fn::GetAtt": [_release_function(synth), "Arn"]}
    rules = [(k, r["Properties"]) for k, r in synth.of_type("AWS::Events::Rule").items()
             if any(t["Arn"] == release for t in r["Properties"].get("Targets", []))]
    assert len(rules) == 1, rules
    return rules[0]


def _queue(synth: Synth) -> str:
    logical, _ = synth.one("AWS::SQS::Queue")
    return logical


def test_rule_sends_this_machines_stopped_executions_to_release(synth: Synth) -> None:
    _, rule = _cleanup_rule(synth)
    assert rule["State"] == "ENABLED"
    assert rule["EventPattern"] == {
        "source": ["aws.states"],
        "detail-type": ["Step Functions Execution Status Change"],
        # FAILED too: a States.Runtime error skips every Catch (Release is idempotent for the others).
        "detail": {"status": ["ABORTED", "TIMED_OUT", "FAILED"],
                   "stateMachineArn": [{"Ref": _state_machine(synth)}]},
    }
    (target,) = rule["Targets"]
    assert "Input" not in target and "InputPath" not in target  # the handler reads the whole event
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [_queue(synth), "Arn"]}}
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert 0 < target["RetryPolicy"]["MaximumEventAgeInSeconds"] <= 24 * 3600


def test_events_may_invoke_release_from_this_rule_only(synth: Synth) -> None:
    rule, _ = _cleanup_rule(synth)
    release = _release_function(synth)
    permissions = [r["Properties"] for r in synth.of_type("AWS::Lambda::Permission").values()
                   if r["Properties"]["FunctionName"] == {"Fn::GetAtt": [release, "Arn"]}]
    assert permissions == [{
        "Action": "lambda:InvokeFunction",
        "FunctionName": {"Fn::GetAtt": [release, "Arn"]},
        "Principal": "events.amazonaws.com",
        "SourceArn": {"Fn::GetAtt": [rule, "Arn"]},
    }]


def test_failed_deliveries_and_invocations_land_in_an_encrypted_tls_only_queue(synth: Synth) -> None:
    rule, _ = _cleanup_rule(synth)
    queue = _queue(synth)
    queue_arn = {"Fn::GetAtt": [queue, "Arn"]}
    props = synth.resources[queue]["Properties"]
    assert props["SqsManagedSseEnabled"] is True  # SSE-SQS: EventBridge cannot use the aws/sqs KMS key
    assert props["MessageRetentionPeriod"] == 14 * 24 * 3600

    (policy,) = [r for r in synth.of_type("AWS::SQS::QueuePolicy").values()
                 if r["Properties"]["Queues"] == [{"Ref": queue}]]
    by_effect = {s["Effect"]: s for s in statements(policy)}
    assert by_effect["Deny"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert by_effect["Allow"]["Principal"] == {"Service": "events.amazonaws.com"}
    assert by_effect["Allow"]["Action"] == "sqs:SendMessage"
    assert by_effect["Allow"]["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule, "Arn"]}}}

    # Function errors of the asynchronous (EventBridge) invocations, after Lambda's retries.
    release = _release_function(synth)
    (config,) = [r["Properties"] for r in synth.of_type("AWS::Lambda::EventInvokeConfig").values()]
    assert config["FunctionName"] == {"Ref": release}
    assert config["DestinationConfig"] == {"OnFailure": {"Destination": queue_arn}}
    role = synth.resources[release]["Properties"]["Role"]["Fn::GetAtt"][0]
    sends = [s for r in synth.of_type("AWS::IAM::Policy").values()
             if {"Ref": role} in r["Properties"]["Roles"] for s in statements(r)
             if "sqs:SendMessage" in as_list(s["Action"])]
    assert [s["Resource"] for s in sends] == [queue_arn]


def test_a_message_in_the_queue_alarms_on_the_alerts_topic(synth: Synth) -> None:
    topic, _ = synth.one("AWS::SNS::Topic")
    synth.assertions.has_resource_properties("AWS::CloudWatch::Alarm", {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [_queue(synth), "QueueName"]}}],
        "Threshold": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": [{"Ref": topic}],
    })
