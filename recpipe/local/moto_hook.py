"""Run ASL in moto's Step Functions interpreter with Task states dispatched to local handlers.

moto (pinned to 5.2.5 in pyproject.toml) executes a state machine for real when
``default_user_config["stepfunctions"]["execute_state_machine"]`` is true: JSONPath, intrinsic
functions, Retry/Catch, Choice, Map. Its task-service factory
(``state_task_factory.state_task_service_for``) picks the class that evaluates a ``Task`` state
from the service name in the resource ARN (``arn:aws:states:::sagemaker:createTrainingJob.sync``
-> ``sagemaker``). :func:`installed` swaps that factory for one that returns
:class:`LocalTaskService` for the services given handlers, so ``Parameters``, ``ResultSelector``
and ``ResultPath`` are still evaluated by moto while the work runs in local code.

A handler receives a :class:`TaskCall` and returns the integration's result (what the real
integration would return: a ``Describe*`` response for ``.sync`` SageMaker jobs, the
``lambda:invoke`` envelope for Lambdas). To fail, it raises
:class:`~recpipe.local.exceptions.TaskFailure` with the error name and cause AWS would report;
the name is matched by ``Retry``/``Catch`` ``ErrorEquals`` as on AWS.

moto refuses to re-raise an error whose name starts with ``States.`` from a ``Fail`` state
(``"ErrorPath": "$.error.Error"`` after a Catch of ``States.TaskFailed``) or out of a Map
iteration, which AWS allows; :func:`installed` makes those two places build the matching
``States.*`` error name instead.

moto's context object has no ``Execution.RedriveCount`` (AWS's has, 0 until an execution is
redriven; the definition builds SageMaker names from it): :func:`installed` adds it as 0.

moto's Distributed Map lets a failed child pass (the Map succeeds) and its ResultWriter writes only
a manifest; :func:`installed` restores AWS's behaviour (:mod:`recpipe.local.distributed_map`).

Retry waits really sleep in moto; :func:`installed` scales them by ``retry_scale`` (the
interpreter's ``time`` module in the retrier is replaced by a proxy whose ``sleep`` is scaled).

Everything this module touches in moto is listed in :data:`MOTO_INTERNALS` and checked by
:func:`check_moto_internals` (and by a unit test), so a moto upgrade that moves them fails loudly.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from recpipe.local import distributed_map
from recpipe.local.exceptions import MotoInternalsError, TaskFailure

LOG = logging.getLogger(__name__)

MOTO_VERSION = "5.2.5"

_P = "moto.stepfunctions.parser.asl.component"
_WORKER = "moto.stepfunctions.parser.backend.execution_worker"
# (module, attribute) pairs this hook relies on.
MOTO_INTERNALS: tuple[tuple[str, str], ...] = (
    (f"{_P}.state.exec.state_task.state_task_factory", "state_task_service_for"),
    (f"{_P}.state.exec.state_task.service.state_task_service", "StateTaskService"),
    (f"{_P}.common.error_name.custom_error_name", "CustomErrorName"),
    (f"{_P}.common.error_name.states_error_name", "StatesErrorName"),
    (f"{_P}.common.error_name.states_error_name_type", "StatesErrorNameType"),
    (f"{_P}.common.error_name.failure_event", "FailureEvent"),
    (f"{_P}.common.retry.retrier_decl", "time"),
    (f"{_P}.common.error_name.error_name", "ErrorName"),
    *((module, "CustomErrorName") for module in (
        f"{_P}.state.fail.state_fail",
        f"{_P}.state.exec.state_map.iteration.iteration_worker",
    )),
    ("moto.stepfunctions.parser.asl.eval.event.event_detail", "EventDetails"),
    ("moto.stepfunctions.parser.api", "TaskFailedEventDetails"),
    ("moto.stepfunctions.parser.api", "HistoryEventType"),
    ("moto.core.config", "default_user_config"),
    (_WORKER, "ExecutionWorker"),
)
# Methods of StateTaskService that LocalTaskService overrides or calls; their names must not move.
STATE_TASK_SERVICE_METHODS: tuple[str, ...] = (
    "_validate_service_integration_is_supported",
    "_eval_service_task",
    "_from_error",
    "_get_sfn_resource",
    "_get_sfn_resource_type",
    "_eval_execution",
)


def check_moto_internals() -> None:
    """Raise :class:`MotoInternalsError` naming every moto internal this hook needs that is missing."""
    import moto

    problems: list[str] = []
    if moto.__version__ != MOTO_VERSION:
        problems.append(f"moto {moto.__version__} is installed; the local engine is written for "
                        f"{MOTO_VERSION}")
    for module_name, attribute in MOTO_INTERNALS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"cannot import {module_name} ({exc})")
            continue
        if not hasattr(module, attribute):
            problems.append(f"{module_name} has no attribute '{attribute}'")
    if not problems:
        service_cls = _import(f"{_P}.state.exec.state_task.service.state_task_service", "StateTaskService")
        problems += [
            f"StateTaskService has no method '{name}'"
            for name in STATE_TASK_SERVICE_METHODS
            if not callable(getattr(service_cls, name, None))
        ]
        if not callable(getattr(_import(_WORKER, "ExecutionWorker"), "_get_evaluation_environment", None)):
            problems.append("ExecutionWorker has no method '_get_evaluation_environment'")
        states_type = _import(f"{_P}.common.error_name.states_error_name_type", "StatesErrorNameType")
        if not hasattr(states_type, "StatesTaskFailed"):
            problems.append("StatesErrorNameType has no member 'StatesTaskFailed'")
    problems += distributed_map.check()
    if problems:
        raise MotoInternalsError("moto's Step Functions internals moved: " + "; ".join(problems))


def _import(module_name: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class TaskCall:
    """One evaluation of a Task state, as the local handler sees it."""

    service: str                # "sagemaker", "lambda"
    action: str                 # "createTrainingJob", "invoke"
    sync: bool                  # the ".sync" integration pattern
    parameters: dict[str, Any]  # Parameters, evaluated by moto
    state_name: str
    execution_name: str
    region: str
    account: str
    context: dict[str, Any] = field(default_factory=dict)  # the context object ($$), read-only


TaskHandler = Callable[[TaskCall], Any]

_registry_lock = threading.Lock()
_handlers: dict[str, TaskHandler] = {}
_original_factory: Callable[..., Any] | None = None
_original_retrier_time: Any = None
_original_environment: Any = None
_install_depth = 0


def _local_task_service_class() -> type:
    """Build the StateTaskService subclass lazily (importing moto's parser costs ~0.5 s)."""
    global _LOCAL_TASK_SERVICE_CLS
    if _LOCAL_TASK_SERVICE_CLS is not None:
        return _LOCAL_TASK_SERVICE_CLS
    state_task_service = _import(f"{_P}.state.exec.state_task.service.state_task_service", "StateTaskService")
    custom_error_name = _import(f"{_P}.common.error_name.custom_error_name", "CustomErrorName")
    states_error_name = _import(f"{_P}.common.error_name.states_error_name", "StatesErrorName")
    states_error_name_type = _import(f"{_P}.common.error_name.states_error_name_type", "StatesErrorNameType")
    failure_event_cls = _import(f"{_P}.common.error_name.failure_event", "FailureEvent")
    event_details_cls = _import("moto.stepfunctions.parser.asl.eval.event.event_detail", "EventDetails")
    task_failed_details = _import("moto.stepfunctions.parser.api", "TaskFailedEventDetails")
    history_event_type = _import("moto.stepfunctions.parser.api", "HistoryEventType")

    class LocalTaskService(state_task_service):  # type: ignore[misc, valid-type]
        """A Task state whose work is done by the local handler registered for its service."""

        def _validate_service_integration_is_supported(self) -> None:
            # Checked at create_state_machine time: an unknown service is a definition error.
            if self.resource.service_name not in _handlers:
                raise ValueError(f"No local handler for the '{self.resource.service_name}' integration "
                                 f"(resource {self.resource.resource_arn}).")

        def _get_sfn_resource(self) -> str:
            resource = str(super()._get_sfn_resource())
            if self.resource.condition is not None:
                resource += f".{self.resource.condition}"
            return resource

        def _eval_service_task(self, env: Any, resource_runtime_part: Any, normalised_parameters: dict,
                               state_credentials: Any) -> None:
            handler = _handlers.get(self.resource.service_name)
            if handler is None:
                raise TaskFailure("States.Runtime",
                                  f"No local handler for the '{self.resource.service_name}' integration.")
            context = env.states.context_object.context_object_data
            call = TaskCall(
                service=self.resource.service_name,
                action=self.resource.api_action,
                sync=self.resource.condition == "sync",
                parameters=normalised_parameters,
                state_name=str(context.get("State", {}).get("Name", "")),
                execution_name=str(context.get("Execution", {}).get("Name", "")),
                region=resource_runtime_part.region,
                account=resource_runtime_part.account,
                context=context,
            )
            env.stack.append(handler(call))

        def _from_error(self, env: Any, ex: Exception) -> Any:
            if not isinstance(ex, TaskFailure):
                if not isinstance(ex, TimeoutError):
                    LOG.error("local task handler crashed:\n%s",
                              "".join(traceback.format_exception(type(ex), ex, ex.__traceback__)))
                return super()._from_error(env, ex)
            if ex.error.startswith("States."):
                member = ex.error.removeprefix("States.")
                typ = getattr(states_error_name_type, f"States{member}", None)
                if typ is None:
                    raise ValueError(f"Unknown States error name '{ex.error}'.") from ex
                error_name = states_error_name(typ=typ)
            else:
                error_name = custom_error_name(ex.error)
            return failure_event_cls(
                env=env,
                error_name=error_name,
                event_type=history_event_type.TaskFailed,
                event_details=event_details_cls(
                    taskFailedEventDetails=task_failed_details(
                        error=ex.error,
                        cause=ex.cause,
                        resource=self._get_sfn_resource(),
                        resourceType=self._get_sfn_resource_type(),
                    )
                ),
            )

    _LOCAL_TASK_SERVICE_CLS = LocalTaskService
    return LocalTaskService


_LOCAL_TASK_SERVICE_CLS: type | None = None


class _ScaledTime:
    """Stands in for the ``time`` module inside moto's retrier: sleeps are scaled."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds) * self.scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


_ERROR_NAME_MODULES = (f"{_P}.state.fail.state_fail", f"{_P}.state.exec.state_map.iteration.iteration_worker")


def _with_redrive_count(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``ExecutionWorker._get_evaluation_environment``: the context object gets AWS's
    ``Execution.RedriveCount`` (0: the local engine never redrives)."""

    def environment(self: Any) -> Any:
        env = original(self)
        env.states.context_object.context_object_data["Execution"].setdefault("RedriveCount", 0)
        return env

    return environment


def _lenient_error_name_factory() -> Callable[..., Any]:
    """A stand-in for ``CustomErrorName`` that accepts ``States.*`` names (re-raised errors)."""
    custom = _import(f"{_P}.common.error_name.custom_error_name", "CustomErrorName")
    base = _import(f"{_P}.common.error_name.error_name", "ErrorName")
    states_name = _import(f"{_P}.common.error_name.states_error_name", "StatesErrorName")
    states_type = _import(f"{_P}.common.error_name.states_error_name_type", "StatesErrorNameType")

    def error_name(error_name: str | None = None) -> Any:
        if isinstance(error_name, str) and error_name.startswith("States."):
            try:
                return states_name(typ=states_type.from_name(error_name))
            except ValueError:
                name = custom.__new__(custom)
                base.__init__(name, error_name)
                return name
        return custom(error_name)

    return error_name


def enable_execution() -> None:
    """Make moto's Step Functions backend execute state machines (process-wide moto setting)."""
    config = _import("moto.core.config", "default_user_config")
    config["stepfunctions"] = {"execute_state_machine": True}


@contextlib.contextmanager
def installed(handlers: Mapping[str, TaskHandler], *, retry_scale: float = 0.01) -> Iterator[None]:
    """Dispatch Task states of the services in ``handlers`` to them while the context is open.

    Also turns real execution on (:func:`enable_execution`) and scales Retry waits by ``retry_scale``.
    Nested use is allowed; the innermost handlers win for their services.
    """
    global _original_factory, _original_retrier_time, _original_environment, _install_depth
    check_moto_internals()
    enable_execution()
    factory_module: Any = importlib.import_module(f"{_P}.state.exec.state_task.state_task_factory")
    retrier_module: Any = importlib.import_module(f"{_P}.common.retry.retrier_decl")
    local_cls = _local_task_service_class()
    error_name_modules: list[Any] = [importlib.import_module(m) for m in _ERROR_NAME_MODULES]
    with _registry_lock:
        saved_handlers = dict(_handlers)
        _handlers.update(handlers)
        if _install_depth == 0:
            _original_factory = factory_module.state_task_service_for
            _original_retrier_time = retrier_module.time
            original = _original_factory

            def state_task_service_for(service_name: str) -> Any:
                if service_name in _handlers:
                    return local_cls()
                return original(service_name)

            factory_module.state_task_service_for = state_task_service_for
            lenient = _lenient_error_name_factory()
            for module in error_name_modules:
                module.CustomErrorName = lenient
            worker = _import(_WORKER, "ExecutionWorker")
            _original_environment = worker._get_evaluation_environment
            worker._get_evaluation_environment = _with_redrive_count(_original_environment)
            distributed_map.install()  # after: it wraps the environment patch above
        retrier_time_before = retrier_module.time
        retrier_module.time = _ScaledTime(retry_scale)
        _install_depth += 1
    try:
        yield
    finally:
        with _registry_lock:
            _install_depth -= 1
            _handlers.clear()
            _handlers.update(saved_handlers)
            retrier_module.time = retrier_time_before
            if _install_depth == 0:
                factory_module.state_task_service_for = _original_factory
                custom = _import(f"{_P}.common.error_name.custom_error_name", "CustomErrorName")
                for module in error_name_modules:
                    module.CustomErrorName = custom
                distributed_map.uninstall()
                _import(_WORKER, "ExecutionWorker")._get_evaluation_environment = _original_environment
                retrier_module.time = _original_retrier_time
