"""Read API Lambda (API Gateway HTTP API, payload format 2.0), Powertools' event handler.

* ``GET /recommendations/{user_id}?n=10[&recent=item1,item2]`` ->
  ``{"user_id", "run_id", "items": [{"item_id", "score"}], "fallback": bool}`` (a fallback adds
  ``fallback_source`` and, with ``recent``, ``unknown_items``);
* ``GET /similar/{item_id}?n=10`` -> ``{"item_id", "run_id", "items": [...]}``.

Errors answer ``{"message": ...}`` with the status of the :mod:`recpipe.serving.exceptions` class
(400 bad ``n``/``recent``, 404 unknown item, 503 nothing published). The routes are
:mod:`recpipe.serving.api` (``recpipe serve`` runs the same resolver over a local HTTP adapter), the
work :class:`recpipe.serving.Reader`; this module only builds the Reader from the environment.
Environment: ``RECPIPE_TABLE`` (the table), ``RECPIPE_POINTER_TTL_SECONDS`` (pointer cache, default 10).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import boto3

from recpipe import tables
from recpipe.serving import Reader, api
from recpipe.serving.reader import DEFAULT_POINTER_TTL_S, POINTER_TTL_ENV


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


def lambda_handler(event: dict[str, Any], context: Any, *, reader: Reader | None = None) -> dict[str, Any]:
    """``reader``: tests pass their own (another table or endpoint)."""
    return api.resolve(event, context, reader or _default_reader())
