"""How the commands show things: the live run view, a run's outcome, a status table, scores, times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from recpipe.cli.core import console
from recpipe.executions.history import summarise_cause
from recpipe.executions.status import FAILED, SUCCEEDED

_ICONS = {"running": "[yellow]…[/]", "succeeded": "[green]✓[/]", "failed": "[red]✗[/]",
          "aborted": "[dim]-[/]"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def iso_epoch(value: Any) -> str:
    if value is None:
        return ""
    return dt.datetime.fromtimestamp(float(value), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def score(value: Any, digits: int) -> str:
    """A k-NN score, or 'popular' for an item topped up from popularity (stored with a null score)."""
    return "popular" if value is None else f"{float(value):.{digits}f}"


class RunDisplay:
    """Live view of an execution: one line per state run, one progress bar per FM training job."""

    def __init__(self, out: Console) -> None:
        self.console = out
        self.states = Progress(SpinnerColumn(finished_text=" "), TextColumn("{task.description}"),
                               console=out)
        self.epochs = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[metric]}"), console=out)
        self._state_tasks: dict[tuple[Any, ...], TaskID] = {}
        self._epoch_tasks: dict[str, TaskID] = {}
        self.live = Live(Group(self.states, self.epochs), console=out, refresh_per_second=8,
                         transient=False)

    def __enter__(self) -> RunDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, outcome: Any) -> None:
        for run in outcome.states:
            key = (run.path, run.name, run.entered_id)
            line = f"{_ICONS.get(run.status, run.status)} {escape(f'{run.label:<34}')} {run.status:<9}"
            if run.seconds is not None:
                line += f" {duration(run.seconds):>8}"
            if run.attempts > 1:
                line += f"  ({run.attempts} attempts)"
            if run.status == "failed":
                line += f"  [red]{escape(run.error or '')}[/]" + ("  (caught)" if run.caught else "")
            task = self._state_tasks.get(key)
            if task is None:
                task = self.states.add_task(line, total=1)
                self._state_tasks[key] = task
            done = run.ended is not None
            self.states.update(task, description=line, completed=1 if done else 0)

    @staticmethod
    def job_label(job_name: str) -> str:
        """``recpipe-<run>-serve-fm-<retry>-<redrive>`` -> ``FM epochs [serve]``."""
        parts = job_name.split("-")
        while parts and parts[-1].isdigit():  # the per-attempt suffix (workflows.definition)
            parts.pop()
        if len(parts) >= 3 and parts[-1] == "fm":
            return f"FM epochs [{parts[-2]}]"
        return f"{job_name} epochs"

    def epoch(self, job_name: str, epoch: int, total: int | None, metrics: Mapping[str, float]) -> None:
        chosen = sorted(metrics.items(), key=lambda kv: (not kv[0].startswith("test:"), kv[0]))[:1]
        metric = "  ".join(f"{k.replace('binary_classification_', '')}={v:.4f}" for k, v in chosen)
        task = self._epoch_tasks.get(job_name)
        if task is None:
            task = self.epochs.add_task(escape(self.job_label(job_name)), total=total, metric=metric)
            self._epoch_tasks[job_name] = task
        self.epochs.update(task, completed=epoch, total=total, metric=metric)


def _metrics_of(outcome: Any) -> dict[str, float] | None:
    """NDCG and friends from the Evaluate state's output (``$.evaluation.metrics``), if the run had one."""
    for run in reversed(outcome.states):
        if run.name == "Evaluate" and run.status == "succeeded" and isinstance(run.output, Mapping):
            evaluation = run.output.get("evaluation")
            found = evaluation.get("metrics") if isinstance(evaluation, Mapping) else None
            if isinstance(found, Mapping):
                return {str(k): v for k, v in found.items() if isinstance(v, int | float)}
    return None


def print_outcome(outcome: Any, run_id: str | None, started: float) -> None:
    elapsed = dt.datetime.now().timestamp() - started
    if outcome.status == SUCCEEDED:
        console.print(f"\n[green bold]Run {run_id} succeeded[/] in {duration(elapsed)}.")
    else:
        failed = outcome.failed_state
        where = f" in state '{escape(failed.label)}'" if failed else ""
        console.print(f"\n[red bold]Run {run_id or '?'} {outcome.status.lower()}{where}[/] "
                      f"after {duration(elapsed)}.")
        if failed is not None and failed.error:
            console.print(f"  state error: {escape(failed.error)}")
        console.print(f"  error: {escape(str(outcome.error))}")
        console.print(f"  cause: {escape(summarise_cause(outcome.cause))}")
    metrics = _metrics_of(outcome)
    if metrics:
        table = Table(title="Holdout metrics (eval variant)", show_header=True)
        short = {"precision_at_10": "P@10", "recall_at_10": "R@10", "ndcg_at_10": "NDCG@10",
                 "map_at_10": "MAP@10", "hit_rate_at_10": "HR@10", "coverage_at_10": "cov@10",
                 "users_evaluated": "users"}
        for name in metrics:
            table.add_column(short.get(name, name.replace("_at_", "@")), justify="right")
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in metrics.values()])
        console.print(table)


def print_samples(ddb: Any, table: str, run_id: str | None, n: int = 3) -> None:
    """A few users' recommendations of the active version (after a local run)."""
    from recpipe.results import read

    pointer = read.active_pointer(ddb, table)
    if not pointer:
        console.print("No version is published yet.")
        return
    active = str(pointer.get("run_id"))
    if run_id and active != run_id:
        console.print(f"The active version is still {active} (this run did not publish).")
    rows = read.sample_users(ddb, table, active, n)
    for row in rows:
        items = ", ".join(f"{i['item_id']} ({score(i['score'], 3)})" for i in row["items"][:10])
        console.print(f"  user {row['user_id']}: {items}")


def print_status(*, run_id: Any, execution_name: Any, backend: str, status: Any, started: Any,
                 stopped: Any, error: Any, cause: Any, states: list[Any]) -> None:
    """The header and per-state table of ``recpipe status`` (local records and AWS executions alike)."""
    colour = {SUCCEEDED: "green", FAILED: "red"}.get(str(status), "yellow")
    console.print(f"Run [bold]{escape(str(run_id))}[/] (execution {escape(str(execution_name))}, {backend}): "
                  f"[{colour}]{status}[/]")
    console.print(f"  started {started}  stopped {stopped}")
    if error:
        console.print(f"  error: {escape(str(error))}\n"
                      f"  cause: {escape(summarise_cause(cause))}")
    out = Table(show_header=True)
    out.add_column("state", no_wrap=True, min_width=24)
    out.add_column("outcome")
    out.add_column("started", no_wrap=True)
    out.add_column("duration", justify="right", no_wrap=True)
    out.add_column("error", overflow="fold")
    for run_ in states:
        outcome = run_.status + (" (caught)" if run_.caught else "")
        if run_.attempts > 1:
            outcome += f", {run_.attempts} attempts"
        style = {"succeeded": "green", "failed": "red"}.get(run_.status, "")
        out.add_row(Text(run_.label), Text(outcome, style=style),
                    run_.started.strftime("%H:%M:%S"), duration(run_.seconds), Text(run_.error or ""))
    console.print(out)
