"""``recpipe serve``: the API Lambda's very handler behind a local HTTP server.

An HTTP request becomes the event API Gateway (HTTP API, payload format 2.0) would send
(:func:`to_event`), the handler's result becomes the HTTP response (:func:`response_headers`,
:func:`response_body`). Like API Gateway, a path that matches no route answers 404
``{"message": "Not Found"}`` without calling the handler, and so does a method other than GET
(the API has GET routes only). There is no signature check locally: the server listens on the
loopback interface only by default.

Connections get a thread each, but the handler runs for one request at a time: Powertools'
resolver keeps the current event on the class (a Lambda environment serves one request at a
time), so concurrent calls must not interleave.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from recpipe.serving import routes

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def to_event(method: str, target: str, headers: Mapping[str, str], *, source_ip: str = "127.0.0.1",
             host: str = "localhost") -> dict[str, Any] | None:
    """The HTTP API 2.0 event of a request (``target`` = path and query), or None when no route matches."""
    parts = urlsplit(target)
    found = routes.match(parts.path)
    if found is None or method != routes.METHOD:
        return None
    route, parameters = found
    route_key = f"{method} {route}"
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        # API Gateway joins repeated parameters with commas.
        query[key] = f"{query[key]},{value}" if key in query else value
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": {k.lower(): v for k, v in headers.items()},
        "pathParameters": parameters,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {"method": method, "path": parts.path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": headers.get("User-Agent", headers.get("user-agent", ""))},
            "requestId": uuid.uuid4().hex,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = query
    return event


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalApiServer
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        started = time.perf_counter()
        host = self.headers.get("Host", "localhost").split(":")[0]
        event = to_event(self.command, self.path, dict(self.headers.items()),
                         source_ip=self.client_address[0], host=host)
        if event is None:
            self._answer(404, {"Content-Type": "application/json"}, b'{"message":"Not Found"}')
        else:
            status, headers, body = self.server.invoke(event)
            self._answer(status, headers, body)
        self.server.log(f"{self.command} {self.path} {self.server.last_status} "
                        f"{(time.perf_counter() - started) * 1000:.1f} ms")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:  # the server logs one line per request itself
        pass


class LocalApiServer(ThreadingHTTPServer):
    """``LocalApiServer((host, port), handler)``; ``serve_forever()``, ``shutdown()``; ``url``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Handler, *,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self.log = log or (lambda line: None)
        self.last_status = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"

    def invoke(self, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            try:
                response = self.handler(event, None)
            except Exception as exc:  # API Gateway answers 500 when the integration fails
                self.log(f"handler error: {type(exc).__name__}: {exc}")
                response = {"statusCode": 500, "headers": {"Content-Type": "application/json"},
                            "body": json.dumps({"message": "Internal Server Error"})}
            self.last_status = int(response.get("statusCode", 200))
        return self.last_status, response_headers(response), response_body(response)


def response_headers(response: Mapping[str, Any]) -> dict[str, str]:
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    headers.setdefault("Content-Type", "application/json")
    return headers


def response_body(response: Mapping[str, Any]) -> bytes:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        import base64

        return base64.b64decode(body)
    return str(body).encode("utf-8")
