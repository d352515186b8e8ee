"""The ``recpipe`` command line (Typer + Rich).

Every command takes ``--workdir`` (default ``.recpipe``): the local state it reads or writes
(MovieLens cache, the S3 mirror ``s3/``, the dynalite data ``dynamodb/``, execution records
``executions/``). With ``--aws``, ``run``, ``status``, ``recommend``, ``export``, ``versions``,
``rollback`` and ``unlock`` act on the deployed stack instead (default boto3 credentials; the table
and state machine from ``--table`` / ``--state-machine-arn`` or the stack's outputs,
:mod:`recpipe.remote.aws`). Exit codes: 0 success, 1 a failed pipeline run (or a lock/pointer that
changed under the command), 2 bad usage or input (unknown user, invalid ``--set``, missing record,
a version that cannot be activated, a lock whose run may still be running without ``--force``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from recpipe import config, datasets
from recpipe.local.history import summarise_cause

app = typer.Typer(help="recpipe: batch recommendations with SageMaker FM + k-NN, on AWS or locally.",
                  no_args_is_help=True, add_completion=False)
# Piped output (CI logs, files) is not cut at Rich's default 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)

WORKDIR = typer.Option(Path(".recpipe"), "--workdir", help="Local state directory.")
DYNAMODB = typer.Option(None, "--dynamodb-endpoint",
                        help="Use this DynamoDB endpoint (e.g. DynamoDB Local) instead of starting dynalite.")
TABLE = typer.Option(None, "--table", help="Results table (default: recpipe-results locally; with --aws "
                     "the stack's TableName output).")
AWS = typer.Option(False, "--aws", help="Use the deployed stack (default AWS credentials) instead of the "
                   "local table.")
STACK = typer.Option(None, "--stack", help="With --aws: the CloudFormation stack whose outputs name the "
                     "table and state machine (default: Recpipe; read only for names not given).")
REGION = typer.Option(None, "--region", help="With --aws: the AWS region (default: the state machine ARN's, "
                      "else the configured one).")
STATE_MACHINE = typer.Option(None, "--state-machine-arn", help="With --aws: the state machine (default: the "
                             "stack's StateMachineArn output).")

_ICONS = {"running": "[yellow]…[/]", "succeeded": "[green]✓[/]", "failed": "[red]✗[/]",
          "aborted": "[dim]-[/]"}


def _command(func: Any) -> Any:
    """``app.command()`` with the docstring's paragraphs reflowed (Rich help keeps single newlines)."""
    paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
    return app.command(help="\n\n".join(" ".join(p.split()) for p in paragraphs))(func)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]Error:[/] {message}")
    return typer.Exit(code)


@app.command()
def data(workdir: Path = WORKDIR) -> None:
    """Fetch MovieLens-100k (from the recbole wheel, cached) into the work directory."""
    dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
    console.print(f"MovieLens-100k ready at {dest}")


# --- progress display ---------------------------------------------------------------------------

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


