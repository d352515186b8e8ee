"""What every command module shares: the Typer app, the consoles, the common options, errors.

A command module registers its commands with :func:`command` and is listed in
``recpipe.cli.COMMAND_MODULES``.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

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

F = TypeVar("F", bound=Callable[..., Any])


def command(func: F) -> F:
    """``app.command()`` with the docstring's paragraphs reflowed (Rich help keeps single newlines)."""
    paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
    app.command(help="\n\n".join(" ".join(p.split()) for p in paragraphs))(func)
    return func


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as an error; the caller raises the returned exit (code 2: bad usage/input)."""
    err_console.print(f"[red]Error:[/] {message}")
    return typer.Exit(code)
