"""The ``recpipe`` command line (Typer + Rich).

Every command takes ``--workdir`` (default ``.recpipe``): the local state it reads or writes
(MovieLens cache, the S3 mirror ``s3/``, the dynalite data ``dynamodb/``, execution records
``executions/``). Exit codes: 0 success, 1 a failed pipeline run, 2 bad usage or input (unknown
user, invalid ``--set``, missing record).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator, Mapping
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
TABLE = typer.Option("recpipe-results", "--table", help="Results table name.")

_ICONS = {"running": "[yellow]…[/]", "succeeded": "[green]✓[/]", "failed": "[red]✗[/]",
          "aborted": "[dim]-[/]"}


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
        """``recpipe-<run>-serve-fm`` -> ``FM epochs [serve]``."""
        parts = job_name.split("-")
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
        items = ", ".join(f"{i['item_id']} ({float(i['score']):.3f})" for i in row["items"][:10])
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
    table: str = TABLE,
    aws: Annotated[bool, typer.Option("--aws", help="Start the deployed state machine.")] = False,
    state_machine_arn: Annotated[str | None, typer.Option(help="With --aws: the state machine.")] = None,
    region: Annotated[str | None, typer.Option(help="With --aws: the region (default: the ARN's).")] = None,
    keep_jobs: Annotated[bool, typer.Option(help="Keep each job's /opt/ml under WORKDIR/jobs.")] = False,
    poll_seconds: Annotated[float, typer.Option(hidden=True, help="With --aws: poll interval.")] = 5.0,
) -> None:
    """Run the pipeline: locally by default (MovieLens-100k when no data is given), or on AWS."""
    overrides = _overrides(assignments)
    try:
        resolved = config.resolve(overrides)
    except config.ConfigError as exc:
        raise _fail(str(exc)) from exc
    if aws:
        if not state_machine_arn:
            raise _fail("--aws needs --state-machine-arn ARN.")
        if interactions or users or items:
            raise _fail("--interactions/--users/--items are local-only: on AWS the data is read from the "
                        f"bucket under '{resolved['data.prefix']}/'.")
        raise typer.Exit(_run_aws(state_machine_arn, overrides, workdir, region, poll_seconds))
    if interactions is None and (users or items):
        raise _fail("--users/--items need --interactions.")
    if interactions is None:
        with err_console.status("Fetching MovieLens-100k..."):
            dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
        interactions, users, items = dest / "interactions", dest / "users", dest / "items"
    raise typer.Exit(_run_local(overrides, str(resolved["data.prefix"]), interactions, users, items, workdir,
                                dynamodb_endpoint, table, keep_jobs))


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
    import boto3

    from recpipe.local import records
    from recpipe.local.engine import new_execution_name, run_id_of
    from recpipe.local.follow import follow, full_history
    from recpipe.local.history import jsonable_events

    region = region or (arn.split(":")[3] if arn.count(":") >= 6 else None)
    sfn = boto3.client("stepfunctions", region_name=region)
    started = dt.datetime.now().timestamp()
    name = new_execution_name("cli")
    execution_arn = sfn.start_execution(stateMachineArn=arn, name=name,
                                        input=json.dumps(overrides))["executionArn"]
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


# --- reading results --------------------------------------------------------------------------------

@contextlib.contextmanager
def _results(workdir: Path, endpoint: str | None, table: str) -> Iterator[Any]:
    from recpipe.local.engine import results_endpoint
    from recpipe.local.exceptions import LocalEngineError

    try:
        with results_endpoint(workdir, endpoint, table) as ddb:
            yield ddb
    except LocalEngineError as exc:
        raise _fail(str(exc)) from exc


@app.command()
def recommend(
    user_id: str = typer.Argument(..., help="The user's original id."),
    top: Annotated[int | None, typer.Option(min=1, help="Show at most N items (default: all).")] = None,
    as_json: bool = typer.Option(False, "--json", help='Print {"user_id", "run_id", "items": [...]}.'),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str = TABLE,
) -> None:
    """A user's recommendations from the active published version."""
    from recpipe.local import results

    with _results(workdir, dynamodb_endpoint, table) as ddb:
        pointer = results.active_pointer(ddb, table)
        if not pointer:
            raise _fail("No version is published yet: run 'recpipe run' first.")
        run_id = str(pointer["run_id"])
        row = results.user_recommendations(ddb, table, user_id, run_id)
    if row is None:
        raise _fail(f"Unknown user '{user_id}': the active version {run_id} has no recommendations for them.")
    row = results.shape(row["user_id"], run_id, row["items"], top)
    if as_json:
        typer.echo(json.dumps(row))
        return
    out = Table(title=f"User {user_id} (version {run_id})")
    out.add_column("#", justify="right")
    out.add_column("item_id")
    out.add_column("score", justify="right")
    for rank, item in enumerate(row["items"], 1):
        out.add_row(str(rank), str(item["item_id"]), f"{float(item['score']):.4f}")
    console.print(out)


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="Write JSON lines here (default: stdout).")] = None,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str = TABLE,
) -> None:
    """Every user's active recommendations as JSON lines ({"user_id", "run_id", "items"})."""
    from recpipe.local import results

    with _results(workdir, dynamodb_endpoint, table) as ddb:
        pointer = results.active_pointer(ddb, table)
        if not pointer:
            raise _fail("No version is published yet: run 'recpipe run' first.")
        rows = list(results.all_recommendations(ddb, table, str(pointer["run_id"])))
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if out is None:
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(lines)
        err_console.print(f"{len(rows)} users written to {out} (version {pointer['run_id']}).")


