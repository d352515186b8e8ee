"""``recpipe data`` and ``recpipe run`` (locally through the local engine, or on AWS, followed live)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from recpipe import config, datasets
from recpipe.cli.core import (
    DYNAMODB,
    REGION,
    STACK,
    STATE_MACHINE,
    TABLE,
    WORKDIR,
    command,
    console,
    err_console,
    fail,
)
from recpipe.cli.display import RunDisplay, print_outcome, print_samples
from recpipe.cli.target import check_local_only
from recpipe.executions.status import SUCCEEDED


@command
def data(workdir: Path = WORKDIR) -> None:
    """Fetch MovieLens-100k (from the recbole wheel, cached) into the work directory."""
    dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
    console.print(f"MovieLens-100k ready at {dest}")


def _overrides(assignments: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in assignments or []:
        try:
            key, value = config.parse_assignment(text)
        except config.ConfigError as exc:
            raise fail(f"--set {text}: " + "; ".join(exc.problems)) from exc
        out[key] = value
    return out


@command
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
        raise fail(str(exc)) from exc
    check_local_only(aws, dynamodb_endpoint, stack=stack, region=region, state_machine_arn=state_machine_arn)
    if aws:
        if interactions or users or items:
            raise fail("--interactions/--users/--items are local-only: on AWS the data is read from the "
                       f"bucket under '{resolved['data.prefix']}/'.")
        if table:
            raise fail("--table is local-only for 'run': the deployed state machine writes its own table.")
        from recpipe.remote import aws as remote
        from recpipe.remote.exceptions import RemoteError

        try:
            target = remote.resolve_target(state_machine_arn=state_machine_arn, stack=stack, region=region,
                                           need_state_machine=True)
        except RemoteError as exc:
            raise fail(str(exc)) from exc
        assert target.state_machine_arn is not None
        raise typer.Exit(_run_aws(target.state_machine_arn, overrides, workdir, target.region, poll_seconds))
    if interactions is None and (users or items):
        raise fail("--users/--items need --interactions.")
    if interactions is None:
        with err_console.status("Fetching MovieLens-100k..."):
            dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
        interactions, users, items = dest / "interactions", dest / "users", dest / "items"
    from recpipe.local.dynamodb import DEFAULT_TABLE

    raise typer.Exit(_run_local(overrides, str(resolved["data.prefix"]), interactions, users, items, workdir,
                                dynamodb_endpoint, table or DEFAULT_TABLE, keep_jobs))


def _run_local(overrides: dict[str, Any], prefix: str, interactions: Path, users: Path | None,
               items: Path | None, workdir: Path, endpoint: str | None, table: str, keep_jobs: bool) -> int:
    from recpipe.executions.history import run_id_of
    from recpipe.local.engine import EngineOptions, LocalEngine
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
            print_outcome(outcome, run_id, started)
            if outcome.status == SUCCEEDED or run_id:
                published = run_id if outcome.status == SUCCEEDED else None
                print_samples(engine.results_client(), table, published)
            console.print(f"Details: recpipe status {run_id or ''} --workdir {workdir}".rstrip())
            return 0 if outcome.status == SUCCEEDED else 1
    except LocalEngineError as exc:
        err_console.print(f"[red]Error:[/] {exc}")
        return 2


def _run_aws(arn: str, overrides: dict[str, Any], workdir: Path, region: str | None, poll_s: float) -> int:
    from recpipe.executions import records
    from recpipe.executions.follow import follow, full_history
    from recpipe.executions.history import jsonable_events, run_id_of
    from recpipe.remote import aws as remote
    from recpipe.remote.exceptions import RemoteError

    started = dt.datetime.now().timestamp()
    name = records.new_execution_name("cli")
    try:
        sfn = remote.boto3_client("stepfunctions", region or remote.region_of_arn(arn))
        with remote.aws_errors(f"starting an execution of {arn}"):
            execution_arn = sfn.start_execution(stateMachineArn=arn, name=name,
                                                input=json.dumps(overrides))["executionArn"]
    except RemoteError as exc:
        raise fail(str(exc)) from exc
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
    print_outcome(outcome, run_id, started)
    describe = sfn.describe_execution(executionArn=execution_arn)
    records.save(workdir, {
        "execution_name": name, "execution_arn": execution_arn, "run_id": run_id, "backend": "aws",
        "status": outcome.status, "started": str(describe.get("startDate")),
        "stopped": str(describe.get("stopDate")),
        "input": overrides, "output": outcome.output, "error": outcome.error, "cause": outcome.cause,
        "states": [s.to_json() for s in outcome.states],
        "events": jsonable_events(full_history(sfn, execution_arn)),
    })
    return 0 if outcome.status == SUCCEEDED else 1
