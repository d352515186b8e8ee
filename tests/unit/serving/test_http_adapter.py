"""``recpipe serve``'s adapter: HTTP requests become HTTP API 2.0 events for the very API handler."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from lambdas.api import handler
from recpipe.serving import Reader
from recpipe.serving.http import LocalApiServer, to_event
from tests.unit.serving.conftest import World


@pytest.fixture
def server(world: World) -> Iterator[LocalApiServer]:
    reader = Reader(world.ddb, world.table)
    lines: list[str] = []

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return handler.lambda_handler(event, context, reader=reader)

    api = LocalApiServer(("127.0.0.1", 0), handle, log=lines.append)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
        thread.join()


def _get(url: str, method: str = "GET") -> tuple[int, Any]:
    try:
        with urlopen(Request(url, method=method), timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_served_answers_are_the_handlers(server: LocalApiServer, world: World) -> None:
    reader = Reader(world.ddb, world.table)
    status, body = _get(f"{server.url}recommendations/1?n=4")
    assert status == 200 and body == reader.recommendations("1", 4)
    status, body = _get(f"{server.url}recommendations/new?n=3&recent=i0,ghost")
    assert status == 200 and body == reader.recommendations("new", 3, "i0,ghost")
    status, body = _get(f"{server.url}similar/i4?n=2")
    assert status == 200 and body == reader.similar("i4", 2)


def test_errors_and_unknown_routes(server: LocalApiServer) -> None:
    status, body = _get(f"{server.url}recommendations/1?n=0")
    assert status == 400 and body["message"] == "The 'n' parameter must be an int in [1, 20], got '0'."
    assert _get(f"{server.url}users/1") == (404, {"message": "Not Found"})
    assert _get(f"{server.url}recommendations/1", method="POST") == (404, {"message": "Not Found"})


def test_events_look_like_api_gateways() -> None:
    event = to_event("GET", "/recommendations/a%20b?n=5&recent=x&recent=y", {"User-Agent": "t"})
    assert event is not None
    assert event["routeKey"] == "GET /recommendations/{user_id}"
    assert event["pathParameters"] == {"user_id": "a b"}
    assert event["queryStringParameters"] == {"n": "5", "recent": "x,y"}
    assert event["requestContext"]["http"]["method"] == "GET" and event["version"] == "2.0"
    assert to_event("GET", "/recommendations/", {}) is None
    assert to_event("DELETE", "/similar/x", {}) is None
