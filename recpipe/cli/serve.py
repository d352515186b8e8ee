"""``recpipe serve``: the read API (the API Lambda's resolver, :mod:`recpipe.serving.api`) over HTTP,
against the local results table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from recpipe.cli.core import DYNAMODB, TABLE, WORKDIR, command, console, fail


@command
def serve(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to listen on (the API has no authentication locally: "
                                      "keep the loopback default unless you mean it).")] = "127.0.0.1",
    pointer_ttl: Annotated[float, typer.Option(min=0, help="Seconds the active version is cached (as the "
                                               "deployed function's RECPIPE_POINTER_TTL_SECONDS).")] = 10.0,
    workdir: Path = WORKDIR, dynamodb_endpoint: str | None = DYNAMODB, table: str | None = TABLE,
) -> None:
    """Serve the read API locally: the deployed API Lambda's routes behind an HTTP adapter.

    GET /recommendations/USER_ID?n=10[&recent=ITEM,ITEM] and GET /similar/ITEM_ID?n=10 answer
    exactly as the deployed API does (same routes, same table layout), from the local table
    (dynalite on WORKDIR, or --dynamodb-endpoint). Stop with Ctrl-C.
    """
    from recpipe.cli.target import open_table
    from recpipe.serving import Reader, api
    from recpipe.serving.http import LocalApiServer

    with open_table(workdir, dynamodb_endpoint, table) as target:
        reader = Reader(target.ddb, target.table, pointer_ttl_s=pointer_ttl)

        def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
            return api.resolve(event, context, reader)

        try:
            server = LocalApiServer((host, port), handle, log=lambda line: console.print(escape(line)))
        except OSError as exc:
            raise fail(f"Cannot listen on {host}:{port}: {exc.strerror or exc} (try --port 0).") from exc
        console.print(f"Serving {target.where} on [bold]{server.url}[/] "
                      f"(try {server.url}recommendations/1?n=10); Ctrl-C stops.", soft_wrap=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("Stopped.")
        finally:
            server.server_close()
