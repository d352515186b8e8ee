"""Where a command acts: the local work directory and table, or (``--aws``) the deployed stack."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recpipe.cli.core import fail


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


def check_local_only(aws: bool, endpoint: str | None, **aws_only: Any) -> None:
    """Refuse local-only options with ``--aws`` and ``--aws``-only options (given as keywords) without."""
    if aws and endpoint:
        raise fail("--dynamodb-endpoint is local-only: with --aws the table is the deployed one.")
    given = [f"--{name.replace('_', '-')}" for name, value in aws_only.items() if value]
    if not aws and given:
        raise fail(f"{'/'.join(given)} {'apply' if len(given) > 1 else 'applies'} only with --aws.")


@contextlib.contextmanager
def open_table(workdir: Path, endpoint: str | None, table: str | None, *, aws: bool = False,
               stack: str | None = None, region: str | None = None, state_machine_arn: str | None = None,
               want_state_machine: bool = False) -> Iterator[Target]:
    """The local results table (dynalite started on WORKDIR, or ``endpoint``) or the deployed one."""
    from recpipe.remote import aws as remote
    from recpipe.remote.exceptions import RemoteError

    check_local_only(aws, endpoint, stack=stack, region=region, state_machine_arn=state_machine_arn)
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
            raise fail(str(exc)) from exc
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
        raise fail(str(exc)) from exc


def active_run(target: Target) -> str:
    """The run id of the active version; exit 2 when nothing was published yet."""
    from recpipe.results import read

    pointer = read.active_pointer(target.ddb, target.table)
    if not pointer:
        hint = "start a run on AWS first" if target.aws else "run 'recpipe run' first"
        raise fail(f"No version is published yet in {target.where}: {hint}.")
    return str(pointer["run_id"])
