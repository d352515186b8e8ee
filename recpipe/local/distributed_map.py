"""AWS's Distributed Map semantics where moto 5.2.5's interpreter departs from them.

moto runs a ``DISTRIBUTED`` Map with an S3 ``ItemReader`` (JSON array, one child per element),
``ItemSelector``, ``MaxConcurrency``/``MaxConcurrencyPath`` (real threads) and ``$$.Map.Item``. Two
departures matter to recpipe (pinned by ``tests/unit/local/test_distributed_map.py``):

1. **Failed children do not fail the Map.** moto counts a failed child (its output becomes null)
   but ignores ``ToleratedFailureCount``/``ToleratedFailurePercentage``: the Map, and the execution,
   succeed. On AWS the Map Run fails with ``States.ExceedToleratedFailureThreshold`` once more
   children failed (or timed out) than tolerated, by count or by percentage of all items, either
   one (AWS docs, "Tolerated failure threshold for Distributed Map state"); a threshold that is
   not declared is not checked, and with neither declared none is tolerated. :func:`install` makes
   the Map fail that way after its children ran (AWS may stop early; the outcome is the same: the
   Map fails and its Catch runs).
2. **ResultWriter writes only ``manifest.json``** (empty ``ResultFiles``). AWS also writes the
   children's results, ``SUCCEEDED_<n>.json`` (and ``FAILED_<n>.json``/``PENDING_<n>.json``), and lists
   them in the manifest. :func:`install` writes ``SUCCEEDED_0.json`` with one record per
   succeeded child (``Output`` as a JSON string, ``Status``; moto keeps no per-child execution ARN
   or input) and lists it. recpipe's Commit does not read these files.

3. **``$$.Execution.StartTime`` is a Python datetime**, not AWS's ISO 8601 string
   (``2026-03-01T11:59:30.123Z``): passed to a Lambda (the Publish Map's ItemSelector does, so
   every shard writes the same ``generated_at``) it cannot be serialised. :func:`install` stores it
   as AWS spells it.

Everything touched is listed in :data:`MOTO_INTERNALS` and checked with the rest of the hook's
internals (:func:`recpipe.local.moto_hook.check_moto_internals`).
"""

from __future__ import annotations

import datetime
import importlib
import json
import threading
from typing import Any

_P = "moto.stepfunctions.parser.asl.component"
_MAP = f"{_P}.state.exec.state_map"
_ITERATION = f"{_MAP}.iteration.distributed_iteration_component"
_WRITER = f"{_MAP}.result_writer.resource_eval.resource_eval_s3"
_WORKER = "moto.stepfunctions.parser.backend.execution_worker"

# (module, attribute) pairs this module relies on.
MOTO_INTERNALS: tuple[tuple[str, str], ...] = (
    (_ITERATION, "DistributedIterationComponent"),
    (f"{_MAP}.state_map", "StateMap"),
    (f"{_MAP}.tolerated_failure", "ToleratedFailureCountDecl"),
    (f"{_MAP}.tolerated_failure", "ToleratedFailurePercentageDecl"),
    (_WRITER, "ResourceEvalS3"),
    (_WORKER, "ExecutionWorker"),
    (f"{_P}.common.error_name.failure_event", "FailureEvent"),
    (f"{_P}.common.error_name.failure_event", "FailureEventException"),
    (f"{_P}.common.error_name.states_error_name", "StatesErrorName"),
    ("moto.stepfunctions.parser.api", "MapRunFailedEventDetails"),
    ("moto.stepfunctions.parser.api", "HistoryEventType"),
    ("moto.stepfunctions.parser.asl.eval.event.event_detail", "EventDetails"),
    ("moto.stepfunctions.parser.asl.utils.boto_client", "boto_client_for"),
    ("moto.stepfunctions.parser.asl.utils.encoding", "to_json_str"),
)
# (class path, method) pairs whose names must not move.
MOTO_METHODS: tuple[tuple[str, str, str], ...] = (
    (_WORKER, "ExecutionWorker", "_get_evaluation_environment"),
    (_ITERATION, "DistributedIterationComponent", "_map_run"),
    (f"{_MAP}.state_map", "StateMap", "from_state_props"),
    (f"{_MAP}.state_map", "StateMap", "_eval_execution"),
    (_WRITER, "ResourceEvalS3", "_handle_put_object"),
)

ERROR = "States.ExceedToleratedFailureThreshold"
CAUSE = "The specified tolerated failure threshold was exceeded"

_declared = threading.local()  # per thread: stack of (count declared, percentage declared)
_saved: dict[str, Any] = {}


