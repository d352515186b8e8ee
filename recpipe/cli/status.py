"""``recpipe status``: a run's states, times and outcomes (the local record, or the AWS execution)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recpipe.cli.core import REGION, STACK, STATE_MACHINE, WORKDIR, command, console, fail
from recpipe.cli.display import print_status
from recpipe.cli.target import check_local_only


@command
def status(
    run_id: str | None = typer.Argument(
        None, help="Run id, execution name, or (with --aws) execution ARN (default: the latest run)."),
    workdir: Path = WORKDIR,
    aws: Annotated[bool, typer.Option("--aws", help="Read the execution from Step Functions.")] = False,
    stack: str | None = STACK, region: str | None = REGION, state_machine_arn: str | None = STATE_MACHINE,
) -> None:
    """The states of a run, with their times and outcomes (the local record, or the AWS execution)."""
    from recpipe.executions.history import StateRun

    if aws:
        _status_aws(run_id, stack=stack, region=region, state_machine_arn=state_machine_arn)
        return
    check_local_only(False, None, stack=stack, region=region, state_machine_arn=state_machine_arn)
    from recpipe.executions import records
    from recpipe.executions.exceptions import RecordNotFoundError

    try:
        record = records.load(workdir, run_id)
    except RecordNotFoundError as exc:
        raise fail(str(exc)) from exc
    print_status(run_id=record.get("run_id"), execution_name=record.get("execution_name"),
                 backend=str(record.get("backend", "local")), status=record.get("status"),
                 started=record.get("started"), stopped=record.get("stopped"), error=record.get("error"),
                 cause=record.get("cause"),
                 states=[StateRun.from_json(data_) for data_ in record.get("states", [])])


def _status_aws(ref: str | None, *, stack: str | None, region: str | None,
                state_machine_arn: str | None) -> None:
    from recpipe.executions.follow import snapshot
    from recpipe.executions.history import run_id_of
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
        raise fail(str(exc)) from exc
    name = str(describe.get("name") or arn.rsplit(":", 1)[-1])
    print_status(run_id=run_id_of(outcome) or derive_run_id(name), execution_name=name, backend="aws",
                 status=outcome.status, started=describe.get("startDate"), stopped=describe.get("stopDate"),
                 error=outcome.error, cause=outcome.cause, states=outcome.states)
    console.print(f"Execution ARN: {arn}", soft_wrap=True)
