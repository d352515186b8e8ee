"""``recpipe definition``: the state machine's ASL."""

from __future__ import annotations

import json

import typer

from recpipe.cli.core import command


@command
def definition() -> None:
    """Print the state machine's ASL (with its ${Placeholders})."""
    from workflows import definition as wf

    text = json.dumps(wf.load_definition(), indent=2) if wf.ASL_PATH.exists() else wf.definition_json()
    typer.echo(text.rstrip("\n"))
