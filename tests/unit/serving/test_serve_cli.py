"""``recpipe serve`` (a real subprocess) against the session's dynalite: the API and
``recpipe recommend`` agree item for item; unknown users get the fallback; ``/similar`` answers."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import urlopen

import numpy as np
import pytest
from typer.testing import CliRunner

from recpipe.local.dynamodb import client, ensure_table
from tests.unit.serving.seed import write_version

ROOT = Path(__file__).resolve().parents[3]
_tables = itertools.count()


@pytest.fixture
def served(dynalite_endpoint: str, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    table = f"serve-{os.getpid()}-{next(_tables)}"
    ensure_table(dynalite_endpoint, table)
    ddb = client(dynalite_endpoint)
    item_ids = [f"m{k}" for k in range(30)]
    vectors = np.random.default_rng(11).normal(size=(30, 5)).astype(np.float32)
    users = {str(u): [(item_ids[(u * 7 + j) % 30], round(3.0 - 0.1 * j, 3)) for j in range(12)]
             for u in range(1, 6)}
    write_version(ddb, table, "r1", top_n=12, users=users, item_ids=item_ids, vectors=vectors,
                  similar_items=8, popularity=np.arange(30))
    common = ["--workdir", str(tmp_path), "--dynamodb-endpoint", dynalite_endpoint, "--table", table]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "recpipe.cli", "serve", "--port", "0", *common],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The command prints its URL once the socket listens: read up to that line (no polling).
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if found and "Serving" in line:
                url = found.group(0)
                break
        else:
            pytest.fail(f"recpipe serve did not start: {''.join(seen)}")
        yield url, common
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(url: str) -> tuple[int, Any]:
    try:
        with urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_and_recommend_agree_item_for_item(served: tuple[str, list[str]]) -> None:
    from recpipe.cli import app

    url, common = served
    for user_id in ("1", "4"):
        result = CliRunner().invoke(app, ["recommend", user_id, "--top", "10", "--json", *common])
        assert result.exit_code == 0, result.output
        status, body = _get(f"{url}recommendations/{user_id}?n=10")
        assert status == 200 and body["fallback"] is False
        assert body["items"] == json.loads(result.output)["items"]
        assert len(body["items"]) == 10


def test_unknown_users_recent_and_similar(served: tuple[str, list[str]]) -> None:
    url, _ = served
    status, popular = _get(f"{url}recommendations/stranger?n=10")
    assert status == 200 and popular["fallback"] is True and len(popular["items"]) == 10
    assert [e["item_id"] for e in popular["items"]] == [f"m{k}" for k in range(29, 19, -1)]
    status, recent = _get(f"{url}recommendations/stranger?n=10&recent=m3,zzz")
    assert status == 200 and recent["unknown_items"] == ["zzz"] and recent["items"] != popular["items"]
    status, similar = _get(f"{url}similar/m3?n=5")
    assert status == 200 and len(similar["items"]) == 5
    assert [e["item_id"] for e in recent["items"][:5]] == [e["item_id"] for e in similar["items"]]
    assert _get(f"{url}recommendations/1?n=13")[0] == 400
