"""Deploy-time settings: the ``cdk.json`` context keys, their defaults, and their validation.

Only ``app.py`` reads the CDK context; it hands the raw values to :func:`settings_from_context`,
which returns typed, validated :class:`RecpipeSettings` that the stack passes on to its
constructs as keyword-only props. Values given on the command line (``cdk deploy -c
recpipe:scheduleEnabled=false``) arrive as strings and are parsed like their JSON counterparts.

Context keys (defaults in ``CONTEXT_DEFAULTS``, mirrored in ``cdk.json``):

- ``recpipe:stackName`` (``"Recpipe"``): the CloudFormation stack's name (a second stack in the same
  account and region needs another one, and another ``recpipe:namePrefix``).
- ``recpipe:namePrefix`` (``"recpipe"``): prefix of the state machine (``<prefix>-pipeline``), the
  functions, log groups and every SageMaker job and model a run creates (``<prefix>-<run id>-...``;
  the IAM policies are scoped on ``<prefix>-*``, so two stacks in one account need prefixes of
  which neither is the other's start followed by ``-``, e.g. ``recpipe-a`` and ``recpipe-b``).
- ``recpipe:existingTableName`` (``""``): empty = the stack creates the results table and
  CloudFormation names it (output ``TableName``); a name = use that existing table instead, e.g.
  the one a ``cdk destroy`` retained (docs/DEPLOY.md, "Tear down").
- ``recpipe:functionMemoryMb`` (``{}``): memory per function (``{"Repackage": 6144}``) over the
  built-in sizes of ``infra.functions.FUNCTION_SPECS``, which are all <= 3,008 MB (what CloudFormation
  accepts on a new account); 128-10,240 MB.
- ``recpipe:scheduleEnabled`` (``true``): whether the retraining schedule starts executions (a
  disabled schedule is still deployed, in state DISABLED).
- ``recpipe:scheduleExpression`` (``"cron(0 3 ? * SUN *)"``): EventBridge Scheduler expression.
- ``recpipe:scheduleTimeZone`` (``"UTC"``): IANA time zone of the cron expression.
- ``recpipe:scheduleInput`` (``{}``): execution input of scheduled runs (config keys, validated).
- ``recpipe:pipelineDefaults`` (``{}``): deploy-time overrides of the pipeline defaults, any key of
  ``recpipe.config`` (which alone states the defaults); validated at synth, given to Prepare as
  ``RECPIPE_DEFAULTS``.
- ``recpipe:alertEmail`` (``""``): subscribe this address to the failure topic.
- ``recpipe:runRetentionDays`` (``90``): ``runs/`` objects expire after this many days.
- ``recpipe:accessLogRetentionDays`` (``365``): S3 server access logs expire after this many days.
- ``recpipe:logRetentionDays`` (``90``): CloudWatch log retention (a value CloudWatch accepts).
- ``recpipe:bundleDependencies`` (``true``): pip-install numpy/scipy/Powertools into the Lambda
  layer; ``false`` ships a placeholder layer (fast, offline synths for tests; never deploy it).
"""

from __future__ import annotations

import difflib
import json
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.exceptions import SettingsError
from recpipe import config as cfg
from recpipe.remote.aws import DEFAULT_STACK
from recpipe.runs import DEFAULT_JOB_PREFIX

PREFIX = "recpipe:"

CONTEXT_DEFAULTS: dict[str, Any] = {
    "recpipe:stackName": DEFAULT_STACK,
    "recpipe:namePrefix": DEFAULT_JOB_PREFIX,
    "recpipe:existingTableName": "",
    "recpipe:functionMemoryMb": {},
    "recpipe:scheduleEnabled": True,
    "recpipe:scheduleExpression": "cron(0 3 ? * SUN *)",
    "recpipe:scheduleTimeZone": "UTC",
    "recpipe:scheduleInput": {},
    "recpipe:pipelineDefaults": {},
    "recpipe:alertEmail": "",
    "recpipe:runRetentionDays": 90,
    "recpipe:accessLogRetentionDays": 365,
    "recpipe:logRetentionDays": 90,
    "recpipe:bundleDependencies": True,
}
CONTEXT_KEYS: tuple[str, ...] = tuple(CONTEXT_DEFAULTS)

