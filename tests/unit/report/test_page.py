"""The report page: self-contained HTML whose figures are inline SVG plots (parsed, not grepped)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from typer.testing import CliRunner

from recpipe.executions import records
from recpipe.report import data, page, sources
from recpipe.report.sources import ReportInputs

EXPECTED_PLOTS = {"metrics-over-runs", "ndcg-by-activity", "fm-training-curve", "long-tail",
                  "score-distribution"}


class Figures(HTMLParser):
    """Collects each <figure id=...>: whether it holds an <svg> and how many drawn paths/texts."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, int]] = {}
        self.current: str | None = None
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "figure":
            self.current = str(values.get("id"))
            self.figures[self.current] = {"svg": 0, "marks": 0}
        elif self.current and tag == "svg":
            self.figures[self.current]["svg"] += 1
        elif self.current and tag in ("path", "use", "rect", "text"):
            self.figures[self.current]["marks"] += 1
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = values.get(name) or ""
            if value and not value.startswith("#"):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.current = None


def _parse(text: str) -> Figures:
    parser = Figures()
    parser.feed(text)
    return parser


def _evaluation(run_id: str) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    recommended = np.array([rng.permutation(40)[:10] for _ in range(30)])
    scores = np.sort(rng.normal(size=(30, 10)), axis=1)[:, ::-1]
    relevant = sp.random(30, 40, density=0.05, format="csr", random_state=2)
    seen = sp.random(30, 40, density=0.3, format="csr", random_state=3)
    return data.evaluation_report(recommended, scores, relevant, seen, run_id=run_id)


def _inputs() -> ReportInputs:
    history = [{"run_id": f"2026120{d}T000000-x", "evaluated_at": f"2026-12-0{d}T00:00:00+00:00",
                "metrics": {"ndcg_at_10": 0.1 * d, "precision_at_10": 0.05 * d, "coverage_at_10": 0.3},
                "threshold": 0.05, "passed": True} for d in (1, 2, 3)]
    return ReportInputs(
        run_id=history[-1]["run_id"], source="test", history=history, evaluation=_evaluation("r"),
        epochs={"eval": [{"epoch": e, "metrics": {"train:binary_classification_accuracy": 0.6 + e / 20,
                                                  "test:binary_classification_accuracy": 0.55 + e / 25}}
                         for e in (1, 2, 3)]},
        states=[{"label": "Prepare", "status": "succeeded", "seconds": 0.4},
                {"label": "Train FM [eval]", "status": "succeeded", "seconds": 12.5}])


def test_the_page_holds_the_five_plots_as_inline_svg_and_nothing_external() -> None:
    parsed = _parse(page.render(_inputs()))
    found = {k.removeprefix("plot-"): v for k, v in parsed.figures.items()}
    assert set(found) >= EXPECTED_PLOTS
    for plot_id in EXPECTED_PLOTS | {"state-durations"}:
        assert found[plot_id]["svg"] == 1, plot_id
        assert found[plot_id]["marks"] > 10, (plot_id, found[plot_id])  # axes, ticks, lines: a real plot
    assert parsed.external == [] and parsed.scripts == 0


def test_missing_data_still_gives_each_figure_with_a_reason() -> None:
    text = page.render(ReportInputs(run_id="r0", source="test", epochs_missing="no FM job ran."))
    parsed = _parse(text)
    assert set(page.PLOTS) == {k.removeprefix("plot-") for k in parsed.figures}
    assert "No per-epoch FM metrics: no FM job ran." in text


def _local_workdir(tmp_path: Path, run_id: str) -> Path:
    workdir = tmp_path / "wd"
    run_dir = workdir / "s3" / "recpipe-local" / "runs" / run_id
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(
        {"run_id": run_id, "evaluated_at": "2026-12-04T00:00:00+00:00", "metrics": {"ndcg_at_10": 0.2},
         "threshold": 0.0, "passed": True}))
    (run_dir / data.REPORT_KEY).write_text(json.dumps(_evaluation(run_id)))
    for epoch in (1, 2):
        sources.record_epoch(workdir, f"recpipe-{run_id}-serve-fm-1", epoch, {"train:rmse": 1.0 / epoch})
    records.save(workdir, {"execution_name": "e1", "run_id": run_id, "status": "SUCCEEDED",
                           "started": "2026-12-04T00:00:00", "states": []})
    return workdir


def test_recpipe_report_writes_the_page_of_a_local_run(tmp_path: Path) -> None:
    from recpipe.cli import app

    run_id = "20261204T000000-abc"
    workdir = _local_workdir(tmp_path, run_id)
    assert sources.local_epochs(workdir, run_id) == {
        "serve": [{"epoch": 1, "metrics": {"train:rmse": 1.0}}, {"epoch": 2, "metrics": {"train:rmse": 0.5}}]}
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(app, ["report", "--workdir", str(workdir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert run_id in result.output
    parsed = _parse(out.read_text())
    assert all(parsed.figures[f"plot-{p}"]["svg"] == 1 for p in EXPECTED_PLOTS)
    assert "serve: train:rmse" in out.read_text()
    result = CliRunner().invoke(app, ["report", "nope", "--workdir", str(workdir), "--out", str(out)])
    assert result.exit_code == 2 and "Unknown run 'nope'" in result.output
