"""The read API as a Powertools HTTP API (payload format 2.0) resolver: the routes of
:mod:`recpipe.serving.routes` over a :class:`~recpipe.serving.Reader`, errors as ``{"message": ...}``
with the status of their :mod:`recpipe.serving.exceptions` class.

One resolver for the deployed API Lambda (``lambdas/api/handler.py``, which supplies the Reader from
its environment) and ``recpipe serve`` (which supplies one on the local table), so both answer alike.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types

from recpipe.serving import Reader, routes
from recpipe.serving.exceptions import ServingError

logger = Logger(service="recpipe-api")
app = APIGatewayHttpResolver()


def _reader() -> Reader:
    reader: Reader = app.context["reader"]
    return reader


@app.get(routes.powertools_rule(routes.RECOMMENDATIONS))
def recommendations(user_id: str) -> dict[str, Any]:
    query = app.current_event.query_string_parameters or {}
    return _reader().recommendations(user_id, query.get("n"), query.get("recent"))


@app.get(routes.powertools_rule(routes.SIMILAR))
def similar(item_id: str) -> dict[str, Any]:
    query = app.current_event.query_string_parameters or {}
    return _reader().similar(item_id, query.get("n"))


@app.exception_handler(ServingError)
def serving_error(exc: ServingError) -> Response[str]:
    if exc.status >= 500:
        logger.warning("Read failed", extra={"status": exc.status, "error": str(exc)})
    return Response(status_code=exc.status, content_type=content_types.APPLICATION_JSON,
                    body=json.dumps({"message": str(exc)}))


def resolve(event: dict[str, Any], context: Any, reader: Reader) -> dict[str, Any]:
    """Answer one API Gateway HTTP API event with ``reader``."""
    app.append_context(reader=reader)
    return app.resolve(event, context)