def _import(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


def check() -> list[str]:
    """Problems with the moto internals this module needs (empty when all are there)."""
    problems = []
    for module, attribute in MOTO_INTERNALS:
        try:
            found = hasattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            problems.append(f"cannot import {module} ({exc})")
            continue
        if not found:
            problems.append(f"{module} has no attribute '{attribute}'")
    for module, cls, method in MOTO_METHODS:
        try:
            owner = _import(module, cls)
        except (ImportError, AttributeError):
            continue  # reported above
        if not callable(getattr(owner, method, None)):
            problems.append(f"{cls} has no method '{method}'")
    return problems


def aws_time(value: Any) -> Any:
    """A datetime as the context object spells times on AWS (``2026-03-01T11:59:30.123Z``)."""
    if not isinstance(value, datetime.datetime):
        return value
    moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def threshold_exceeded(failed: int, total: int, *, count: int | None, percentage: float | None) -> bool:
    """AWS's rule: fail when the failed (or timed-out) children exceed either declared threshold;
    with neither declared, any failure exceeds the default of 0."""
    if count is None and percentage is None:
        count = 0
    if count is not None and failed > count:
        return True
    return percentage is not None and total > 0 and 100.0 * failed / total > percentage


def install() -> None:
    """Patch moto (idempotent; :func:`uninstall` restores it)."""
    if _saved:
        return
    component = _import(_ITERATION, "DistributedIterationComponent")
    state_map = _import(f"{_MAP}.state_map", "StateMap")
    writer = _import(_WRITER, "ResourceEvalS3")
    count_decl = _import(f"{_MAP}.tolerated_failure", "ToleratedFailureCountDecl")
    percentage_decl = _import(f"{_MAP}.tolerated_failure", "ToleratedFailurePercentageDecl")
    failure_event = _import(f"{_P}.common.error_name.failure_event", "FailureEvent")
    failure_exception = _import(f"{_P}.common.error_name.failure_event", "FailureEventException")
    states_error_name = _import(f"{_P}.common.error_name.states_error_name", "StatesErrorName")
    states_type = _import(f"{_P}.common.error_name.states_error_name_type", "StatesErrorNameType")
    map_run_failed = _import("moto.stepfunctions.parser.api", "MapRunFailedEventDetails")
    history_event_type = _import("moto.stepfunctions.parser.api", "HistoryEventType")
    event_details = _import("moto.stepfunctions.parser.asl.eval.event.event_detail", "EventDetails")

    original_props = state_map.from_state_props
    original_execution = state_map._eval_execution
    original_map_run = component._map_run
    original_put = writer._handle_put_object
    worker = _import(_WORKER, "ExecutionWorker")
    original_environment = worker._get_evaluation_environment

    def evaluation_environment(self: Any) -> Any:
        env = original_environment(self)
        execution = env.states.context_object.context_object_data["Execution"]
        execution["StartTime"] = aws_time(execution["StartTime"])
        return env

    def from_state_props(self: Any, state_props: Any) -> None:
        original_props(self, state_props)
        # moto defaults an absent threshold to 0, which AWS does not check: remember what was declared.
        self._recpipe_declared = (state_props.get(count_decl) is not None,
                                  state_props.get(percentage_decl) is not None)

    def eval_execution(self: Any, env: Any) -> None:
        stack = _declared.__dict__.setdefault("stack", [])
        stack.append(getattr(self, "_recpipe_declared", (False, False)))
        try:
            original_execution(self, env)
        finally:
            stack.pop()

    def map_run(self: Any, env: Any, eval_input: Any) -> None:
        original_map_run(self, env, eval_input)
        items = eval_input.map_run_record.item_counter
        failed = items.failed.get() + items.timed_out.get()
        stack = _declared.__dict__.get("stack") or [(False, False)]
        count_declared, percentage_declared = stack[-1]
        if threshold_exceeded(
                failed, items.total.get(),
                count=eval_input.tolerated_failure_count if count_declared else None,
                percentage=eval_input.tolerated_failure_percentage if percentage_declared else None):
            env.stack.pop()  # the children's outputs _map_run left for the Map
            details = event_details(mapRunFailedEventDetails=map_run_failed(error=ERROR, cause=CAUSE))
            raise failure_exception(failure_event=failure_event(
                env=env,
                error_name=states_error_name(typ=states_type.StatesExceedToleratedFailureThreshold),
                event_type=history_event_type.MapRunFailed,
                event_details=details,
            ))

    def handle_put_object(env: Any, resource_runtime_part: Any, state_credentials: Any) -> None:
        results = env.stack[-2] if len(env.stack) >= 2 else None  # what moto pops and drops
        original_put(env, resource_runtime_part, state_credentials)
        if isinstance(results, list):
            _write_result_files(env.stack[-1], results, resource_runtime_part, state_credentials)

    state_map.from_state_props = from_state_props
    state_map._eval_execution = eval_execution
    component._map_run = map_run
    writer._handle_put_object = staticmethod(handle_put_object)
    worker._get_evaluation_environment = evaluation_environment
    _saved.update(props=original_props, execution=original_execution, map_run=original_map_run,
                  put=original_put, environment=original_environment)


def _write_result_files(details: Any, results: list[Any], runtime: Any, credentials: Any) -> None:
    """``SUCCEEDED_0.json`` next to moto's manifest, and the manifest listing it."""
    boto_client_for = _import("moto.stepfunctions.parser.asl.utils.boto_client", "boto_client_for")
    to_json_str = _import("moto.stepfunctions.parser.asl.utils.encoding", "to_json_str")  # knows datetimes
    s3 = boto_client_for(service="s3", region=runtime.region, state_credentials=credentials)
    bucket = details["ResultWriterDetails"]["Bucket"]
    manifest_key = details["ResultWriterDetails"]["Key"]
    base = manifest_key.rsplit("/", 1)[0]
    records = [{"Output": to_json_str(output), "OutputDetails": {"Included": True}, "Status": "SUCCEEDED"}
               for output in results if output is not None]
    body = json.dumps(records).encode("utf-8")
    s3.put_object(Bucket=bucket, Key=f"{base}/SUCCEEDED_0.json", Body=body)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest["ResultFiles"]["SUCCEEDED"] = [{"Key": f"{base}/SUCCEEDED_0.json", "Size": len(body)}]
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest, indent=2).encode("utf-8"))


def uninstall() -> None:
    if not _saved:
        return
    component = _import(_ITERATION, "DistributedIterationComponent")
    state_map = _import(f"{_MAP}.state_map", "StateMap")
    writer = _import(_WRITER, "ResourceEvalS3")
    state_map.from_state_props = _saved["props"]
    state_map._eval_execution = _saved["execution"]
    component._map_run = _saved["map_run"]
    writer._handle_put_object = staticmethod(_saved["put"])
    _import(_WORKER, "ExecutionWorker")._get_evaluation_environment = _saved["environment"]
    _saved.clear()
