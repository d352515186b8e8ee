"""The read API's routes, in API Gateway's syntax: one list for the stack (``infra/api.py``), the
handler (``lambdas/api``, Powertools spells ``{x}`` as ``<x>``) and the local adapter (``recpipe serve``)."""

from __future__ import annotations

import re
from urllib.parse import unquote

RECOMMENDATIONS = "/recommendations/{user_id}"
SIMILAR = "/similar/{item_id}"
ROUTES = (RECOMMENDATIONS, SIMILAR)
METHOD = "GET"


def powertools_rule(route: str) -> str:
    """``/similar/{item_id}`` -> ``/similar/<item_id>``."""
    return re.sub(r"\{(\w+)\}", r"<\1>", route)


def match(path: str) -> tuple[str, dict[str, str]] | None:
    """The route ``path`` matches and its (decoded) path parameters, as API Gateway finds them
    (a parameter is one non-empty path segment); None when no route matches."""
    for route in ROUTES:
        pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(route)) + "$"
        found = re.match(pattern, path)
        if found:
            return route, {k: unquote(v) for k, v in found.groupdict().items()}
    return None
