"""The local engine: the deployed ASL, run end to end on this machine.

:class:`LocalEngine` (a context manager) brings up, in order:

1. DynamoDB: the endpoint given, or a ``dynalite`` server on ``<workdir>/dynamodb`` (stopped by
   PID on exit, also on Ctrl-C); the results table is created when missing;
2. moto (``mock_aws``) for S3 and Step Functions, the bucket preloaded from ``<workdir>/s3``;
3. the task hook: ``sagemaker`` tasks to :class:`~recpipe.local.sagemaker.LocalSageMaker`,
   ``lambda`` tasks to :class:`~recpipe.local.lambdas.LocalLambda` (the handlers under ``lambdas/``);
4. the state machine, created from ``workflows.definition.definition_json()`` with its
   ``${Placeholders}`` filled with local values (:func:`local_values`, by exact name).

Lambdas reach DynamoDB through ``AWS_ENDPOINT_URL_DYNAMODB`` (which moto does not intercept) and
S3 through moto. Every object of the bucket is mirrored to ``<workdir>/s3/<bucket>/<key>`` after
each task, and each execution is recorded under ``<workdir>/executions/`` for ``recpipe status``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from recpipe import tables
from recpipe.executions import records
from recpipe.executions.follow import UpdateCallback, follow, full_history
from recpipe.executions.history import ExecutionOutcome, jsonable_events, outcome_from, run_id_of
from recpipe.executions.records import new_execution_name
from recpipe.executions.status import ABORTED, RUNNING
from recpipe.local.dynamodb import DEFAULT_TABLE, REGION, Dynalite, ensure_table
from recpipe.local.exceptions import LocalEngineError
from recpipe.local.lambdas import Handler, LocalLambda
from recpipe.local.moto_hook import TaskCall, installed
from recpipe.local.s3store import S3Mirror
from recpipe.local.sagemaker.service import LocalSageMaker
from recpipe.local.sagemaker.training import JobProgress, ProgressCallback

LOG = logging.getLogger(__name__)

ACCOUNT = "123456789012"
BUCKET = "recpipe-local"
STATE_MACHINE_NAME = "recpipe-pipeline"
FUNCTION_PREFIX = "recpipe-"
# Local "image URIs": the local SageMaker picks the stand-in from the repository name.
IMAGES: dict[str, str] = {
    "fm": "local/factorization-machines:1",
    "knn": "local/knn:1",
    "processing": "local/sklearn-processing:1",
}
# The function of workflows.definition.FUNCTIONS that releases the run lock (abort calls it).
RELEASE_FUNCTION = "Release"
_QUIET_LOGGERS = ("moto", "botocore", "boto3", "urllib3", "aws_lambda_powertools")


def function_placeholder(logical: str) -> str:
    """``Prepare`` -> ``PrepareFunctionArn``: how ``workflows.definition.PLACEHOLDERS`` names the ARN of
    each function of ``workflows.definition.FUNCTIONS`` (a unit test keeps the two in step)."""
    return f"{logical}FunctionArn"


def local_values(*, bucket: str, function_names: Mapping[str, str], account: str = ACCOUNT,
                 region: str = REGION) -> dict[str, str]:
    """The local value of each placeholder, by its exact name (``workflows.definition.PLACEHOLDERS``).

    ``function_names``: logical Lambda name (a key of ``FUNCTIONS``) -> local function name.
    """
    values = {
        "SageMakerRoleArn": f"arn:aws:iam::{account}:role/recpipe-local-sagemaker",
        "DataBucket": bucket,
        "FmImageUri": IMAGES["fm"],
        "KnnImageUri": IMAGES["knn"],
        "ProcessingImageUri": IMAGES["processing"],
    }
    for logical, name in function_names.items():
        values[function_placeholder(logical)] = f"arn:aws:lambda:{region}:{account}:function:{name}"
    return values


def local_substitutions(placeholders: Sequence[str], values: Mapping[str, str]) -> dict[str, str]:
    """``values`` for exactly ``placeholders``; a placeholder without a local value is an error (the
    engine must not run a definition it only half understands)."""
    unknown = [name for name in placeholders if name not in values]
    if unknown:
        raise LocalEngineError(f"The local engine has no value for the placeholder(s) {', '.join(unknown)}; "
                               "add them to recpipe.local.engine.local_values.")
    return {name: values[name] for name in placeholders}


def fill_placeholders(definition: str, values: Mapping[str, str]) -> str:
    """Replace ``${Name}`` by its value; a placeholder left over is an error naming it."""
    filled = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), definition)
    left = sorted(set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", filled)))
    if left:
        raise LocalEngineError(f"Placeholders without a local value: {', '.join(left)}.")
    return filled


@dataclass
class EngineOptions:
    workdir: Path = Path(".recpipe")
    dynamodb_endpoint: str | None = None
    bucket: str = BUCKET
    table: str = DEFAULT_TABLE
    retry_scale: float = 0.01
    keep_job_dirs: bool = False
    # logical Lambda name (a key of workflows.definition.FUNCTIONS) -> replacement handler (tests)
    lambda_overrides: Mapping[str, Handler] = field(default_factory=dict)
    definition: str | None = None                 # ASL with placeholders (default: workflows.definition)
    functions: Mapping[str, str] | None = None    # logical name -> "module.function" (default: FUNCTIONS)
    placeholders: Sequence[str] | None = None     # default: workflows.definition.PLACEHOLDERS
    deploy_defaults: Mapping[str, Any] | None = None  # RECPIPE_DEFAULTS for Prepare
    upload_code: bool = True


def _definition_parts(options: EngineOptions) -> tuple[str, Mapping[str, str], Sequence[str]]:
    definition, functions, placeholders = options.definition, options.functions, options.placeholders
    if definition is None or functions is None or placeholders is None:
        try:
            from workflows import definition as wf
        except ImportError as exc:
            raise LocalEngineError(f"workflows.definition cannot be imported ({exc}).") from exc
        if definition is None:
            # The committed ASL: the engine never imports the SDKs (sagemaker, stepfunctions).
            if not wf.ASL_PATH.exists():
                raise LocalEngineError(f"{wf.ASL_PATH} is missing: rebuild it with "
                                       "workflows.definition.write_definition().")
            definition = json.dumps(wf.load_definition())
        functions = functions if functions is not None else wf.FUNCTIONS
        placeholders = placeholders if placeholders is not None else wf.PLACEHOLDERS
    return definition, functions, placeholders


class LocalEngine:
    """See the module docstring. Use as ``with LocalEngine(options) as engine: engine.run(...)``."""

    def __init__(self, options: EngineOptions | None = None, *,
                 on_progress: ProgressCallback | None = None) -> None:
        self.options = options or EngineOptions()
        self.workdir = Path(self.options.workdir)
        self.on_progress = on_progress
        self.progress_events: queue.Queue[JobProgress] = queue.Queue()
        self.endpoint: str | None = None
        self.state_machine_arn: str | None = None
        self._stack = contextlib.ExitStack()
        self._dynalite: Dynalite | None = None
        self.s3: Any = None
        self.sfn: Any = None
        self.mirror: S3Mirror | None = None
        self.sagemaker: LocalSageMaker | None = None
        self.lambdas: LocalLambda | None = None
        self.function_names: dict[str, str] = {}
        self.definition: str = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> LocalEngine:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.sagemaker is not None:
                self.sagemaker.terminate()
            if self.mirror is not None:
                with contextlib.suppress(Exception):
                    self.mirror.sync()
        finally:
            self._stack.close()

    def _start(self) -> None:
        opts = self.options
        self.workdir.mkdir(parents=True, exist_ok=True)
        definition, functions, placeholders = _definition_parts(opts)
        self.function_names = {logical: FUNCTION_PREFIX + re.sub(r"[^a-z0-9-]", "-", logical.lower())
                               for logical in functions}
        values = local_substitutions(placeholders, local_values(bucket=opts.bucket,
                                                                function_names=self.function_names))
        self.definition = fill_placeholders(definition, values)
        unknown = sorted(set(opts.lambda_overrides) - set(functions))
        if unknown:
            raise LocalEngineError(f"lambda_overrides names no function of the definition: "
                                   f"{', '.join(unknown)} (functions: {', '.join(functions)}).")

        for name in _QUIET_LOGGERS:
            self._stack.enter_context(_logger_level(name, logging.CRITICAL))

        # 1. DynamoDB
        endpoint = opts.dynamodb_endpoint
        if not endpoint:
            self._dynalite = self._stack.enter_context(Dynalite(self.workdir / "dynamodb"))
            endpoint = self._dynalite.endpoint
        self.endpoint = endpoint
        ensure_table(endpoint, opts.table)

        # 2. environment seen by the Lambdas, then moto
        env = {
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_SESSION_TOKEN": "local",
            "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
            tables.TABLE_ENV: opts.table, tables.BUCKET_ENV: opts.bucket,
            "POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_SERVICE_NAME": "recpipe-local",
        }
        if opts.deploy_defaults is not None:
            env["RECPIPE_DEFAULTS"] = json.dumps(dict(opts.deploy_defaults))
        self._stack.enter_context(mock.patch.dict(os.environ, env))
        if opts.deploy_defaults is None:
            os.environ.pop("RECPIPE_DEFAULTS", None)
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SFN"):
            os.environ.pop(var, None)

        import boto3
        from moto import mock_aws

        self._stack.enter_context(mock_aws())
        # mock_aws installs fake credentials; keep the DynamoDB endpoint override.
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.s3.create_bucket(Bucket=opts.bucket)
        self.mirror = S3Mirror(self.s3, opts.bucket, self.workdir / "s3")
        self.mirror.preload()

        # 3. task handlers
        job_root = self.workdir / "jobs" if opts.keep_job_dirs else None
        self.sagemaker = LocalSageMaker(self.s3, job_root=job_root, keep_job_dirs=opts.keep_job_dirs,
                                        on_progress=self._progress, region=REGION, account=ACCOUNT)
        overrides = {self.function_names[k]: v for k, v in opts.lambda_overrides.items()}
        self.lambdas = LocalLambda({self.function_names[k]: v for k, v in functions.items()},
                                   overrides=overrides, region=REGION, account=ACCOUNT)
        sagemaker, lambdas = self.sagemaker, self.lambdas

        def sagemaker_task(call: TaskCall) -> Any:
            try:
                return sagemaker(call)
            finally:
                self._sync_quietly()

        def lambda_task(call: TaskCall) -> Any:
            try:
                return lambdas(call)
            finally:
                self._sync_quietly()

        self._stack.enter_context(installed({"sagemaker": sagemaker_task, "lambda": lambda_task},
                                            retry_scale=opts.retry_scale))
        # 4. the state machine
        try:
            self.state_machine_arn = self.sfn.create_state_machine(
                name=STATE_MACHINE_NAME, definition=self.definition,
                roleArn=f"arn:aws:iam::{ACCOUNT}:role/recpipe-local-states")["stateMachineArn"]
        except Exception as exc:
            raise LocalEngineError(f"moto rejected the state machine definition: {exc}") from exc

    def _sync_quietly(self) -> None:
        if self.mirror is None:
            return
        try:
            self.mirror.sync()
        except Exception as exc:  # the mirror is a convenience; a failed copy must not fail the task
            LOG.warning("could not mirror the bucket to %s: %s", self.mirror.dir, exc)

    def _progress(self, event: JobProgress) -> None:
        self.progress_events.put(event)
        if event.kind == "training":  # the local stand-in for the job's CloudWatch metrics (recpipe report)
            from recpipe.report.sources import record_epoch

            with contextlib.suppress(OSError):
                record_epoch(self.workdir, event.job_name, event.epoch, event.metrics)
        if self.on_progress is not None:
            with contextlib.suppress(Exception):
                self.on_progress(event)

    # -- inputs ------------------------------------------------------------------------------------

    def put_data(self, prefix: str, *, interactions: Path, users: Path | None = None,
                 items: Path | None = None) -> list[str]:
        """Replace ``<prefix>/`` in the bucket with the given files (each a file or a directory of
        CSV/Parquet files) under ``interactions/``, ``users/``, ``items/``; return the keys written."""
        assert self.mirror is not None
        prefix = prefix.strip("/")
        self.mirror.delete_prefix(prefix + "/")
        keys: list[str] = []
        for part, source in (("interactions", interactions), ("users", users), ("items", items)):
            if source is None:
                continue
            source = Path(source)
            if source.is_dir():
                files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
                if not files:
                    raise LocalEngineError(f"The directory {source} (--{part}) holds no files.")
                pairs = [(p, p.relative_to(source).as_posix()) for p in files]
            elif source.is_file():
                pairs = [(source, source.name)]
            else:
                raise LocalEngineError(f"--{part}: {source} does not exist.")
            for path, rel in pairs:
                key = f"{prefix}/{part}/{rel}"
                self.s3.upload_file(str(path), self.options.bucket, key)
                keys.append(key)
        self._sync_quietly()
        return keys

    def put_code(self) -> list[str]:
        """Upload the processing script and the modules shipped beside it to ``code/processing/``."""
        try:
            from workflows import processing
            from workflows.definition import PROCESSING_CODE_PREFIX
        except ImportError as exc:
            raise LocalEngineError(f"workflows.processing cannot be imported ({exc}).") from exc
        assert self.mirror is not None
        self.mirror.delete_prefix(PROCESSING_CODE_PREFIX)
        keys = []
        for name, path in processing.code_files().items():  # path in the code directory -> source
            key = PROCESSING_CODE_PREFIX + name
            self.s3.upload_file(str(path), self.options.bucket, key)
            keys.append(key)
        self._sync_quietly()
        return keys

    # -- executions --------------------------------------------------------------------------------

    def start(self, execution_input: Mapping[str, Any] | None = None, *, name: str | None = None) -> str:
        if self.options.upload_code:
            self.put_code()
        name = name or new_execution_name()
        arn: str = self.sfn.start_execution(stateMachineArn=self.state_machine_arn, name=name,
                                            input=json.dumps(dict(execution_input or {})))["executionArn"]
        return arn

    def wait(self, arn: str, *, on_update: UpdateCallback | None = None,
             tick: Callable[[], None] | None = None, poll_s: float = 0.25,
             timeout_s: float | None = None) -> ExecutionOutcome:
        outcome = follow(self.sfn, arn, on_update=on_update, tick=tick, poll_s=poll_s, timeout_s=timeout_s)
        self._sync_quietly()
        self.record(arn, outcome)
        return outcome

    def run(self, execution_input: Mapping[str, Any] | None = None, *, name: str | None = None,
            on_update: UpdateCallback | None = None, tick: Callable[[], None] | None = None,
            timeout_s: float | None = None) -> tuple[str, ExecutionOutcome]:
        arn = self.start(execution_input, name=name)
        return arn, self.wait(arn, on_update=on_update, tick=tick, timeout_s=timeout_s)

    def abort(self, arn: str) -> None:
        """Stop an execution (Ctrl-C): the job subprocesses are killed and the run lock released,
        since StopExecution skips the Catch that would release it."""
        assert self.sagemaker is not None and self.lambdas is not None
        with contextlib.suppress(Exception):
            self.sfn.stop_execution(executionArn=arn, error="Interrupted",
                                    cause="Stopped from the CLI (Ctrl-C).")
        self.sagemaker.terminate()
        with contextlib.suppress(Exception):
            outcome = outcome_from(self.sfn.describe_execution(executionArn=arn), full_history(self.sfn, arn))
            run_id = run_id_of(outcome)
            release = self.function_names.get(RELEASE_FUNCTION)
            if run_id and release:
                _, handler = self.lambdas.resolve(release)
                handler({"run_id": run_id}, None)
        with contextlib.suppress(Exception):
            outcome = outcome_from(self.sfn.describe_execution(executionArn=arn), full_history(self.sfn, arn))
            if outcome.status == RUNNING:
                outcome.status = ABORTED
                outcome.error, outcome.cause = "Interrupted", "Stopped from the CLI (Ctrl-C)."
                for state in outcome.states:
                    if state.ended is None:
                        state.status = "aborted"
            self.record(arn, outcome)

    def record(self, arn: str, outcome: ExecutionOutcome) -> dict[str, Any]:
        describe = self.sfn.describe_execution(executionArn=arn)
        events = full_history(self.sfn, arn)
        record = {
            "execution_name": describe["name"],
            "execution_arn": arn,
            "run_id": run_id_of(outcome),
            "backend": "local",
            "status": outcome.status,
            "started": _iso(describe.get("startDate")),
            "stopped": _iso(describe.get("stopDate")),
            "input": _loads(describe.get("input")),
            "output": outcome.output,
            "error": outcome.error,
            "cause": outcome.cause,
            "states": [s.to_json() for s in outcome.states],
            "events": jsonable_events(events),
        }
        records.save(self.workdir, record)
        return record

    def results_client(self) -> Any:
        from recpipe.local.dynamodb import client

        assert self.endpoint is not None
        return client(self.endpoint)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def _loads(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


@contextlib.contextmanager
def _logger_level(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def results_endpoint(workdir: Path, endpoint: str | None = None,
                     table: str = DEFAULT_TABLE) -> Iterator[Any]:
    """A DynamoDB client on the results table for the read-only commands (starts dynalite if needed)."""
    from recpipe.local.dynamodb import client, dynamodb_endpoint

    with dynamodb_endpoint(Path(workdir), endpoint=endpoint, table_name=table) as url:
        yield client(url)


def clean_jobs(workdir: Path) -> None:
    shutil.rmtree(Path(workdir) / "jobs", ignore_errors=True)