# The retention periods CloudWatch Logs accepts (aws_logs.RetentionDays).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192,
                      2557, 2922, 3288, 3653)
_NAME_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_TABLE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{3,255}$")
# Lambda's memory range; above NEW_ACCOUNT_MAX_MEMORY_MB only once the account's quota allows it.
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
NEW_ACCOUNT_MAX_MEMORY_MB = 3008
_SCHEDULE = re.compile(r"^(cron|rate|at)\(.+\)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    enabled: bool = True
    expression: str = "cron(0 3 ? * SUN *)"
    time_zone: str = "UTC"
    input: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RecpipeSettings:
    stack_name: str = DEFAULT_STACK
    name_prefix: str = DEFAULT_JOB_PREFIX
    existing_table_name: str | None = None
    function_memory_mb: Mapping[str, int] = field(default_factory=dict)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    pipeline_defaults: Mapping[str, cfg.Scalar] = field(default_factory=dict)
    alert_email: str | None = None
    run_retention_days: int = 90
    access_log_retention_days: int = 365
    log_retention_days: int = 90
    bundle_dependencies: bool = True


def settings_from_context(values: Mapping[str, Any], *,
                          functions: Iterable[str] | None = None) -> RecpipeSettings:
    """Typed settings from raw context values (``None`` or absent = the default).

    ``functions``: the pipeline's function names (``workflows.definition.FUNCTIONS``); when given,
    ``recpipe:functionMemoryMb`` may only name those.
    """
    unknown = sorted(k for k in values if k.startswith(PREFIX) and k not in CONTEXT_DEFAULTS)
    if unknown:
        raise SettingsError(f"Unknown context key(s) {', '.join(unknown)}; the recpipe keys are: "
                            f"{', '.join(CONTEXT_KEYS)}.")

    def get(key: str) -> Any:
        value = values.get(key)
        return CONTEXT_DEFAULTS[key] if value is None else value

    stack_name = _string("recpipe:stackName", get("recpipe:stackName"))
    if not _STACK_NAME.match(stack_name):
        raise SettingsError(f"The context key 'recpipe:stackName' must be a CloudFormation stack name "
                            f"(1-128 characters of A-Z, a-z, 0-9 and '-', starting with a letter); "
                            f"got {stack_name!r}.")
    name_prefix = _string("recpipe:namePrefix", get("recpipe:namePrefix"))
    if not _NAME_PREFIX.match(name_prefix):
        raise SettingsError(f"The context key 'recpipe:namePrefix' must be 2-32 characters of a-z, 0-9 and "
                            f"'-', starting with a letter; got {name_prefix!r}.")
    expression = _string("recpipe:scheduleExpression", get("recpipe:scheduleExpression")).strip()
    if not _SCHEDULE.match(expression):
        raise SettingsError("The context key 'recpipe:scheduleExpression' must be an EventBridge Scheduler "
                            f"expression like 'cron(0 3 ? * SUN *)' or 'rate(7 days)'; got {expression!r}.")
    time_zone = _string("recpipe:scheduleTimeZone", get("recpipe:scheduleTimeZone"))
    known_zones = zoneinfo.available_timezones()
    if known_zones and time_zone not in known_zones:
        raise SettingsError(f"The context key 'recpipe:scheduleTimeZone' must be an IANA time zone such as "
                            f"'Europe/Paris'; got {time_zone!r}.")
    email = _string("recpipe:alertEmail", get("recpipe:alertEmail")).strip()
    if email and not _EMAIL.match(email):
        raise SettingsError(f"The context key 'recpipe:alertEmail' must be an e-mail address or empty; "
                            f"got {email!r}.")
    table = _string("recpipe:existingTableName", get("recpipe:existingTableName")).strip()
    if table and not _TABLE_NAME.match(table):
        raise SettingsError(f"The context key 'recpipe:existingTableName' must be empty or a DynamoDB table "
                            f"name (3-255 characters of a-z, A-Z, 0-9, '_', '-', '.'); got {table!r}.")
    log_retention = _int("recpipe:logRetentionDays", get("recpipe:logRetentionDays"))
    if log_retention not in LOG_RETENTION_DAYS:
        raise SettingsError(f"The context key 'recpipe:logRetentionDays' must be one of "
                            f"{', '.join(map(str, LOG_RETENTION_DAYS))}; got {log_retention}.")
    return RecpipeSettings(
        stack_name=stack_name,
        name_prefix=name_prefix,
        existing_table_name=table or None,
        function_memory_mb=_memory_map(get("recpipe:functionMemoryMb"), functions),
        schedule=ScheduleSettings(
            enabled=_bool("recpipe:scheduleEnabled", get("recpipe:scheduleEnabled")),
            expression=expression,
            time_zone=time_zone,
            input=_config_layer("recpipe:scheduleInput", get("recpipe:scheduleInput"), keep_raw=True),
        ),
        pipeline_defaults=_config_layer("recpipe:pipelineDefaults", get("recpipe:pipelineDefaults")),
        alert_email=email or None,
        run_retention_days=_int("recpipe:runRetentionDays", get("recpipe:runRetentionDays"), lo=1),
        access_log_retention_days=_int("recpipe:accessLogRetentionDays",
                                       get("recpipe:accessLogRetentionDays"), lo=1),
        log_retention_days=log_retention,
        bundle_dependencies=_bool("recpipe:bundleDependencies", get("recpipe:bundleDependencies")),
    )


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingsError(f"The context key '{key}' must be a string; got {value!r}.")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SettingsError(f"The context key '{key}' must be true or false; got {value!r}.")


def _int(key: str, value: Any, lo: int | None = None) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"The context key '{key}' must be an integer; got {value!r}.")
    if lo is not None and value < lo:
        raise SettingsError(f"The context key '{key}' must be >= {lo}; got {value}.")
    return value


