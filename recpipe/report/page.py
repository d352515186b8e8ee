"""The run report as one self-contained HTML page: every plot an inline SVG (matplotlib, Agg), no
script, no external file, readable offline.

Plots (each a ``<figure id="plot-...">``): holdout metrics over runs, NDCG@10 by user activity,
the FM training curve per epoch, item popularity against recommendations (long tail / coverage),
the score distribution of the lists, and the run's states with their durations. A plot whose data
the run lacks (no holdout, say) still gets its figure, saying what is missing and why.
"""

from __future__ import annotations

import html
import io
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from recpipe.report.sources import ReportInputs

PLOTS = ("metrics-over-runs", "ndcg-by-activity", "fm-training-curve", "long-tail", "score-distribution",
         "state-durations")
METRIC_LABELS = {"precision_at_10": "Precision@10", "recall_at_10": "Recall@10", "ndcg_at_10": "NDCG@10",
                 "map_at_10": "MAP@10", "hit_rate_at_10": "HitRate@10", "coverage_at_10": "Coverage@10"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 2px 10px; text-align: right; }
th { border-bottom: 1px solid #999; } td:first-child, th:first-child { text-align: left; }
.missing { color: #a33; }
"""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # Text stays text (small files); a fixed hash salt makes the same report byte-identical.
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "recpipe", "figure.dpi": 96,
                                "font.size": 9})
    return plt


def _svg(draw: Callable[[Any], None], *, width: float = 7.5, height: float = 3.4) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    finally:
        plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG in HTML


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, color="#a33")
    ax.set_axis_off()


def _metrics_over_runs(history: Sequence[Mapping[str, Any]], run_id: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if not history:
            _message(ax, "No run has holdout metrics yet (runs/<run_id>/metrics.json).")
            return
        xs = list(range(len(history)))
        for name, label in METRIC_LABELS.items():
            ys = [h["metrics"].get(name) for h in history]
            if any(y is not None for y in ys):
                ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
        if run_id in [h["run_id"] for h in history]:
            ax.axvline([h["run_id"] for h in history].index(run_id), color="#999", linestyle=":")
        ax.set_xticks(xs, [h["run_id"] for h in history], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("holdout metric @10")
        ax.legend(fontsize=7, ncol=3)
    return draw


def _ndcg_by_activity(evaluation: Mapping[str, Any] | None) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if not evaluation:
            _message(ax, "No evaluation report for this run (no holdout, or Evaluate did not run).")
            return
        buckets = evaluation["ndcg_by_activity"]
        labels = [f"{b['bucket']}\n({b['users']} users)" for b in buckets]
        ax.bar(range(len(buckets)), [b["ndcg_at_10"] or 0.0 for b in buckets], color="#4878a8")
        ax.set_xticks(range(len(buckets)), labels, fontsize=7)
        ax.set_xlabel("training interactions per user")
        ax.set_ylabel("NDCG@10")
    return draw


def _fm_curve(epochs: Mapping[str, Sequence[Mapping[str, Any]]], why_missing: str) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        series = [(variant, rows) for variant, rows in sorted(epochs.items()) if rows]
        if not series:
            _message(ax, f"No per-epoch FM metrics: {why_missing}")
            return
        for variant, rows in series:
            names = sorted({name for row in rows for name in row["metrics"]})
            # The train and test values of one measure (e.g. cross-entropy) make the curve; other
            # test measures (accuracy, F-beta) live on other scales and are in the final metrics.
            paired = [n for n in names if n.startswith("train:") and "test:" + n[len("train:"):] in names]
            if paired:
                names = [*paired, *("test:" + n[len("train:"):] for n in paired)]
            for name in names:
                points = [(row["epoch"], row["metrics"][name]) for row in rows if name in row["metrics"]]
                style = "-" if name.startswith("train") else "--"
                ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=".",
                        label=f"{variant}: {name}")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("metric")
        ax.legend(fontsize=7)
    return draw


def _long_tail(evaluation: Mapping[str, Any] | None) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        if not evaluation:
            _message(ax, "No evaluation report for this run: item counts unavailable.")
            return
        popularity = evaluation["items"]["popularity"]
        recommended = evaluation["items"]["recommended"]
        order = sorted(range(len(popularity)), key=lambda i: (-popularity[i], i))
        xs = list(range(1, len(order) + 1))
        ax.plot(xs, [popularity[i] for i in order], color="#4878a8", label="users who interacted (training)")
        ax.set_xlabel("items by popularity rank")
        ax.set_ylabel("users who interacted")
        ax.set_yscale("symlog")
        other = ax.twinx()
        other.scatter(xs, [recommended[i] for i in order], s=3, color="#d65f5f",
                      label="lists recommending the item")
        other.set_ylabel("lists recommending the item")
        covered = sum(1 for count in recommended if count > 0)
        ax.set_title(f"coverage: {covered} of {len(recommended)} items recommended "
                     f"({covered / max(len(recommended), 1):.1%})", fontsize=8)
        handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
        ax.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="upper right")
    return draw


def _scores(evaluation: Mapping[str, Any] | None) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        scores = (evaluation or {}).get("scores") or {}
        if not scores.get("counts"):
            _message(ax, "No scored recommendations recorded for this run.")
            return
        edges, counts = scores["edges"], scores["counts"]
        ax.bar(edges[:-1], counts, width=[b - a for a, b in itertools.pairwise(edges)],
               align="edge", color="#6aa56a")
        ax.set_xlabel("score (inner product of user and item vectors)")
        ax.set_ylabel("recommendations")
        if scores.get("unscored"):
            ax.set_title(f"{scores['unscored']} topped-up recommendations have no score", fontsize=8)
    return draw


def _states(states: Sequence[Mapping[str, Any]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        timed = [s for s in states if s.get("seconds") is not None]
        if not timed:
            _message(ax, "No state timings for this run (no execution record or history).")
            return
        colours = {"succeeded": "#6aa56a", "failed": "#d65f5f"}
        ys = list(range(len(timed)))[::-1]
        ax.barh(ys, [s["seconds"] for s in timed], color=[colours.get(s["status"], "#bbb") for s in timed])
        ax.set_yticks(ys, [s["label"] for s in timed], fontsize=7)
        ax.set_xlabel("seconds")
    return draw


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(inputs: ReportInputs) -> str:
    """The HTML page (a str) for ``inputs``."""
    evaluation = inputs.evaluation
    figures = {
        "metrics-over-runs": ("Holdout metrics over runs", _metrics_over_runs(inputs.history, inputs.run_id),
                              "The eval variant's metrics @10 on the holdout, per run (oldest first); the "
                              "dotted line marks this run."),
        "ndcg-by-activity": ("NDCG@10 by user activity", _ndcg_by_activity(evaluation),
                             "Evaluated users grouped by their number of training interactions."),
        "fm-training-curve": ("FM training curve", _fm_curve(inputs.epochs, inputs.epochs_missing),
                              "Per-epoch metrics of each FM training job (solid: train, dashed: test)."),
        "long-tail": ("Popularity against recommendations", _long_tail(evaluation),
                      "Items from most to least popular; dots: how many of the evaluated users' top-k lists "
                      "hold the item (long tail and catalogue coverage)."),
        "score-distribution": ("Score distribution", _scores(evaluation),
                               "Scores of the evaluated users' top-k lists, ranked as Publish ranks."),
        "state-durations": ("States and durations", _states(inputs.states), "Wall time of each state run."),
    }
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>recpipe run {html.escape(inputs.run_id)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>recpipe run {html.escape(inputs.run_id)}</h1>"]
    summary = [f"source: {inputs.source}"]
    current = next((h for h in inputs.history if h["run_id"] == inputs.run_id), None)
    if current:
        summary.append(f"evaluated at {current.get('evaluated_at') or '?'}; gate "
                       f"{'passed' if current.get('passed') else 'not passed'} (threshold "
                       f"{current.get('threshold')})")
    parts.append(f"<p>{html.escape('; '.join(summary))}</p>")
    if current:
        rows = [[METRIC_LABELS.get(k, k), f"{v:.4f}" if isinstance(v, float) else str(v)]
                for k, v in current["metrics"].items()]
        parts.append(_table(rows, ["metric", "value"]))
    for plot_id in PLOTS:
        title, draw, caption = figures[plot_id]
        parts.append(f"<h2>{html.escape(title)}</h2><figure id='plot-{plot_id}'>{_svg(draw)}"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        if plot_id == "state-durations" and inputs.states:
            parts.append(_table([[s["label"], s["status"],
                                  "" if s.get("seconds") is None else f"{s['seconds']:.1f}"]
                                 for s in inputs.states], ["state", "outcome", "seconds"]))
    if inputs.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='missing'>{html.escape(n)}</li>"
                                                     for n in inputs.notes) + "</ul>")
    parts.append("</body></html>")
    page = "\n".join(parts)
    return re.sub(r"[ \t]+\n", "\n", page)
