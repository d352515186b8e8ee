"""``recpipe report``: one self-contained HTML page about a run (plots as inline SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recpipe.cli.core import AWS, REGION, STACK, STATE_MACHINE, WORKDIR, command, console, fail


@command
def report(
    run_id: str | None = typer.Argument(None, help="The run (default: the latest one)."),
    out: Annotated[Path, typer.Option(help="Where to write the HTML page.")] = Path("report.html"),
    workdir: Path = WORKDIR, aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
    state_machine_arn: str | None = STATE_MACHINE,
) -> None:
    """Write a run's report: one HTML page with its plots embedded, readable offline.

    Holdout metrics against the previous runs, NDCG@10 by user activity, the FM training curve,
    item popularity against recommendations (long tail, coverage), the score distribution, and the
    run's states with their durations. Everything comes from what the run wrote under
    runs/RUN_ID/ (Evaluate records the report's data), the execution record or history, and the
    FM jobs' metrics (locally recorded per epoch; on AWS their CloudWatch metrics).
    """
    from recpipe.report.build import aws_inputs, local_inputs, write_report

    if not aws:
        from recpipe.cli.target import check_local_only
        from recpipe.local.engine import BUCKET

        check_local_only(False, None, stack=stack, region=region, state_machine_arn=state_machine_arn)
        try:
            inputs = local_inputs(workdir, BUCKET, run_id)
        except FileNotFoundError as exc:
            raise fail(str(exc)) from exc
    else:
        from recpipe.remote import aws as remote
        from recpipe.remote.exceptions import RemoteError

        try:
            target = remote.resolve_target(state_machine_arn=state_machine_arn, stack=stack, region=region,
                                           want_state_machine=True)
            outputs = remote.stack_outputs(remote.boto3_client("cloudformation", target.region),
                                           target.stack or stack or remote.DEFAULT_STACK)
            bucket = outputs.get(remote.BUCKET_OUTPUT)
            if not bucket:
                raise fail(f"The stack has no {remote.BUCKET_OUTPUT} output: is it a recpipe stack?")
            machine = target.state_machine_arn or outputs.get(remote.STATE_MACHINE_OUTPUT)
            with remote.aws_errors("reading the run's report inputs"):
                inputs = aws_inputs(run_id, bucket=bucket, region=target.region, state_machine_arn=machine,
                                    client=remote.boto3_client)
        except (RemoteError, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
    path = write_report(inputs, out)
    console.print(f"Report of run {inputs.run_id} written to {path}")
    for note in inputs.notes:
        console.print(f"  [yellow]note:[/] {note}")