class RunDisplay:
    """Live view of an execution: one line per state run, one progress bar per FM training job."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self.states = Progress(SpinnerColumn(finished_text=" "), TextColumn("{task.description}"),
                               console=out)
        self.epochs = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[metric]}"), console=out)
        self._state_tasks: dict[tuple[Any, ...], TaskID] = {}
        self._epoch_tasks: dict[str, TaskID] = {}
        self.live = Live(Group(self.states, self.epochs), console=out, refresh_per_second=8,
                         transient=False)

    def __enter__(self) -> RunDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, outcome: Any) -> None:
        for run in outcome.states:
            key = (run.path, run.name, run.entered_id)
            line = f"{_ICONS.get(run.status, run.status)} {escape(f'{run.label:<34}')} {run.status:<9}"
            if run.seconds is not None:
                line += f" {_duration(run.seconds):>8}"
            if run.attempts > 1:
                line += f"  ({run.attempts} attempts)"
            if run.status == "failed":
                line += f"  [red]{escape(run.error or '')}[/]" + ("  (caught)" if run.caught else "")
            task = self._state_tasks.get(key)
            if task is None:
                task = self.states.add_task(line, total=1)
                self._state_tasks[key] = task
            done = run.ended is not None
            self.states.update(task, description=line, completed=1 if done else 0)

    @staticmethod
    def job_label(job_name: str) -> str:
        """``recpipe-<run>-serve-fm-<retry>-<redrive>`` -> ``FM epochs [serve]``."""
        parts = job_name.split("-")
        while parts and parts[-1].isdigit():  # the per-attempt suffix (workflows.definition)
            parts.pop()
        if len(parts) >= 3 and parts[-1] == "fm":
            return f"FM epochs [{parts[-2]}]"
        return f"{job_name} epochs"

    def epoch(self, job_name: str, epoch: int, total: int | None, metrics: Mapping[str, float]) -> None:
        chosen = sorted(metrics.items(), key=lambda kv: (not kv[0].startswith("test:"), kv[0]))[:1]
        metric = "  ".join(f"{k.replace('binary_classification_', '')}={v:.4f}" for k, v in chosen)
        task = self._epoch_tasks.get(job_name)
        if task is None:
            task = self.epochs.add_task(escape(self.job_label(job_name)), total=total, metric=metric)
            self._epoch_tasks[job_name] = task
        self.epochs.update(task, completed=epoch, total=total, metric=metric)


def _metrics_of(outcome: Any) -> dict[str, float] | None:
    """NDCG and friends from the Evaluate state's output, if the run had one."""
    for run in reversed(outcome.states):
        if run.name.lower().startswith("evaluate") and run.status == "succeeded":
            output = run.output
            if isinstance(output, Mapping) and isinstance(output.get("evaluation"), Mapping):
                output = output["evaluation"]
            found = output.get("metrics") if isinstance(output, Mapping) else None
            if isinstance(found, Mapping):
                return {str(k): v for k, v in found.items() if isinstance(v, int | float)}
    return None


def _find(value: Any, key: str, depth: int = 0) -> Any:
    if depth > 5 or not isinstance(value, Mapping):
        return None
    if key in value and value[key] is not None:
        return value[key]
    for child in value.values():
        found = _find(child, key, depth + 1)
        if found is not None:
            return found
    return None


def _print_outcome(outcome: Any, run_id: str | None, started: float) -> None:
    elapsed = dt.datetime.now().timestamp() - started
    if outcome.status == "SUCCEEDED":
        console.print(f"\n[green bold]Run {run_id} succeeded[/] in {_duration(elapsed)}.")
    else:
        failed = outcome.failed_state
        where = f" in state '{escape(failed.label)}'" if failed else ""
        console.print(f"\n[red bold]Run {run_id or '?'} {outcome.status.lower()}{where}[/] "
                      f"after {_duration(elapsed)}.")
        if failed is not None and failed.error:
            console.print(f"  state error: {escape(failed.error)}")
        console.print(f"  error: {escape(str(outcome.error))}")
        console.print(f"  cause: {escape(summarise_cause(outcome.cause))}")
    metrics = _metrics_of(outcome)
    if metrics:
        table = Table(title="Holdout metrics (eval variant)", show_header=True)
        short = {"precision_at_10": "P@10", "recall_at_10": "R@10", "ndcg_at_10": "NDCG@10",
                 "map_at_10": "MAP@10", "hit_rate_at_10": "HR@10", "coverage_at_10": "cov@10",
                 "users_evaluated": "users"}
        for name in metrics:
            table.add_column(short.get(name, name.replace("_at_", "@")), justify="right")
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in metrics.values()])
        console.print(table)


def _score(score: Any, digits: int) -> str:
    """A k-NN score, or 'popular' for an item topped up from popularity (stored with a null score)."""
    return "popular" if score is None else f"{float(score):.{digits}f}"


