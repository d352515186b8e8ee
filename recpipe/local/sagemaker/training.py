"""Local SageMaker training jobs: the channels downloaded into ``/opt/ml/input/data/<channel>``, the
config files written, the algorithm's stand-in run in-process, ``/opt/ml/model`` uploaded as
``model.tar.gz``; FM epochs reported as :class:`JobProgress`.

Cores: on SageMaker every training job has its instance to itself; here the jobs a Map state starts
together share this machine's cores. A :class:`CoreShare` counts the training jobs running and
gives each an equal share (at least one thread), as a callable that the FM stand-in asks before
every epoch (so a job left alone takes the freed cores back). Oversubscribed Hogwild threads (two
jobs each on every core) only contend for the cores and the shared model rows.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import tarfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recpipe.algorithms.container import OnEpoch, available_cores
from recpipe.local.s3store import parse_s3_uri
from recpipe.local.sagemaker.jobs import (
    UPLOAD,
    JobError,
    JobHost,
    as_reason,
    now_ms,
    read_first,
    reject,
    require,
    truncate,
)


@dataclass(frozen=True)
class JobProgress:
    """A progress report from a running job (FM epochs)."""

    job_name: str
    kind: str              # "training"
    epoch: int             # 1-based, the epoch just finished
    total: int             # epochs planned
    metrics: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[JobProgress], None]


class CoreShare:
    """This machine's cores shared equally among the training jobs running at once.

    ``with share.job(): ...`` counts a job as running; :meth:`threads` is then
    ``max(1, cores // running)``. ``cores`` defaults to the cores this process may run on.
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = max(1, cores if cores is not None else available_cores())
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    def threads(self) -> int:
        with self._lock:
            return max(1, self.cores // max(1, self._running))

    @contextlib.contextmanager
    def job(self) -> Iterator[Callable[[], int]]:
        with self._lock:
            self._running += 1
        try:
            yield self.threads
        finally:
            with self._lock:
                self._running -= 1


class TrainingJobs(JobHost):
    """``createTrainingJob``."""

    on_progress: ProgressCallback | None
    core_share: CoreShare

    def create_training_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(require(p, "TrainingJobName"))
        image = str(require(p, "AlgorithmSpecification", "TrainingImage"))
        output_path = str(require(p, "OutputDataConfig", "S3OutputPath"))
        require(p, "ResourceConfig")
        require(p, "RoleArn")
        require(p, "StoppingCondition")
        hyperparameters = p.get("HyperParameters") or {}
        bad = [k for k, v in hyperparameters.items() if not isinstance(v, str)]
        if bad:
            raise reject("Hyperparameter values must be strings; got non-strings for "
                          f"{', '.join(sorted(bad))}")
        self._register(name, "trainingJobName")
        started = now_ms()
        describe: dict[str, Any] = {
            "TrainingJobName": name,
            "TrainingJobArn": self._arn("training-job", name),
            "AlgorithmSpecification": p["AlgorithmSpecification"],
            "HyperParameters": hyperparameters,
            "InputDataConfig": p.get("InputDataConfig", []),
            "OutputDataConfig": p["OutputDataConfig"],
            "ResourceConfig": p["ResourceConfig"],
            "StoppingCondition": p["StoppingCondition"],
            "RoleArn": p["RoleArn"],
            "CreationTime": started,
            "TrainingStartTime": started,
            "SecondaryStatus": "Completed",
        }
        root = self._job_dir(name)
        opt_ml = root / "opt_ml"
        try:
            # Counted from before the download, so that jobs started together see each other by the
            # time they choose their threads.
            with self.core_share.job() as threads:
                metrics = self._run_training(name, image, p, hyperparameters, opt_ml, threads)
            model_uri = f"{output_path.rstrip('/')}/{name}/output/model.tar.gz"
            self._upload_model(opt_ml / "model", model_uri)
            describe.update(TrainingJobStatus="Completed", ModelArtifacts={"S3ModelArtifacts": model_uri},
                            FinalMetricDataList=[{"MetricName": m["MetricName"], "Value": float(m["Value"]),
                                                  "Timestamp": now_ms()} for m in metrics])
        except JobError as exc:
            describe.update(TrainingJobStatus="Failed", SecondaryStatus="Failed",
                            FailureReason=truncate(exc.reason))
        finally:
            self._cleanup(root)
        ended = now_ms()
        seconds = max(1, round((ended - started) / 1000))
        describe.update(TrainingEndTime=ended, LastModifiedTime=ended, TrainingTimeInSeconds=seconds,
                        BillableTimeInSeconds=seconds)
        self.jobs[name] = describe
        return describe


    def _run_training(self, name: str, image: str, p: dict[str, Any], hyperparameters: dict[str, str],
                      opt_ml: Path, threads: Callable[[], int]) -> list[dict[str, Any]]:
        module_name = self.algorithm_module(image)
        config_dir = opt_ml / "input" / "config"
        config_dir.mkdir(parents=True)
        (opt_ml / "model").mkdir()
        (opt_ml / "output" / "data").mkdir(parents=True)
        channels: dict[str, Any] = {}
        for channel in p.get("InputDataConfig", []):
            channel_name = channel["ChannelName"]
            source = channel["DataSource"]["S3DataSource"]
            try:
                self._download_prefix(source["S3Uri"], opt_ml / "input" / "data" / channel_name,
                                      data_type=source.get("S3DataType", "S3Prefix"))
            except JobError:
                raise
            except Exception as exc:
                raise JobError(f"ClientError: could not download channel '{channel_name}' "
                                f"({source['S3Uri']}): {exc}") from exc
            mode = p["AlgorithmSpecification"].get("TrainingInputMode", "File")
            channels[channel_name] = {"ContentType": channel.get("ContentType", ""),
                                      "TrainingInputMode": mode,
                                      "S3DistributionType": source.get("S3DataDistributionType",
                                                                       "FullyReplicated"),
                                      "RecordWrapperType": channel.get("RecordWrapperType", "None")}
        (config_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        (config_dir / "inputdataconfig.json").write_text(json.dumps(channels))
        (config_dir / "resourceconfig.json").write_text(json.dumps(
            {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise JobError(f"AlgorithmError: the local stand-in {module_name} cannot be imported: "
                            f"{exc}") from exc

        try:
            # The stand-ins' one signature (recpipe.algorithms.container).
            metrics = module.run_training_job(opt_ml, on_epoch=self._epoch_callback(name), n_jobs=threads)
        except (Exception, SystemExit) as exc:  # a stand-in may sys.exit(1) as a container would
            failure = read_first(opt_ml / "output" / "failure")
            if failure is None:
                failure = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc(limit=3)
                failure_detail = tb.strip().splitlines()[-1] if tb else ""
                if failure_detail and failure_detail not in failure:
                    failure += f" ({failure_detail})"
            raise JobError(as_reason(failure)) from exc
        failure = read_first(opt_ml / "output" / "failure")
        if failure is not None:
            raise JobError(as_reason(failure))
        if not any((opt_ml / "model").iterdir()):
            raise JobError("AlgorithmError: the algorithm wrote no model files to /opt/ml/model.")
        return list(metrics or [])

    def _epoch_callback(self, name: str) -> OnEpoch:
        def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
            if self.on_progress is None:
                return
            with contextlib.suppress(Exception):  # progress display must never fail the job
                self.on_progress(JobProgress(job_name=name, kind="training", epoch=epoch, total=epochs,
                                             metrics=dict(metrics)))
        return on_epoch

    def _upload_model(self, model_dir: Path, uri: str) -> None:
        bucket, key = parse_s3_uri(uri)
        tar_path = model_dir.parent / "model.tar.gz"
        with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
            for path in sorted(model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        self.s3.upload_file(str(tar_path), bucket, key, Config=UPLOAD)
