"""``recpipe recommend`` and ``recpipe export``: reading the active version's recommendations."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from recpipe.cli.core import AWS, DYNAMODB, REGION, STACK, TABLE, WORKDIR, command, console, err_console, fail
from recpipe.cli.display import score
from recpipe.cli.target import active_run, open_table


@command
def recommend(
    user_id: str = typer.Argument(..., help="The user's original id."),
    top: Annotated[int | None, typer.Option(min=1, help="Show at most N items (default: all).")] = None,
    as_json: bool = typer.Option(False, "--json", help='Print {"user_id", "run_id", "items": [...]}.'),
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """A user's recommendations from the active published version (local, or deployed with --aws)."""
    from recpipe.results import read

    with open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        run_id = active_run(target)
        row = read.user_recommendations(target.ddb, target.table, user_id, run_id)
    if row is None:
        raise fail(f"Unknown user '{user_id}': the active version {run_id} has no recommendations for them.")
    row = read.shape(row["user_id"], run_id, row["items"], top)
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(f"User {escape(user_id)}, version {escape(run_id)}:")
    out = Table()
    out.add_column("#", justify="right")
    out.add_column("item_id")
    out.add_column("score", justify="right")
    for rank, item in enumerate(row["items"], 1):
        out.add_row(str(rank), str(item["item_id"]), score(item["score"], 4))
    console.print(out)


@command
def export(
    out: Annotated[Path | None, typer.Option(help="Write JSON lines here (default: stdout).")] = None,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
    aws: bool = AWS, stack: str | None = STACK, region: str | None = REGION,
) -> None:
    """Every user's active recommendations as JSON lines ({"user_id", "run_id", "items"}).

    Locally the users come in id order. With --aws they stream in the table's scan order: the scan
    reads every item of the table (all versions still kept), at 0.5 read units per 4 KB.
    """
    from recpipe.results import read

    count = 0
    with open_table(workdir, dynamodb_endpoint, table, aws=aws, stack=stack, region=region) as target:
        run_id = active_run(target)
        rows = read.all_recommendations(target.ddb, target.table, run_id, ordered=not aws)
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