def _print_samples(ddb: Any, table: str, run_id: str | None, n: int = 3) -> None:
    from recpipe.local import results

    pointer = results.active_pointer(ddb, table)
    if not pointer:
        console.print("No version is published yet.")
        return
    active = str(pointer.get("run_id"))
    if run_id and active != run_id:
        console.print(f"The active version is still {active} (this run did not publish).")
    rows = results.sample_users(ddb, table, active, n)
    for row in rows:
        items = ", ".join(f"{i['item_id']} ({_score(i['score'], 3)})" for i in row["items"][:10])
        console.print(f"  user {row['user_id']}: {items}")


# --- run ------------------------------------------------------------------------------------------

def _overrides(assignments: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in assignments or []:
        try:
            key, value = config.parse_assignment(text)
        except config.ConfigError as exc:
            raise _fail(f"--set {text}: " + "; ".join(exc.problems)) from exc
        out[key] = value
    return out


@app.command()
def run(
    interactions: Annotated[Path | None, typer.Option(help="Interactions file or directory.")] = None,
    users: Annotated[Path | None, typer.Option(help="Optional user table (file or directory).")] = None,
    items: Annotated[Path | None, typer.Option(help="Optional item table (file or directory).")] = None,
    assignments: Annotated[list[str] | None,
                           typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    workdir: Path = WORKDIR,
    dynamodb_endpoint: str | None = DYNAMODB,
    table: str | None = TABLE,
    aws: Annotated[bool, typer.Option("--aws", help="Start the deployed state machine.")] = False,
    state_machine_arn: str | None = STATE_MACHINE,
    stack: str | None = STACK,
    region: str | None = REGION,
    keep_jobs: Annotated[bool, typer.Option(help="Keep each job's /opt/ml under WORKDIR/jobs.")] = False,
    poll_seconds: Annotated[float, typer.Option(hidden=True, help="With --aws: poll interval.")] = 5.0,
) -> None:
    """Run the pipeline: locally by default (MovieLens-100k when no data is given), or on AWS."""
    overrides = _overrides(assignments)
    try:
        resolved = config.resolve(overrides)
    except config.ConfigError as exc:
        raise _fail(str(exc)) from exc
    _check_local_only(aws, dynamodb_endpoint, stack=stack, region=region, state_machine_arn=state_machine_arn)
    if aws:
        if interactions or users or items:
            raise _fail("--interactions/--users/--items are local-only: on AWS the data is read from the "
                        f"bucket under '{resolved['data.prefix']}/'.")
        if table:
            raise _fail("--table is local-only for 'run': the deployed state machine writes its own table.")
        from recpipe.remote import aws as remote
        from recpipe.remote.exceptions import RemoteError

        try:
            target = remote.resolve_target(state_machine_arn=state_machine_arn, stack=stack, region=region,
                                           need_state_machine=True)
        except RemoteError as exc:
            raise _fail(str(exc)) from exc
        assert target.state_machine_arn is not None
        raise typer.Exit(_run_aws(target.state_machine_arn, overrides, workdir, target.region, poll_seconds))
    if interactions is None and (users or items):
        raise _fail("--users/--items need --interactions.")
    if interactions is None:
        with err_console.status("Fetching MovieLens-100k..."):
            dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
        interactions, users, items = dest / "interactions", dest / "users", dest / "items"
    from recpipe.local.dynamodb import DEFAULT_TABLE

    raise typer.Exit(_run_local(overrides, str(resolved["data.prefix"]), interactions, users, items, workdir,
                                dynamodb_endpoint, table or DEFAULT_TABLE, keep_jobs))


def _run_local(overrides: dict[str, Any], prefix: str, interactions: Path, users: Path | None,
               items: Path | None, workdir: Path, endpoint: str | None, table: str, keep_jobs: bool) -> int:
    from recpipe.local.engine import EngineOptions, LocalEngine, run_id_of
    from recpipe.local.exceptions import LocalEngineError

    started = dt.datetime.now().timestamp()
    options = EngineOptions(workdir=workdir, dynamodb_endpoint=endpoint, table=table, keep_job_dirs=keep_jobs)
    try:
        with LocalEngine(options) as engine:
            engine.put_data(prefix, interactions=interactions, users=users, items=items)
            arn = engine.start(overrides)
            console.print(f"Execution {arn.rsplit(':', 1)[-1]} (local; artifacts under {workdir / 's3'})")
            with RunDisplay(console) as display:
                def tick() -> None:
                    while not engine.progress_events.empty():
                        event = engine.progress_events.get_nowait()
                        display.epoch(event.job_name, event.epoch, event.total, event.metrics)
                try:
                    outcome = engine.wait(arn, on_update=display.update, tick=tick)
                except KeyboardInterrupt:
                    display.__exit__(None, None, None)
                    err_console.print("[yellow]Interrupted: stopping the execution and releasing the "
                                      "run lock...[/]")
                    engine.abort(arn)
                    return 130
                tick()
            run_id = run_id_of(outcome)
            _print_outcome(outcome, run_id, started)
            if outcome.status == "SUCCEEDED" or run_id:
                published = run_id if outcome.status == "SUCCEEDED" else None
                _print_samples(engine.results_client(), table, published)
            console.print(f"Details: recpipe status {run_id or ''} --workdir {workdir}".rstrip())
            return 0 if outcome.status == "SUCCEEDED" else 1
    except LocalEngineError as exc:
        err_console.print(f"[red]Error:[/] {exc}")
        return 2


def _run_aws(arn: str, overrides: dict[str, Any], workdir: Path, region: str | None, poll_s: float) -> int:
    from recpipe.local import records
    from recpipe.local.engine import new_execution_name, run_id_of
    from recpipe.local.follow import follow, full_history
    from recpipe.local.history import jsonable_events
    from recpipe.remote import aws as remote
    from recpipe.remote.exceptions import RemoteError

    started = dt.datetime.now().timestamp()
    name = new_execution_name("cli")
    try:
        sfn = remote.boto3_client("stepfunctions", region or remote.region_of_arn(arn))
        with remote.aws_errors(f"starting an execution of {arn}"):
            execution_arn = sfn.start_execution(stateMachineArn=arn, name=name,
                                                input=json.dumps(overrides))["executionArn"]
    except RemoteError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"Execution {name} started on AWS: {execution_arn}")
    with RunDisplay(console) as display:
        try:
            outcome = follow(sfn, execution_arn, on_update=display.update, poll_s=poll_s)
        except KeyboardInterrupt:
            display.__exit__(None, None, None)
            err_console.print("[yellow]Stopped following; the execution keeps running on AWS:[/] "
                              f"{execution_arn}")
            return 130
    run_id = run_id_of(outcome)
    _print_outcome(outcome, run_id, started)
    describe = sfn.describe_execution(executionArn=execution_arn)
    records.save(workdir, {
        "execution_name": name, "execution_arn": execution_arn, "run_id": run_id, "backend": "aws",
        "status": outcome.status, "started": str(describe.get("startDate")),
        "stopped": str(describe.get("stopDate")),
        "input": overrides, "output": outcome.output, "error": outcome.error, "cause": outcome.cause,
        "states": [s.to_json() for s in outcome.states],
        "events": jsonable_events(full_history(sfn, execution_arn)),
    })
    return 0 if outcome.status == "SUCCEEDED" else 1


# --- where a command reads: the local table or the deployed stack ---------------------------------

@dataclass
class Target:
    """The results table a command uses (and, on AWS, the state machine when known)."""

    ddb: Any
    table: str
    aws: bool
    workdir: Path
    region: str | None = None
    state_machine_arn: str | None = None

    @property
    def where(self) -> str:
        return f"table '{self.table}'" + (f" ({self.region or 'default region'})" if self.aws else " (local)")


def _check_local_only(aws: bool, endpoint: str | None, **aws_only: Any) -> None:
    if aws and endpoint:
        raise _fail("--dynamodb-endpoint is local-only: with --aws the table is the deployed one.")
    given = [f"--{name.replace('_', '-')}" for name, value in aws_only.items() if value]
    if not aws and given:
        raise _fail(f"{'/'.join(given)} {'apply' if len(given) > 1 else 'applies'} only with --aws.")


@contextlib.contextmanager
def _open_table(workdir: Path, endpoint: str | None, table: str | None, *, aws: bool = False,
                stack: str | None = None, region: str | None = None, state_machine_arn: str | None = None,
                want_state_machine: bool = False) -> Iterator[Target]:
    """The local results table (dynalite started on WORKDIR, or ``endpoint``) or the deployed one."""
    from recpipe.remote import aws as remote
    from recpipe.remote.exceptions import RemoteError

    _check_local_only(aws, endpoint, stack=stack, region=region, state_machine_arn=state_machine_arn)
    if not aws:
        from recpipe.local.dynamodb import DEFAULT_TABLE
        from recpipe.local.engine import results_endpoint
        from recpipe.local.exceptions import LocalEngineError

        name = table or DEFAULT_TABLE
        try:
            with results_endpoint(workdir, endpoint, name) as ddb, \
                    remote.aws_errors(f"reading the local results table '{name}'"):
                yield Target(ddb=ddb, table=name, aws=False, workdir=workdir)
        except (LocalEngineError, RemoteError) as exc:
            raise _fail(str(exc)) from exc
        return
    try:
        target = remote.resolve_target(table=table, state_machine_arn=state_machine_arn, stack=stack,
                                       region=region, need_table=True, want_state_machine=want_state_machine)
        assert target.table is not None
        ddb = remote.boto3_client("dynamodb", target.region)
        with remote.aws_errors(f"using the results table '{target.table}'"):
            yield Target(ddb=ddb, table=target.table, aws=True, workdir=workdir, region=target.region,
                         state_machine_arn=target.state_machine_arn)
    except RemoteError as exc:
        raise _fail(str(exc)) from exc


def _active_run(target: Target) -> str:
    from recpipe.local import results

    pointer = results.active_pointer(target.ddb, target.table)
    if not pointer:
        hint = "start a run on AWS first" if target.aws else "run 'recpipe run' first"
        raise _fail(f"No version is published yet in {target.where}: {hint}.")
    return str(pointer["run_id"])


# --- reading results --------------------------------------------------------------------------------

@app.command()
def recommend(
    user_id: str = typer.Argument(..., help="The user's original id."),
    top: Annotated[int | None, typer.Option(min=1, help="Show at most N items (default: all).")] = None,
    as_json: bool = typer.Option(False, "--json", help='Print {"user_id", "run_id", "items": [...]}.'),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """A user's recommendations from the active published version (local, or deployed with --aws)."""
    from recpipe.local import results

    with _open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        run_id = _active_run(target)
        row = results.user_recommendations(target.ddb, target.table, user_id, run_id)
    if row is None:
        raise _fail(f"Unknown user '{user_id}': the active version {run_id} has no recommendations for them.")
    row = results.shape(row["user_id"], run_id, row["items"], top)
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(f"User {escape(user_id)}, version {escape(run_id)}:")
    out = Table()
    out.add_column("#", justify="right")
    out.add_column("item_id")
    out.add_column("score", justify="right")
    for rank, item in enumerate(row["items"], 1):
        out.add_row(str(rank), str(item["item_id"]), _score(item["score"], 4))
    console.print(out)


@_command
def export(
    out: Annotated[Path | None, typer.Option(help="Write JSON lines here (default: stdout).")] = None,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """Every user's active recommendations as JSON lines ({"user_id", "run_id", "items"}).

    Locally the users come in id order. With --aws they stream in the table's scan order: the scan
    reads every item of the table (all versions still kept), at 0.5 read units per 4 KB.
    """
    from recpipe.local import results

    count = 0
    with _open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        run_id = _active_run(target)
        rows = results.all_recommendations(target.ddb, target.table, run_id, ordered=not aws)
        if out is None:
            for row in rows:
                sys.stdout.write(json.dumps(row) + "\n")
                count += 1
            sys.stdout.flush()
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with partial.open("w") as stream:
            for row in rows:
                stream.write(json.dumps(row) + "\n")
                count += 1
        os.replace(partial, out)  # a failed export leaves no truncated file under the real name
    err_console.print(f"{count} users written to {out} (version {run_id}).")


# --- status ----------------------------------------------------------------------------------------

def _print_status(*, run_id: Any, execution_name: Any, backend: str, status: Any, started: Any,
                  stopped: Any, error: Any, cause: Any, states: list[Any]) -> None:
    """The header and per-state table of ``recpipe status`` (local records and AWS executions alike)."""
    colour = {"SUCCEEDED": "green", "FAILED": "red"}.get(str(status), "yellow")
    console.print(f"Run [bold]{escape(str(run_id))}[/] (execution {escape(str(execution_name))}, {backend}): "
                  f"[{colour}]{status}[/]")
    console.print(f"  started {started}  stopped {stopped}")
    if error:
        console.print(f"  error: {escape(str(error))}\n"
                      f"  cause: {escape(summarise_cause(cause))}")
    out = Table(show_header=True)
    out.add_column("state", no_wrap=True, min_width=24)
    out.add_column("outcome")
    out.add_column("started", no_wrap=True)
    out.add_column("duration", justify="right", no_wrap=True)
    out.add_column("error", overflow="fold")
    for run_ in states:
        outcome = run_.status + (" (caught)" if run_.caught else "")
        if run_.attempts > 1:
            outcome += f", {run_.attempts} attempts"
        style = {"succeeded": "green", "failed": "red"}.get(run_.status, "")
        out.add_row(Text(run_.label), Text(outcome, style=style),
                    run_.started.strftime("%H:%M:%S"), _duration(run_.seconds), Text(run_.error or ""))
    console.print(out)


@app.command()
def status(
    run_id: str | None = typer.Argument(
        None, help="Run id, execution name, or (with --aws) execution ARN (default: the latest run)."),
    workdir: Path = WORKDIR,
    aws: Annotated[bool, typer.Option("--aws", help="Read the execution from Step Functions.")] = False,
    stack: str | None = STACK, region: str | None = REGION, state_machine_arn: str | None = STATE_MACHINE,
) -> None:
    """The states of a run, with their times and outcomes (the local record, or the AWS execution)."""
    from recpipe.local.history import StateRun

    if aws:
        _status_aws(run_id, stack=stack, region=region, state_machine_arn=state_machine_arn)
        return
    _check_local_only(False, None, stack=stack, region=region, state_machine_arn=state_machine_arn)
    from recpipe.local import records
    from recpipe.local.exceptions import RecordNotFoundError

    try:
        record = records.load(workdir, run_id)
    except RecordNotFoundError as exc:
        raise _fail(str(exc)) from exc
    _print_status(run_id=record.get("run_id"), execution_name=record.get("execution_name"),
                  backend=str(record.get("backend", "local")), status=record.get("status"),
                  started=record.get("started"), stopped=record.get("stopped"), error=record.get("error"),
                  cause=record.get("cause"),
                  states=[StateRun.from_json(data_) for data_ in record.get("states", [])])


def _status_aws(ref: str | None, *, stack: str | None, region: str | None,
                state_machine_arn: str | None) -> None:
    from recpipe.local.engine import run_id_of
    from recpipe.local.follow import snapshot
    from recpipe.remote import aws as remote
    from recpipe.remote.exceptions import RemoteError
    from recpipe.runs import derive_run_id

    by_arn = bool(ref and ref.startswith("arn:"))
    try:
        target = remote.resolve_target(state_machine_arn=state_machine_arn, stack=stack, region=region,
                                       need_state_machine=not by_arn)
        sfn = remote.boto3_client("stepfunctions", target.region or remote.region_of_arn(ref))
        arn = remote.find_execution(sfn, ref, target.state_machine_arn)
        with remote.aws_errors(f"reading the execution {arn}"):
            describe = sfn.describe_execution(executionArn=arn)
            outcome = snapshot(sfn, arn)
    except RemoteError as exc:
        raise _fail(str(exc)) from exc
    name = str(describe.get("name") or arn.rsplit(":", 1)[-1])
    _print_status(run_id=run_id_of(outcome) or derive_run_id(name), execution_name=name, backend="aws",
                  status=outcome.status, started=describe.get("startDate"), stopped=describe.get("stopDate"),
                  error=outcome.error, cause=outcome.cause, states=outcome.states)
    console.print(f"Execution ARN: {arn}", soft_wrap=True)


# --- versions, rollback, lock ----------------------------------------------------------------------

def _iso_epoch(value: Any) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(float(value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@_command
def versions(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """The published versions, newest first, and which one readers are served (the active one).

    Any 'complete' version that has not expired can be made active again with 'recpipe rollback'.
    """
    from recpipe.local import results

    with _open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        found = results.versions(target.ddb, target.table)
        pointer = results.active_pointer(target.ddb, target.table)
    active = str(pointer["run_id"]) if pointer else None
    if as_json:
        typer.echo(json.dumps(found))
        return
    if not found:
        console.print(f"No version is published yet in {target.where}.")
        return
    out = Table(title=f"Versions in {target.where}; active: {active or 'none'}")
    out.add_column("active")
    out.add_column("run id", no_wrap=True)
    out.add_column("state")
    out.add_column("users", justify="right")
    out.add_column("NDCG@10", justify="right")
    out.add_column("generated_at", no_wrap=True)
    out.add_column("expires_at", no_wrap=True)
    for version in found:
        state = str(version["state"]) + (" (expired)" if version["expired"] else "")
        ndcg = version["ndcg_at_10"]
        out.add_row("*" if version["active"] else "", Text(version["run_id"]),
                    Text(state, style="green" if state == "complete" else "yellow"),
                    "" if version["users"] is None else str(version["users"]),
                    "" if ndcg is None else f"{float(ndcg):.4f}",
                    str(version["generated_at"] or ""), _iso_epoch(version["expires_at"]))
    console.print(out)
    if active and not any(v["active"] for v in found):
        console.print(f"The active version {active} has no version item (expired and deleted?).")


@_command
def rollback(
    run_id: str = typer.Argument(..., help="The run id of the version to serve again ('recpipe versions')."),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """Serve an older version again: point readers at RUN_ID's rows (a conditional pointer flip).

    The version must be 'complete' and not expired (exit code 2 otherwise, nothing changes). The
    next successful run publishes and becomes active as usual. A run publishing at the same moment
    fails its pointer flip (PointerConflictError) rather than overwrite the rollback.
    """
    from recpipe.local import results
    from recpipe.results.exceptions import PointerConflictError, VersionNotActivatableError
    from recpipe.results.versions import activate

    with _open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        pointer = results.active_pointer(target.ddb, target.table)
        previous = str(pointer["run_id"]) if pointer else None
        if previous == run_id:
            console.print(f"Version {run_id} is already the active one in {target.where}; nothing changed.")
            return
        try:
            result = activate(run_id, dynamodb=target.ddb, table=target.table)
        except VersionNotActivatableError as exc:
            raise _fail(f"{exc} The active version is still {previous or 'none'} ('recpipe versions' lists "
                        "the published ones).") from exc
        except PointerConflictError as exc:
            raise _fail(str(exc), code=1) from exc
        lock = results.lock_item(target.ddb, target.table)
    console.print(f"Active version in {target.where}: {previous or 'none'} -> [bold]{result['run_id']}[/]")
    console.print(f"  previous active run: {previous or 'none'}\n  new active run: {result['run_id']}")
    if lock and lock.get("owner"):
        console.print(f"[yellow]Note:[/] run {escape(str(lock['owner']))} holds the run lock; when it "
                      "publishes it becomes the active version (or fails its flip if it read the pointer "
                      "before this rollback).")


def _lock_owner_state(target: Target, lock: Mapping[str, Any], now: float) -> tuple[str, str]:
    """(``ended`` | ``running`` | ``unknown``, why) for the run holding ``lock``."""
    from recpipe.remote import aws as remote

    owner = str(lock.get("owner"))
    expires = lock.get("expires_at")
    if expires is not None and float(expires) <= now:
        return "ended", f"the lock expired at {_iso_epoch(expires)} (no execution outlives its lock)"
    execution_name = str(lock.get("execution_name") or owner)
    if target.aws:
        if not target.state_machine_arn:
            return "unknown", ("the state machine is not known, so the execution cannot be checked (pass "
                               "--stack or --state-machine-arn)")
        sfn = remote.boto3_client("stepfunctions",
                                  target.region or remote.region_of_arn(target.state_machine_arn))
        found = remote.execution_status(sfn, target.state_machine_arn, execution_name)
        if found is None:
            return "unknown", f"no execution named '{execution_name}' in {target.state_machine_arn}"
        if found == "RUNNING":
            return "running", f"its execution '{execution_name}' is RUNNING"
        return "ended", f"its execution '{execution_name}' ended {found}"
    from recpipe.local import records

    for record in reversed(records.all_records(target.workdir)):
        if owner == record.get("run_id") or execution_name == record.get("execution_name"):
            if record.get("status") == "RUNNING":
                return "running", f"its local record says RUNNING ({records.records_dir(target.workdir)})"
            return "ended", f"its local run ended {record.get('status')}"
    return "unknown", (f"no local record of run '{owner}' under {records.records_dir(target.workdir)}: it "
                       "may still be running in another 'recpipe run' (a record is written when a run ends), "
                       "or it was killed")


@_command
def unlock(
    force: Annotated[bool, typer.Option(
        "--force", help="Release even when the owning run may still be running.")] = False,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
    state_machine_arn: str | None = STATE_MACHINE,
) -> None:
    """Show which run holds the run lock and release it.

    Only one run at a time may hold the lock (taken by Prepare, released when the run ends, also
    when it is stopped). A lock left behind by a run that has ended (succeeded, failed, stopped, or
    the lock expired) is released at once. When the owning run may still be running (its execution
    is RUNNING on AWS, or its state cannot be checked: no local record, or no state machine known
    with --aws), releasing needs --force: that run keeps going, a new run can then start beside
    it, and the two race to publish (the later pointer flip fails with PointerConflictError). The
    lock is deleted only if that same run still holds it.
    """
    from recpipe.local import results
    from recpipe.remote.exceptions import RemoteError
    from recpipe.results.lock import release_lock

    with _open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region,
                     state_machine_arn=state_machine_arn, want_state_machine=True) as target:
        lock = results.lock_item(target.ddb, target.table)
        if not lock:
            console.print(f"The run lock is free in {target.where}: no run holds it.")
            return
        owner = str(lock.get("owner"))
        console.print(f"The run lock in {target.where} is held by run [bold]{escape(owner)}[/] "
                      f"(execution {escape(str(lock.get('execution_name', '?')))}, taken "
                      f"{lock.get('acquired_at', '?')}, "
                      f"expires {_iso_epoch(lock.get('expires_at')) or '?'}).")
        try:
            state, why = _lock_owner_state(target, lock, dt.datetime.now(dt.UTC).timestamp())
        except RemoteError as exc:  # e.g. no states:DescribeExecution permission: cannot tell
            state, why = "unknown", str(exc)
        console.print(f"  {escape(why)}.")
        if state != "ended" and not force:
            verb = "is still running" if state == "running" else "may still be running"
            raise _fail(f"Not released: run {owner} {verb}. Releasing lets a new run start beside it; "
                        "pass --force to release anyway (see 'recpipe unlock --help').")
        released = release_lock(target.ddb, target.table, owner)
        now_held = None if released else results.lock_item(target.ddb, target.table)
    if not released:
        holder = now_held.get("owner") if now_held else None
        raise _fail(f"The lock changed meanwhile (now held by {holder or 'no run'}); nothing was deleted.",
                    code=1)
    console.print(f"Lock of run {escape(owner)} released" + (" (forced)." if state != "ended" else "."))


@app.command()
def definition() -> None:
    """Print the state machine's ASL (with its ${Placeholders})."""
    from workflows import definition as wf

    text = json.dumps(wf.load_definition(), indent=2) if wf.ASL_PATH.exists() else wf.definition_json()
    typer.echo(text.rstrip("\n"))


if __name__ == "__main__":
    app()