@app.command()
def status(run_id: str | None = typer.Argument(None, help="Run id or execution name (default: the latest)."),
           workdir: Path = WORKDIR) -> None:
    """The states of a run, with their times and outcomes (from the local record)."""
    from recpipe.local import records
    from recpipe.local.exceptions import RecordNotFoundError
    from recpipe.local.history import StateRun

    try:
        record = records.load(workdir, run_id)
    except RecordNotFoundError as exc:
        raise _fail(str(exc)) from exc
    colour = {"SUCCEEDED": "green", "FAILED": "red"}.get(str(record.get("status")), "yellow")
    console.print(f"Run [bold]{record.get('run_id')}[/] (execution {record.get('execution_name')}, "
                  f"{record.get('backend', 'local')}): [{colour}]{record.get('status')}[/]")
    console.print(f"  started {record.get('started')}  stopped {record.get('stopped')}")
    if record.get("error"):
        console.print(f"  error: {escape(str(record['error']))}\n"
                      f"  cause: {escape(summarise_cause(record.get('cause')))}")
    out = Table(show_header=True)
    out.add_column("state", no_wrap=True, min_width=24)
    out.add_column("outcome")
    out.add_column("started", no_wrap=True)
    out.add_column("duration", justify="right", no_wrap=True)
    out.add_column("error", overflow="fold")
    for data_ in record.get("states", []):
        run_ = StateRun.from_json(data_)
        outcome = run_.status + (" (caught)" if run_.caught else "")
        if run_.attempts > 1:
            outcome += f", {run_.attempts} attempts"
        style = {"succeeded": "green", "failed": "red"}.get(run_.status, "")
        out.add_row(Text(run_.label), Text(outcome, style=style),
                    run_.started.strftime("%H:%M:%S"), _duration(run_.seconds), Text(run_.error or ""))
    console.print(out)


@app.command()
def definition() -> None:
    """Print the state machine's ASL (with its ${Placeholders})."""
    from workflows import definition as wf

    text = json.dumps(wf.load_definition(), indent=2) if wf.ASL_PATH.exists() else wf.definition_json()
    typer.echo(text.rstrip("\n"))


if __name__ == "__main__":
    app()
