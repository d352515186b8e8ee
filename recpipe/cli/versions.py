"""``recpipe versions`` and ``recpipe rollback``: the published versions and which one is served."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from recpipe.cli.core import AWS, DYNAMODB, REGION, STACK, TABLE, WORKDIR, command, console, fail
from recpipe.cli.display import iso_epoch
from recpipe.cli.target import open_table


@command
def versions(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """The published versions, newest first, and which one readers are served (the active one).

    Any 'complete' version that has not expired can be made active again with 'recpipe rollback'.
    """
    from recpipe.results import read

    with open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        found = read.versions(target.ddb, target.table)
        pointer = read.active_pointer(target.ddb, target.table)
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
                    str(version["generated_at"] or ""), iso_epoch(version["expires_at"]))
    console.print(out)
    if active and not any(v["active"] for v in found):
        console.print(f"The active version {active} has no version item (expired and deleted?).")


@command
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
    from recpipe.results import read
    from recpipe.results.exceptions import PointerConflictError, VersionNotActivatableError
    from recpipe.results.versions import activate

    with open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        pointer = read.active_pointer(target.ddb, target.table)
        previous = str(pointer["run_id"]) if pointer else None
        if previous == run_id:
            console.print(f"Version {run_id} is already the active one in {target.where}; nothing changed.")
            return
        try:
            result = activate(run_id, dynamodb=target.ddb, table=target.table)
        except VersionNotActivatableError as exc:
            raise fail(f"{exc} The active version is still {previous or 'none'} ('recpipe versions' lists "
                       "the published ones).") from exc
        except PointerConflictError as exc:
            raise fail(str(exc), code=1) from exc
        lock = read.lock_item(target.ddb, target.table)
    console.print(f"Active version in {target.where}: {previous or 'none'} -> [bold]{result['run_id']}[/]")
    console.print(f"  previous active run: {previous or 'none'}\n  new active run: {result['run_id']}")
    if lock and lock.get("owner"):
        console.print(f"[yellow]Note:[/] run {escape(str(lock['owner']))} holds the run lock; when it "
                      "publishes it becomes the active version (or fails its flip if it read the pointer "
                      "before this rollback).")
