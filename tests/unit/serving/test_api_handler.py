"""The read API handler fed with HTTP API (payload 2.0) events from files, over a moto table."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from lambdas.api import handler
from recpipe import tables
from recpipe.serving import Reader
from tests.unit.serving.conftest import SIMILAR, World

EVENTS = Path(__file__).parent / "events"


def _event(name: str, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    event = copy.deepcopy(event)
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["rawQueryString"] = urlencode(query or {})
    if query:
        event["queryStringParameters"] = dict(parse_qsl(event["rawQueryString"]))
    else:
        event.pop("queryStringParameters", None)
    return event


def _call(world: World, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = handler.lambda_handler(event, None, reader=Reader(world.ddb, world.table))
    return response["statusCode"], json.loads(response["body"])


def test_the_file_event_as_is(world: World) -> None:
    status, body = _call(world, json.loads((EVENTS / "api_recommendations.json").read_text()))
    assert status == 200
    assert body == {"user_id": "1", "run_id": world.run_id, "fallback": False,
                    "items": [{"item_id": "i0", "score": 2.5}, {"item_id": "i1", "score": 2.4},
                              {"item_id": "i2", "score": 2.3}]}


def test_unknown_user_recent_and_similar(world: World) -> None:
    status, body = _call(world, _event("api_recommendations.json", "/recommendations/new-user", {"n": "10"}))
    assert status == 200 and body["fallback"] is True and len(body["items"]) == 10
    status, recent = _call(world, _event("api_recommendations.json", "/recommendations/new-user",
                                         {"n": "10", "recent": "i0,nope"}))
    assert status == 200 and recent["unknown_items"] == ["nope"] and recent["items"] != body["items"]
    assert "i0" not in [e["item_id"] for e in recent["items"]]
    status, similar = _call(world, json.loads((EVENTS / "api_similar.json").read_text()))
    assert status == 200 and similar["item_id"] == "i4" and len(similar["items"]) == SIMILAR


@pytest.mark.parametrize(("name", "path", "query", "status", "message"), [
    ("api_recommendations.json", "/recommendations/1", {"n": "0"}, 400,
     "The 'n' parameter must be an int in [1, 20], got '0'."),
    ("api_recommendations.json", "/recommendations/1", {"n": "x"}, 400, "got 'x'"),
    ("api_similar.json", "/similar/i4", {"n": "99"}, 400, f"[1, {SIMILAR}], got '99'"),
    ("api_similar.json", "/similar/ghost", None, 404, "Unknown item 'ghost'"),
])
def test_errors_answer_with_a_status_and_a_message(world: World, name: str, path: str,
                                                   query: dict[str, str] | None, status: int,
                                                   message: str) -> None:
    got, body = _call(world, _event(name, path, query))
    assert got == status and message in body["message"]


def test_no_published_version_is_a_503_and_unknown_routes_404(world: World) -> None:
    world.ddb.delete_item(TableName=world.table, Key={k: {"S": v} for k, v in tables.ACTIVE_KEY.items()})
    status, body = _call(world, _event("api_recommendations.json", "/recommendations/1"))
    assert status == 503 and "No version is published yet" in body["message"]
    status, _ = _call(world, _event("api_recommendations.json", "/users/1"))
    assert status == 404


def test_the_deployed_reader_comes_from_the_environment(world: World,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tables.TABLE_ENV, world.table)
    monkeypatch.setenv(handler.POINTER_TTL_ENV, "2.5")
    reader = handler.reader_from_environment(world.ddb)
    assert reader.table == world.table and reader.pointer_ttl_s == 2.5
    monkeypatch.setenv(handler.POINTER_TTL_ENV, "soon")
    with pytest.raises(RuntimeError, match="RECPIPE_POINTER_TTL_SECONDS must be a number of seconds"):
        handler.reader_from_environment(world.ddb)
    monkeypatch.delenv(tables.TABLE_ENV)
    with pytest.raises(RuntimeError, match="needs the environment variable RECPIPE_TABLE"):
        handler.reader_from_environment(world.ddb)
