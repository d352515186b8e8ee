"""Constructs on their own, in a bare Stack(): the options the session synth does not cover."""

from __future__ import annotations

import json
import os

import aws_cdk as cdk
import pytest
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template

from infra.exceptions import WiringError
from infra.pipeline import select_substitutions
from infra.schedule import RetrainingSchedule

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def test_a_disabled_schedule_is_deployed_disabled_with_its_input() -> None:
    stack = cdk.Stack()
    machine = sfn.StateMachine(stack, "M",
                               definition_body=sfn.DefinitionBody.from_chainable(sfn.Pass(stack, "P")))
    RetrainingSchedule(stack, "Schedule", state_machine=machine, expression="rate(7 days)",
                       time_zone="Europe/Paris", enabled=False,
                       execution_input={"fm": {"epochs": 5}, "data.prefix": "input/latest"})
    template = Template.from_stack(stack)
    (schedule,) = template.find_resources("AWS::Scheduler::Schedule").values()
    props = schedule["Properties"]
    assert props["State"] == "DISABLED"
    assert props["ScheduleExpression"] == "rate(7 days)"
    assert props["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert json.loads(props["Target"]["Input"]) == {"fm": {"epochs": 5}, "data.prefix": "input/latest"}


def test_substitutions_are_exactly_the_placeholders_used() -> None:
    available = {"A": "1", "B": "2", "C": "3"}
    assert select_substitutions(["B", "A", "B"], available) == {"B": "2", "A": "1"}
    with pytest.raises(WiringError, match=r"\$\{Missing\} that the stack does not provide; it provides: A"):
        select_substitutions(["A", "Missing"], available)


def test_iam_job_prefix_is_the_one_job_names_use() -> None:
    from infra.pipeline import JOB_PREFIX
    from recpipe.runs import DEFAULT_JOB_PREFIX

    assert f"{DEFAULT_JOB_PREFIX}-" == JOB_PREFIX
