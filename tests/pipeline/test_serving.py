"""What the pipeline publishes, read through the API handler (as ``recpipe serve`` and the deployed
API do), and the run's report: after one local run (the session's ``pipeline``)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from lambdas.api.handler import lambda_handler
from recpipe.cli import app
from recpipe.local.dynamodb import client
from recpipe.results import read
from recpipe.serving import Reader
from recpipe.serving.http import to_event
from tests.pipeline.conftest import OVERRIDES, PipelineRun

TOP_N = OVERRIDES["publish.top_n"]


def _get(pipeline: PipelineRun, target: str) -> tuple[int, dict[str, Any]]:
    event = to_event("GET", target, {})
    assert event is not None, target
    response = lambda_handler(event, None, reader=Reader(client(pipeline.endpoint), pipeline.table))
    return response["statusCode"], json.loads(response["body"])


def test_the_api_and_recommend_agree_item_for_item(pipeline: PipelineRun) -> None:
    ddb = client(pipeline.endpoint)
    active = read.active_pointer(ddb, pipeline.table)
    assert active is not None
    for user_id in ("1", "17", "60"):
        status, body = _get(pipeline, f"/recommendations/{user_id}?n={TOP_N}")
        row = read.user_recommendations(ddb, pipeline.table, user_id, str(active["run_id"]))
        assert status == 200 and row is not None
        assert body == {"user_id": user_id, "run_id": active["run_id"], "fallback": False,
                        "items": row["items"][:TOP_N]}


def test_unknown_users_get_a_fallback_that_recent_items_change(pipeline: PipelineRun) -> None:
    status, popular = _get(pipeline, f"/recommendations/never-seen?n={TOP_N}")
    assert status == 200 and popular["fallback"] is True and popular["fallback_source"] == "popular"
    assert len(popular["items"]) == TOP_N
    status, recent = _get(pipeline, f"/recommendations/never-seen?n={TOP_N}&recent=i3,nope")
    assert status == 200 and recent["fallback_source"] == "recent" and recent["unknown_items"] == ["nope"]
    assert recent["items"] != popular["items"] and "i3" not in [e["item_id"] for e in recent["items"]]
    status, similar = _get(pipeline, "/similar/i3?n=5")
    assert status == 200 and len(similar["items"]) == 5
    assert "i3" not in [e["item_id"] for e in similar["items"]]


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svg_in: list[str] = []
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "figure":
            self.current = dict(attrs).get("id")
        elif tag == "svg" and self.current:
            self.svg_in.append(self.current)


def test_the_report_of_the_run_has_its_plots_with_data(pipeline: PipelineRun, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(pipeline.run_id), "--workdir", str(pipeline.workdir),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output  # every input was there: metrics, evaluation data, epochs
    parser = _Figures()
    text = out.read_text()
    parser.feed(text)
    assert {"plot-metrics-over-runs", "plot-ndcg-by-activity", "plot-fm-training-curve", "plot-long-tail",
            "plot-score-distribution"} <= set(parser.svg_in)
    assert "No per-epoch FM metrics" not in text and "No evaluation report" not in text
