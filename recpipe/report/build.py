"""Gathering a run's report inputs (locally or on AWS) and writing the page.

Locally: the bucket mirror ``<workdir>/s3/<bucket>/``, the execution record
(``<workdir>/executions/``) and the FM epochs the engine recorded (``<workdir>/training-metrics/``).
On AWS: the stack's bucket (output ``BucketName``), the execution's history and the training jobs'
CloudWatch metrics; read-only calls (s3:GetObject/ListBucket, states:Describe*/GetExecutionHistory/
ListExecutions, sagemaker:ListTrainingJobs/DescribeTrainingJob, cloudwatch:ListMetrics/GetMetricData).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recpipe.report import sources
from recpipe.report.sources import ReportInputs


def local_inputs(workdir: Path, bucket: str, run_id: str | None = None) -> ReportInputs:
    """The inputs of ``run_id`` (default: the latest recorded run) from a local work directory."""
    from recpipe.executions import records
    from recpipe.executions.exceptions import RecordNotFoundError
    from recpipe.executions.history import StateRun

    store = sources.DirectoryStore(Path(workdir) / "s3" / bucket)
    record: dict[str, Any] | None
    try:
        record = records.load(workdir, run_id)
    except RecordNotFoundError:
        record = None
    recorded = str(record["run_id"]) if record and record.get("run_id") else None
    chosen = run_id or recorded or sources.latest_run(store)
    if chosen is None:
        raise FileNotFoundError(f"No run found under {store.root} or {records.records_dir(workdir)}: run "
                                "'recpipe run' first.")
    if record is None and chosen not in store.run_ids():
        known = ", ".join(store.run_ids()[-5:]) or "none"
        raise FileNotFoundError(f"Unknown run '{chosen}': nothing under {store.root / sources.RUNS_PREFIX} "
                                f"and no execution record (latest runs: {known}).")
    inputs = sources.load_inputs(store, chosen, source=f"local work directory {workdir}")
    if record is not None and record.get("run_id") == chosen:
        inputs.states = sources.state_rows([StateRun.from_json(s) for s in record.get("states", [])])
    else:
        inputs.notes.append(f"No local execution record of run {chosen}: state durations unavailable.")
    inputs.epochs = sources.local_epochs(workdir, chosen)
    inputs.epochs_missing = (f"none recorded under {Path(workdir) / sources.EPOCHS_DIR} for this run (runs "
                             "before the engine recorded epochs, or no FM job ran).")
    return inputs


def aws_inputs(run_id: str | None, *, bucket: str, region: str | None, state_machine_arn: str | None,
               client: Any) -> ReportInputs:
    """The inputs of ``run_id`` (default: the newest run in the bucket) on AWS; ``client(service,
    region)`` makes the boto3 clients."""
    from recpipe.executions.follow import snapshot
    from recpipe.remote import aws as remote

    store = sources.S3Store(client("s3", region), bucket)
    chosen = run_id or sources.latest_run(store)
    if chosen is None or chosen not in store.run_ids():
        raise FileNotFoundError(f"Unknown run '{chosen}': nothing under s3://{bucket}/{sources.RUNS_PREFIX}"
                                f"{chosen or ''}.")
    inputs = sources.load_inputs(store, chosen, source=f"s3://{bucket} ({region or 'default region'})")
    if state_machine_arn:
        sfn = client("stepfunctions", region)
        try:
            arn = remote.find_execution(sfn, chosen, state_machine_arn)
            inputs.states = sources.state_rows(snapshot(sfn, arn).states)
        except Exception as exc:  # the page still has its plots; say why the states are missing
            inputs.notes.append(f"State durations unavailable: {exc}")
    try:
        inputs.epochs = sources.aws_epochs(client("sagemaker", region), client("cloudwatch", region), chosen)
        inputs.epochs_missing = "no FM training job of this run published metrics to CloudWatch."
    except Exception as exc:
        inputs.epochs_missing = f"could not read the training jobs' CloudWatch metrics ({exc})."
    return inputs


def write_report(inputs: ReportInputs, out: Path) -> Path:
    """Render and write the page atomically; returns ``out``."""
    from recpipe.report.page import render

    text = render(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out)
    return out
