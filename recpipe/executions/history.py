"""Step Functions execution history -> one record per state run (shared by local and AWS runs).

Works on the events of ``get_execution_history`` (moto's or AWS's: the same shapes). States inside
a Map iteration are told apart by the iteration they ran in, found by following
``previousEventId`` back to the ``MapIterationStarted`` event; they are labelled with the
iteration item's ``variant`` (e.g. ``Train FM [serve]``) when the item has one, else its index.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from recpipe.executions.status import RUNNING, SUCCEEDED

# The definition's first state (workflows.definition): its output holds the run document at "run".
PREPARE_STATE = "Prepare"
_ITER_START = "MapIterationStarted"
_ITER_END = ("MapIterationSucceeded", "MapIterationFailed", "MapIterationAborted")
_FAILED_TYPES = ("TaskFailed", "TaskTimedOut", "LambdaFunctionFailed", "LambdaFunctionTimedOut",
                 "ActivityFailed", "ActivityTimedOut", "TaskSubmitFailed", "TaskStartFailed",
                 "LambdaFunctionStartFailed", "LambdaFunctionScheduleFailed", "MapStateFailed",
                 "ParallelStateFailed", "EvaluationFailed")
_SUCCEEDED_TYPES = ("TaskSucceeded", "LambdaFunctionSucceeded", "ActivitySucceeded", "MapStateSucceeded",
                    "ParallelStateSucceeded")


def _time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class StateRun:
    """One run of one state (a state inside a Map runs once per iteration)."""

    name: str
    type: str                        # "Task", "Choice", "Map", ...
    path: tuple[int, ...]            # Map iteration indices, outermost first; () at the top level
    started: dt.datetime
    ended: dt.datetime | None = None
    status: str = "running"          # running | succeeded | failed | aborted (cut short by the end)
    caught: bool = False             # failed, and a Catch routed the execution on
    attempts: int = 0                # task attempts (> 1 after retries)
    error: str | None = None
    cause: str | None = None
    variant: str | None = None
    input: Any = None
    output: Any = None
    entered_id: int = 0

    @property
    def label(self) -> str:
        if not self.path:
            return self.name
        return f"{self.name} [{self.variant if self.variant else '.'.join(map(str, self.path))}]"

    @property
    def seconds(self) -> float | None:
        return (self.ended - self.started).total_seconds() if self.ended else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["started"] = self.started.isoformat()
        out["ended"] = self.ended.isoformat() if self.ended else None
        out["path"] = list(self.path)
        out["label"] = self.label
        out["seconds"] = self.seconds
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StateRun:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["started"] = _time(fields["started"])
        fields["ended"] = _time(fields["ended"]) if fields.get("ended") else None
        fields["path"] = tuple(fields.get("path", ()))
        return cls(**fields)


@dataclass
class ExecutionOutcome:
    status: str                       # RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED
    error: str | None = None
    cause: str | None = None
    output: Any = None
    states: list[StateRun] = field(default_factory=list)

    @property
    def failed_state(self) -> StateRun | None:
        """Where the failure started: the first failed Task/Choice/Pass (not the Fail states and Map
        containers it propagated through); else the first Fail state (e.g. a quality gate)."""
        failed = [s for s in self.states if s.status == "failed"]
        origins = [s for s in failed if s.type not in ("Fail", "Map", "Parallel")]
        chosen = origins or failed
        return chosen[0] if chosen else None


def state_runs(events: Iterable[Mapping[str, Any]]) -> list[StateRun]:
    """Fold history events into state runs, in the order the states were entered."""
    by_id: dict[int, Mapping[str, Any]] = {}
    inner: dict[int, tuple[int, ...]] = {}      # iteration path that events following this one are in
    open_runs: dict[tuple[tuple[int, ...], str], StateRun] = {}
    runs: list[StateRun] = []
    last_in_path: dict[tuple[int, ...], StateRun] = {}
    variants: dict[tuple[int, ...], str] = {}
    open_maps: list[tuple[tuple[int, ...], str]] = []   # (path, name) of Map states not yet exited
    for event in events:
        eid = int(event["id"])
        by_id[eid] = event
        etype = str(event["type"])
        prev = int(event.get("previousEventId") or 0)
        here = inner.get(prev, ())
        if etype == _ITER_START:
            index = int(event.get("mapIterationStartedEventDetails", {}).get("index", 0))
            inner[eid] = (*here, index)
            continue
        if etype in _ITER_END:
            inner[eid] = here[:-1]
            continue
        if etype.startswith("MapState") and etype != "MapStateEntered" and open_maps:
            # moto links a Map's closing events to an iteration's last event: use the Map's own path.
            if etype == "MapStateExited":
                exited = str(event.get("stateExitedEventDetails", {}).get("name", ""))
                index = next((i for i in range(len(open_maps) - 1, -1, -1) if open_maps[i][1] == exited),
                             len(open_maps) - 1)
                here = open_maps.pop(index)[0]
            else:
                here = open_maps[-1][0]
        inner[eid] = here
        when = _time(event["timestamp"])
        if etype.endswith("StateEntered"):
            details = event.get("stateEnteredEventDetails", {})
            name = str(details.get("name", "?"))
            state_input = _json(details.get("input"))
            if here and here not in variants:
                variant = _variant_of(state_input)
                if variant:
                    variants[here] = variant
            run = StateRun(name=name, type=etype[: -len("StateEntered")], path=here, started=when,
                           variant=variants.get(here), input=state_input, entered_id=eid)
            runs.append(run)
            if run.type == "Map":
                open_maps.append((here, name))
            open_runs[(here, name)] = run
            last_in_path[here] = run
            if run.type in ("Succeed", "Fail"):
                run.ended = when
                run.status = "succeeded" if run.type == "Succeed" else "failed"
                if run.type == "Fail":
                    run.caught = False
            continue
        if etype.endswith("StateExited"):
            details = event.get("stateExitedEventDetails", {})
            run_or_none = open_runs.pop((here, str(details.get("name", "?"))), None)
            if run_or_none is not None:
                run_or_none.ended = when
                run_or_none.output = _json(details.get("output"))
                if run_or_none.status == "failed":
                    run_or_none.caught = True
                elif run_or_none.status == "running":
                    run_or_none.status = "succeeded"
            continue
        current = last_in_path.get(here)
        if current is None or current.ended is not None:
            continue
        if etype in ("TaskScheduled", "LambdaFunctionScheduled", "ActivityScheduled"):
            current.attempts += 1
            current.status = "running"
            current.error = current.cause = None
        elif etype in _SUCCEEDED_TYPES:
            current.status = "succeeded"
        elif etype in _FAILED_TYPES:
            details = next((v for k, v in event.items()
                            if k.endswith("EventDetails") and isinstance(v, Mapping)), {})
            current.status = "failed"
            current.error = details.get("error")
            current.cause = details.get("cause")
    return runs


def _variant_of(state_input: Any) -> str | None:
    if isinstance(state_input, Mapping):
        for key in ("variant", "name"):
            value = state_input.get(key)
            if isinstance(value, str) and len(value) <= 40:
                return value
            if isinstance(value, Mapping) and isinstance(value.get("name"), str):
                return str(value["name"])
    if isinstance(state_input, str) and len(state_input) <= 40:
        return state_input
    return None


def outcome_from(describe: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> ExecutionOutcome:
    """Combine ``describe_execution`` and the history into an :class:`ExecutionOutcome`."""
    states = state_runs(events)
    status = str(describe.get("status", RUNNING))
    if status != RUNNING:
        end = describe.get("stopDate")
        for run in states:
            if run.ended is None:
                run.ended = _time(end) if end else run.started
                if run.status == "running":
                    run.status = "aborted" if status != SUCCEEDED else "succeeded"
    return ExecutionOutcome(status=status, error=describe.get("error"), cause=describe.get("cause"),
                            output=_json(describe.get("output")), states=states)


def run_id_of(outcome: ExecutionOutcome) -> str | None:
    """The run id of the run document Prepare returned (its output's ``run.run_id``: the definition's
    "Prepare" state puts the document at ``$.run``); None when Prepare has not succeeded."""
    for state in outcome.states:
        if state.name == PREPARE_STATE and not state.path and state.status == "succeeded":
            run = state.output.get("run") if isinstance(state.output, Mapping) else None
            run_id = run.get("run_id") if isinstance(run, Mapping) else None
            return run_id if isinstance(run_id, str) else None
    return None


def jsonable_events(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """History events with timestamps as ISO strings (for the local record)."""
    out = []
    for event in events:
        item = dict(event)
        if isinstance(item.get("timestamp"), dt.datetime):
            item["timestamp"] = item["timestamp"].isoformat()
        out.append(item)
    return out


def summarise_cause(cause: str | None, limit: int = 600) -> str:
    """A readable cause: a job's ``Describe*`` JSON (what ``.sync`` failures carry) becomes its
    ``FailureReason`` and job name, a Lambda's error JSON its type and message."""
    if not cause:
        return ""
    start = cause.find("{")
    if start >= 0:
        try:
            document = json.loads(cause[start:])
        except ValueError:
            document = None
        if isinstance(document, Mapping):
            head = cause[:start].rstrip()
            if "FailureReason" in document:
                job = next((str(v) for k, v in document.items() if k.endswith("JobName")), "?")
                text = f"{document['FailureReason']} (job {job})"
            elif "errorMessage" in document:
                text = f"{document.get('errorType', 'Error')}: {document['errorMessage']}"
            else:
                text = cause[start:]
            cause = f"{head} {text}" if head else text
    return cause if len(cause) <= limit else cause[: limit - 3] + "..."
