"""The ``recpipe`` command line (Typer + Rich)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from recpipe import datasets

app = typer.Typer(help="recpipe: batch recommendations with SageMaker FM + k-NN, on AWS or locally.",
                  no_args_is_help=True)
console = Console()

WORKDIR = typer.Option(Path(".recpipe"), "--workdir", help="Local state directory.")


@app.command()
def data(workdir: Path = WORKDIR) -> None:
    """Fetch MovieLens-100k (from the recbole wheel, cached) into the work directory."""
    dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
    console.print(f"MovieLens-100k ready at {dest}")


@app.command()
def run(workdir: Path = WORKDIR) -> None:
    """Run the pipeline locally (the local engine lands in a later change; for now: the data step)."""
    data(workdir)
    console.print("The local engine is not built yet: stopped after the data step.")


if __name__ == "__main__":
    app()
