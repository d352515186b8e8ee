"""Read API Lambda (API Gateway HTTP API, payload format 2.0), Powertools' event handler.

* ``GET /recommendations/{user_id}?n=10[&recent=item1,item2]`` ->
  ``{"user_id", "run_id", "items": [{"item_id", "score"}], "fallback": bool}`` (a fallback adds
  ``fallback_source`` and, with ``recent``, ``unknown_items``);
* ``GET /similar/{item_id}?n=10`` -> ``{"item_id", "run_id", "items": [...]}``.

Errors answer ``{"message": ...}`` with the status of the :mod:`recpipe.serving.exceptions` class
(400 bad ``n``/``recent``, 404 unknown item, 503 nothing published). The work is
:class:`recpipe.serving.Reader`; ``recpipe serve`` runs this very handler over a local HTTP adapter.
Environment: ``RECPIPE_TABLE`` (the table), ``RECPIPE_POINTER_TTL_SECONDS`` (pointer cache, default 10).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types

from recpipe import tables
from recpipe.serving import Reader, routes
from recpipe.serving.exceptions import ServingError
from recpipe.serving.reader import DEFAULT_POINTER_TTL_S, POINTER_TTL_ENV

logger = Logger(service="recpipe-api")
app = APIGatewayHttpResolver()


def reader_from_environment(dynamodb: Any = None) -> Reader:
    """The Reader the deployed function uses (table and cache time from its environment)."""
    table = os.environ.get(tables.TABLE_ENV)
    if not table:
        raise RuntimeError(f"The API function needs the environment variable {tables.TABLE_ENV} (the table).")
    ttl_text = os.environ.get(POINTER_TTL_ENV, "")
    try:
        ttl = float(ttl_text) if ttl_text else DEFAULT_POINTER_TTL_S
    except ValueError as exc:
        raise RuntimeError(f"{POINTER_TTL_ENV} must be a number of seconds, got {ttl_text!r}.") from exc
    return Reader(dynamodb or boto3.client("dynamodb"), table, pointer_ttl_s=ttl)


@functools.cache
def _default_reader() -> Reader:
    # Created once per execution environment: the pointer cache lives as long as the container.
    return reader_from_environment()


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


def lambda_handler(event: dict[str, Any], context: Any, *, reader: Reader | None = None) -> dict[str, Any]:
    """``reader``: tests and ``recpipe serve`` pass their own (another table or endpoint)."""
    app.append_context(reader=reader or _default_reader())
    return app.resolve(event, context)
