"""Where the run report finds its inputs: the run's S3 prefix (locally the bucket's mirror under
``<workdir>/s3/<bucket>/``, with ``--aws`` the deployed bucket), the execution's states (the local
record or the Step Functions history) and the FM jobs' per-epoch metrics (locally the files the
engine records under ``<workdir>/training-metrics/``, on AWS the jobs' CloudWatch metrics).

Inputs by key (``runs/<run_id>/...``): ``metrics.json`` of every run (metrics over runs, written by
Evaluate), ``report/evaluation.json`` (:mod:`recpipe.report.data`, written by Evaluate).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from recpipe.report.data import REPORT_KEY
from recpipe.runs import RUNS_PREFIX

EPOCHS_DIR = "training-metrics"  # under the local work directory: one JSON-lines file per training job
CLOUDWATCH_NAMESPACE = "/aws/sagemaker/TrainingJobs"


class Store(Protocol):
    """Read-only access to the bucket's objects."""

    def read(self, key: str) -> bytes | None: ...

    def run_ids(self) -> list[str]: ...


class DirectoryStore:
    """The local engine's bucket mirror (``<workdir>/s3/<bucket>``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def run_ids(self) -> list[str]:
        runs = self.root / RUNS_PREFIX
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


class S3Store:
    """A deployed bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    def read(self, key: str) -> bytes | None:
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return body

    def run_ids(self) -> list[str]:
        found: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=RUNS_PREFIX,
                                                                      Delimiter="/"):
            found.extend(p["Prefix"][len(RUNS_PREFIX):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(found)


@dataclass
class ReportInputs:
    """Everything the page draws; ``notes`` says what was missing and why."""

    run_id: str
    source: str
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.json of each run, oldest first
    evaluation: dict[str, Any] | None = None
    epochs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # variant -> [{epoch, metrics}]
    epochs_missing: str = ""
    states: list[dict[str, Any]] = field(default_factory=list)  # [{label, status, seconds}]
    notes: list[str] = field(default_factory=list)


def _json(store: Store, key: str) -> Any:
    raw = store.read(key)
    return None if raw is None else json.loads(raw)


def metrics_history(store: Store) -> list[dict[str, Any]]:
    """Every run's ``metrics.json`` (runs without one are skipped), in evaluation order."""
    history = []
    for run_id in store.run_ids():
        found = _json(store, f"{RUNS_PREFIX}{run_id}/metrics.json")
        if isinstance(found, Mapping) and isinstance(found.get("metrics"), Mapping):
            history.append({**found, "run_id": str(found.get("run_id") or run_id)})
    history.sort(key=lambda h: (str(h.get("evaluated_at") or ""), h["run_id"]))
    return history


def load_inputs(store: Store, run_id: str, *, source: str) -> ReportInputs:
    """The S3 part of the inputs (history and evaluation report) of ``run_id``."""
    inputs = ReportInputs(run_id=run_id, source=source, history=metrics_history(store))
    evaluation = _json(store, f"{RUNS_PREFIX}{run_id}/{REPORT_KEY}")
    if isinstance(evaluation, Mapping):
        inputs.evaluation = dict(evaluation)
    else:
        inputs.notes.append(f"{RUNS_PREFIX}{run_id}/{REPORT_KEY} is missing: the run had no evaluation "
                            "(evaluation.holdout_fraction = 0) or did not reach Evaluate.")
    if not any(h["run_id"] == run_id for h in inputs.history):
        inputs.notes.append(f"{RUNS_PREFIX}{run_id}/metrics.json is missing: no holdout metrics for this "
                            "run.")
    return inputs


def latest_run(store: Store) -> str | None:
    """The newest run id (run ids start with their UTC start time, so they sort by time)."""
    runs = store.run_ids()
    return runs[-1] if runs else None


# -- FM epochs -----------------------------------------------------------------------------------

def variant_of(job_name: str) -> str:
    """``recpipe-<run>-serve-fm[-<attempt>]`` -> ``serve``."""
    parts = job_name.split("-")
    if "fm" in parts:
        index = len(parts) - 1 - parts[::-1].index("fm")
        if index >= 1:
            return parts[index - 1]
    return job_name


def local_epochs(workdir: Path, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per variant, the FM epochs the local engine recorded for ``run_id``'s jobs (the latest attempt
    of each variant wins)."""
    directory = Path(workdir) / EPOCHS_DIR
    out: dict[str, list[dict[str, Any]]] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        name = path.stem
        if f"-{run_id}-" not in f"-{name}-" or "fm" not in name.split("-"):
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[variant_of(name)] = [{"epoch": int(r["epoch"]), "metrics": dict(r["metrics"])} for r in rows]
    return out


def record_epoch(workdir: Path, job_name: str, epoch: int, metrics: Mapping[str, float]) -> None:
    """Append one epoch's metrics of a local training job (the local stand-in for the job's
    CloudWatch metrics); epoch 1 starts the file afresh (a retried job)."""
    directory = Path(workdir) / EPOCHS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"epoch": epoch, "metrics": {k: float(v) for k, v in metrics.items()}})
    with (directory / f"{job_name}.jsonl").open("w" if epoch <= 1 else "a") as stream:
        stream.write(line + "\n")


def aws_epochs(sagemaker: Any, cloudwatch: Any, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per variant, the metrics SageMaker published to CloudWatch for ``run_id``'s FM jobs (one
    data point per epoch and metric, in time order; the epoch is the point's position)."""
    out: dict[str, list[dict[str, Any]]] = {}
    jobs = sagemaker.list_training_jobs(NameContains=run_id, MaxResults=100).get("TrainingJobSummaries", [])
    for job in sorted(jobs, key=lambda j: j.get("CreationTime") or 0):
        name = str(job["TrainingJobName"])
        if "fm" not in name.split("-"):
            continue
        host = f"{name}/algo-1"
        listed = cloudwatch.list_metrics(Namespace=CLOUDWATCH_NAMESPACE,
                                         Dimensions=[{"Name": "Host", "Value": host}]).get("Metrics", [])
        described = sagemaker.describe_training_job(TrainingJobName=name)
        start, end = described.get("TrainingStartTime"), described.get("TrainingEndTime")
        if not listed or start is None or end is None:
            continue
        queries = [{"Id": f"m{i}", "Label": m["MetricName"], "ReturnData": True,
                    "MetricStat": {"Metric": {"Namespace": CLOUDWATCH_NAMESPACE,
                                              "MetricName": m["MetricName"],
                                              "Dimensions": [{"Name": "Host", "Value": host}]},
                                   "Period": 60, "Stat": "Average"}}
                   for i, m in enumerate(listed[:100])]
        result = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=end,
                                            ScanBy="TimestampAscending")
        epochs: dict[int, dict[str, float]] = {}
        for series in result.get("MetricDataResults", []):
            for position, value in enumerate(series.get("Values", []), start=1):
                epochs.setdefault(position, {})[str(series["Label"])] = float(value)
        out[variant_of(name)] = [{"epoch": e, "metrics": epochs[e]} for e in sorted(epochs)]
    return out


def state_rows(states: Sequence[Any]) -> list[dict[str, Any]]:
    """``[{label, status, seconds}]`` from the local engine's / Step Functions' state runs."""
    return [{"label": str(getattr(s, "label", "?")), "status": str(getattr(s, "status", "?")),
             "seconds": getattr(s, "seconds", None)} for s in states]
