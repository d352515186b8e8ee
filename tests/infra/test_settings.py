"""cdk.json context -> typed settings: defaults, command-line strings, and clear errors."""

from __future__ import annotations

import json
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from infra.exceptions import SettingsError
from infra.settings import CONTEXT_DEFAULTS, RecpipeSettings, settings_from_context

ROOT = Path(__file__).resolve().parents[2]


def test_cdk_json_documents_every_context_default() -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    recpipe_keys = {k: v for k, v in context.items() if k.startswith("recpipe:")}
    assert recpipe_keys == CONTEXT_DEFAULTS


def test_defaults() -> None:
    settings = settings_from_context({})
    assert settings.existing_table_name is None  # the stack creates the table, CloudFormation names it
    assert settings.function_memory_mb == {}
    assert settings.schedule.enabled is True
    assert settings.schedule.expression == "cron(0 3 ? * SUN *)"
    assert settings.schedule.input == {}
    assert settings.alert_email is None
    assert settings.pipeline_defaults == {}  # recpipe.config alone states the pipeline defaults
    assert settings.bundle_dependencies is True


def test_cdk_json_ships_no_copy_of_the_pipeline_defaults() -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    assert context["recpipe:pipelineDefaults"] == {}
    assert context["recpipe:functionMemoryMb"] == {}


def test_a_second_stack_is_named_by_its_settings(tmp_path: Path) -> None:
    from app import STACK_NAME, build_app, cdk_json_context
    from infra.stack import WorkflowArtifacts

    assert CONTEXT_DEFAULTS["recpipe:stackName"] == STACK_NAME
    context = cdk_json_context() | {"recpipe:stackName": "Recpipe-staging",
                                    "recpipe:namePrefix": "recpipe-staging",
                                    "recpipe:bundleDependencies": False}
    _, stack = build_app(context=context, workflow=WorkflowArtifacts.load(), cache_dir=tmp_path)
    assert stack.stack_name == "Recpipe-staging"
    assert stack.settings.name_prefix == "recpipe-staging"


def test_function_memory_and_existing_table() -> None:
    settings = settings_from_context({
        "recpipe:functionMemoryMb": '{"Repackage": 6144, "Plan": "512"}',
        "recpipe:existingTableName": "Recpipe-ResultsTable1F2E3D4C-ABCDEF123456",
    }, functions=["Prepare", "Plan", "Repackage"])
    assert settings.function_memory_mb == {"Repackage": 6144, "Plan": 512}
    assert settings.existing_table_name == "Recpipe-ResultsTable1F2E3D4C-ABCDEF123456"


@pytest.mark.parametrize(("value", "message"), [
    ({"Repackag": 2048}, r"'recpipe:functionMemoryMb' names an unknown function 'Repackag' "
                         r"\(did you mean 'Repackage'\?\); the functions are: Prepare, Repackage"),
    ({"Repackage": 64}, r"'recpipe:functionMemoryMb.Repackage' must be in \[128, 10240\] MB .*got 64"),
    ({"Repackage": 10241}, r"'recpipe:functionMemoryMb.Repackage' must be in \[128, 10240\] MB"),
    ({"Repackage": 3008.5}, r"'recpipe:functionMemoryMb.Repackage' must be an integer; got 3008.5"),
    ("[3008]", r"'recpipe:functionMemoryMb' must be a JSON object"),
])
def test_bad_function_memory_is_rejected(value: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from_context({"recpipe:functionMemoryMb": value}, functions=["Prepare", "Repackage"])


def test_command_line_strings_are_parsed() -> None:
    settings = settings_from_context({
        "recpipe:scheduleEnabled": "false",
        "recpipe:runRetentionDays": "30",
        "recpipe:pipelineDefaults": '{"fm": {"num_factors": 32}, "publish.top_n": 50}',
        "recpipe:scheduleInput": '{"data.prefix": "input/latest"}',
        "recpipe:alertEmail": "ops@example.com",
        "recpipe:scheduleTimeZone": "Europe/Paris",
        "recpipe:bundleDependencies": "true",
    })
    assert settings == RecpipeSettings(
        name_prefix="recpipe",
        schedule=settings.schedule,
        pipeline_defaults={"fm.num_factors": 32, "publish.top_n": 50},
        alert_email="ops@example.com",
        run_retention_days=30,
    )
    assert settings.schedule.enabled is False
    assert settings.schedule.time_zone == "Europe/Paris"
    assert settings.schedule.input == {"data.prefix": "input/latest"}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("recpipe:pipelineDefaults", {"fm.num_factor": 8},
     r"'recpipe:pipelineDefaults' is not a valid pipeline configuration: unknown key 'fm.num_factor' "
     r"\(did you mean 'fm.num_factors'\?\)"),
    ("recpipe:pipelineDefaults", {"publish.top_n": 0}, r"'publish.top_n' must be in \[1, 1000\], got 0"),
    ("recpipe:scheduleInput", "{not json", r"'recpipe:scheduleInput' is not valid JSON"),
    ("recpipe:scheduleInput", [1], r"'recpipe:scheduleInput' must be a JSON object"),
    ("recpipe:scheduleExpression", "every sunday", r"'recpipe:scheduleExpression' must be an EventBridge"),
    pytest.param("recpipe:scheduleTimeZone", "Mars/Olympus", r"'recpipe:scheduleTimeZone' must be an IANA",
                 marks=pytest.mark.skipif(not zoneinfo.available_timezones(), reason="no tz database")),
    ("recpipe:scheduleEnabled", "yes", r"'recpipe:scheduleEnabled' must be true or false; got 'yes'"),
    ("recpipe:alertEmail", "not-an-address", r"'recpipe:alertEmail' must be an e-mail address"),
    ("recpipe:logRetentionDays", 10, r"'recpipe:logRetentionDays' must be one of 1, 3, 5"),
    ("recpipe:runRetentionDays", 0, r"'recpipe:runRetentionDays' must be >= 1; got 0"),
    ("recpipe:namePrefix", "Recpipe_Prod", r"'recpipe:namePrefix' must be 2-32 characters"),
    ("recpipe:stackName", "Recpipe staging", r"'recpipe:stackName' must be a CloudFormation stack name"),
    ("recpipe:existingTableName", "my table", r"'recpipe:existingTableName' must be empty or a DynamoDB"),
    ("recpipe:scheduleExpresion", "cron(0 3 * * ? *)", r"Unknown context key\(s\) recpipe:scheduleExpresion"),
])
def test_bad_context_values_are_rejected_with_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings_from_context({key: value})