def _json_object(key: str, value: Any) -> Mapping[str, Any]:
    """A JSON object given in cdk.json or as a ``-c key='{...}'`` string."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"The context key '{key}' is not valid JSON: {exc}.") from exc
    if not isinstance(value, Mapping):
        raise SettingsError(f"The context key '{key}' must be a JSON object; got {value!r}.")
    return value


def _memory_map(value: Any, functions: Iterable[str] | None) -> dict[str, int]:
    key = "recpipe:functionMemoryMb"
    value = _json_object(key, value)
    known = list(functions) if functions is not None else None
    memory: dict[str, int] = {}
    for name, mb in value.items():
        if known is not None and name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"The context key '{key}' names an unknown function {name!r}{hint}; the "
                                f"functions are: {', '.join(known)}.")
        mb = _int(f"{key}.{name}", mb)
        if not MIN_MEMORY_MB <= mb <= MAX_MEMORY_MB:
            raise SettingsError(f"The context key '{key}.{name}' must be in "
                                f"[{MIN_MEMORY_MB}, {MAX_MEMORY_MB}] MB (Lambda's range; above "
                                f"{NEW_ACCOUNT_MAX_MEMORY_MB} only once the account's memory quota allows "
                                f"it, see docs/DEPLOY.md); got {mb}.")
        memory[str(name)] = mb
    return memory


def _config_layer(key: str, value: Any, *, keep_raw: bool = False) -> dict[str, Any]:
    """A JSON object of pipeline config keys, checked against ``recpipe.config`` at synth time."""
    value = _json_object(key, value)
    try:
        clean = cfg.validate(value)
    except cfg.ConfigError as exc:
        raise SettingsError(f"The context key '{key}' is not a valid pipeline configuration: "
                            + "; ".join(exc.problems) + ".") from exc
    # Scheduled input is passed through as written (flat or nested both work); defaults go flat.
    return dict(value) if keep_raw else clean
