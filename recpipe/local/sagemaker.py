"""Local SageMaker: processing, training, model and batch-transform jobs that follow the service's
container contracts (docs/CONTRACTS.md), for the ``sagemaker`` Task states of the state machine.

Each job gets a fresh temporary directory standing in for ``/opt/ml`` (passed to the job as the
environment variable ``RECPIPE_OPT_ML``); inputs are downloaded from (moto) S3 into it exactly where
SageMaker would put them, the job runs, and its outputs are uploaded where SageMaker would upload
them. Results have the shape of the service's responses: ``.sync`` integrations return the
``Describe*`` response, plain ones the ``Create*`` response.

Failures are reported as Step Functions reports them:

- a request SageMaker would reject (missing field, bad or duplicate job name, unknown model) raises
  ``SageMaker.AmazonSageMakerException`` with the service's message in the cause;
- a ``.sync`` job that ends ``Failed`` raises ``States.TaskFailed`` whose cause is the job's
  ``Describe*`` response as JSON (``TrainingJobStatus: Failed``, ``FailureReason``, ...).

Algorithms are chosen by image URI: an image whose repository name contains
``factorization-machines`` runs :func:`recpipe.algorithms.fm.run_training_job`, one containing
``knn`` runs :func:`recpipe.algorithms.knn.run_training_job` (and ``run_transform`` for batch
transform). Processing jobs run the request's ``ContainerEntrypoint`` as a subprocess with this
interpreter, ``/opt/ml`` paths remapped to the job's directory.

Cores: on SageMaker every training job has its instance to itself; here the jobs a Map state starts
together share this machine's cores. A :class:`CoreShare` counts the training jobs running and
gives each an equal share (at least one thread); a stand-in whose ``run_training_job`` takes
``n_jobs`` gets the share as a callable, which the FM stand-in asks before every epoch (so a job
left alone takes the freed cores back). Oversubscribed Hogwild threads (two jobs each on every
core) only contend for the cores and the shared model rows.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall
from recpipe.local.s3store import list_keys, parse_s3_uri

OPT_ML_ENV = "RECPIPE_OPT_ML"
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_MAX_REASON = 1024
# S3 is moto in this process: transfer threads only add overhead. Downloads: one request (a 64 MB
# shard in ~0.15-0.2 s instead of ~0.35-0.4 s). Uploads keep 8 MB parts: moto decodes a single
# aws-chunked PUT body in time superlinear in its size (1.2-2.5 s for 64 MB against ~0.35-0.45 s).
_DOWNLOAD = TransferConfig(use_threads=False, multipart_threshold=1 << 40)
_UPLOAD = TransferConfig(use_threads=False)


@dataclass(frozen=True)
class JobProgress:
    """A progress report from a running job (FM epochs)."""

    job_name: str
    kind: str              # "training"
    epoch: int             # 1-based, the epoch just finished
    total: int | None      # epochs planned, when known
    metrics: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[JobProgress], None]


class CoreShare:
    """This machine's cores shared equally among the training jobs running at once.

    ``with share.job(): ...`` counts a job as running; :meth:`threads` is then
    ``max(1, cores // running)``. ``cores`` defaults to the cores this process may run on.
    """

    def __init__(self, cores: int | None = None) -> None:
        self.cores = max(1, cores if cores is not None else _available_cores())
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


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _reject(message: str, code: str = "ValidationException") -> TaskFailure:
    """The error Step Functions reports when SageMaker rejects a request."""
    details = "; ".join(["Service: AmazonSageMaker", "Status Code: 400", f"Error Code: {code}",
                         f"Request ID: {uuid.uuid4()}", "Proxy: null"])
    return TaskFailure("SageMaker.AmazonSageMakerException", f"{message} ({details})")


def _require(params: Mapping[str, Any], *path: str) -> Any:
    node: Any = params
    for i, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node or node[part] in (None, ""):
            dotted = ".".join(path[: i + 1])
            raise _reject(f"1 validation error detected: Value null at '{dotted}' failed to satisfy "
                          "constraint: Member must not be null")
        node = node[part]
    return node


def _check_job_name(name: Any, field_name: str) -> str:
    if not isinstance(name, str) or not _JOB_NAME.match(name):
        raise _reject(f"1 validation error detected: Value '{name}' at '{field_name}' failed to satisfy "
                      "constraint: Member must satisfy regular expression pattern: "
                      "^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$ (at most 63 characters)")
    return name


def _truncate(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _read_first(*paths: Path) -> str | None:
    for path in paths:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
    return None


def _as_reason(text: str) -> str:
    prefixed = text.startswith(("ClientError", "AlgorithmError"))
    return _truncate(text if prefixed else f"AlgorithmError: {text}")


class LocalSageMaker:
    """Handler of ``sagemaker`` Task states (see module docstring).

    ``s3`` is a boto3 S3 client (moto's); ``job_root`` receives one directory per job (kept when
    ``keep_job_dirs``, for inspection); ``on_progress`` receives FM epoch reports; ``cores`` is
    the number of cores the training jobs running at once share (default: this machine's).
    """

    def __init__(self, s3: Any, *, job_root: Path | None = None, keep_job_dirs: bool = False,
                 on_progress: ProgressCallback | None = None, region: str = "us-east-1",
                 account: str = "123456789012", cores: int | None = None) -> None:
        self.s3 = s3
        self.job_root = Path(job_root) if job_root else None
        self.keep_job_dirs = keep_job_dirs
        self.on_progress = on_progress
        self.region = region
        self.account = account
        self.models: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}   # name -> Describe* response
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.core_share = CoreShare(cores)

    # -- dispatch ----------------------------------------------------------------------------------

    def __call__(self, call: TaskCall) -> dict[str, Any]:
        actions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "createProcessingJob": self.create_processing_job,
            "createTrainingJob": self.create_training_job,
            "createModel": self.create_model,
            "createTransformJob": self.create_transform_job,
        }
        action = actions.get(call.action)
        if action is None:
            raise _reject(f"The local engine does not implement sagemaker:{call.action}.", "UnknownOperation")
        describe = action(dict(call.parameters))
        if call.action == "createModel":
            return describe
        status_key = {"createProcessingJob": "ProcessingJobStatus", "createTrainingJob": "TrainingJobStatus",
                      "createTransformJob": "TransformJobStatus"}[call.action]
        arn_key = status_key.replace("Status", "Arn")
        if not call.sync:
            return {arn_key: describe[arn_key]}
        if describe[status_key] != "Completed":
            raise TaskFailure("States.TaskFailed", json.dumps(describe))
        return describe

    def terminate(self) -> None:
        """Kill running processing subprocesses (on Ctrl-C)."""
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                process.kill()

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def _register(self, name: str, field_name: str) -> None:
        _check_job_name(name, field_name)
        with self._lock:
            if name in self.jobs:
                raise _reject("Job name must be unique within an AWS account and region, and a job with "
                              f"this name already exists ({self._arn('job', name)})", "ResourceInUse")
            self.jobs[name] = {}

    def _job_dir(self, name: str) -> Path:
        if self.job_root is not None:
            path = self.job_root / name
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            return path
        return Path(tempfile.mkdtemp(prefix=f"recpipe-{name}-"))

    def _cleanup(self, path: Path) -> None:
        if not self.keep_job_dirs:
            shutil.rmtree(path, ignore_errors=True)

    # -- S3 helpers --------------------------------------------------------------------------------

    def _download_prefix(self, uri: str, dest: Path, *, data_type: str = "S3Prefix") -> list[Path]:
        """Copy objects as SageMaker does: ``S3Prefix`` keeps paths relative to the prefix (an exact
        key match lands as its base name); ``ManifestFile`` reads a manifest of keys."""
        bucket, prefix = parse_s3_uri(uri)
        dest.mkdir(parents=True, exist_ok=True)
        keys: list[tuple[str, str]] = []
        if data_type == "ManifestFile":
            body = self.s3.get_object(Bucket=bucket, Key=prefix)["Body"].read().decode()
            manifest = json.loads(body)
            base = manifest[0]["prefix"]
            b_bucket, b_prefix = parse_s3_uri(base)
            bucket = b_bucket
            keys = [(b_prefix + rel, rel) for rel in manifest[1:]]
        else:
            for obj in list_keys(self.s3, bucket, prefix):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                if key == prefix:
                    rel = key.rsplit("/", 1)[-1]
                elif prefix == "" or prefix.endswith("/"):
                    rel = key[len(prefix):]
                elif key[len(prefix)] == "/":
                    rel = key[len(prefix) + 1:]
                else:
                    rel = key[prefix.rfind("/") + 1:]
                keys.append((key, rel))
        if not keys:
            raise _JobError(f"ClientError: No S3 objects found under S3 URL \"{uri}\" given in input data "
                            "source. Please ensure that the bucket exists in the region (us-east-1), "
                            "that objects exist under that S3 prefix, and that the role has s3:ListBucket.")
        paths = []
        for key, rel in keys:
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(path), Config=_DOWNLOAD)
            paths.append(path)
        return paths

    def _upload_dir(self, src: Path, uri: str) -> int:
        bucket, prefix = parse_s3_uri(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        count = 0
        for path in sorted(src.rglob("*")):
            if path.is_file():
                self.s3.upload_file(str(path), bucket, prefix + path.relative_to(src).as_posix(),
                                    Config=_UPLOAD)
                count += 1
        return count

    # -- processing --------------------------------------------------------------------------------

    def create_processing_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(p, "ProcessingJobName"))
        app = _require(p, "AppSpecification")
        _require(p, "AppSpecification", "ImageUri")
        _require(p, "ProcessingResources")
        _require(p, "RoleArn")
        self._register(name, "processingJobName")
        started = _now_ms()
        describe: dict[str, Any] = {
            "ProcessingJobName": name,
            "ProcessingJobArn": self._arn("processing-job", name),
            "ProcessingInputs": p.get("ProcessingInputs", []),
            "ProcessingOutputConfig": p.get("ProcessingOutputConfig", {}),
            "ProcessingResources": p["ProcessingResources"],
            "StoppingCondition": p.get("StoppingCondition", {}),
            "AppSpecification": app,
            "Environment": p.get("Environment", {}),
            "RoleArn": p["RoleArn"],
            "CreationTime": started,
            "ProcessingStartTime": started,
        }
        root = self._job_dir(name)
        opt_ml = root / "opt_ml"
        try:
            self._run_processing(p, opt_ml, root)
            describe.update(ProcessingJobStatus="Completed")
            message = _read_first(opt_ml / "output" / "message")
            if message:
                describe["ExitMessage"] = _truncate(message)
        except _JobError as exc:
            describe.update(ProcessingJobStatus="Failed", FailureReason=_truncate(exc.reason))
            message = _read_first(opt_ml / "output" / "message")
            if message:
                describe["ExitMessage"] = _truncate(message)
        finally:
            self._cleanup(root)
        describe["ProcessingEndTime"] = describe["LastModifiedTime"] = _now_ms()
        self.jobs[name] = describe
        return describe

    def _remap(self, value: str, opt_ml: Path) -> str:
        return str(opt_ml) + value[len("/opt/ml"):] if value.startswith("/opt/ml") else value

    def _run_processing(self, p: dict[str, Any], opt_ml: Path, root: Path) -> None:
        for item in p.get("ProcessingInputs", []):
            s3_input = item.get("S3Input")
            if not s3_input:
                raise _JobError(f"ClientError: input '{item.get('InputName')}' has no S3Input (the only kind "
                                "the local engine supports).")
            local = Path(self._remap(s3_input["LocalPath"], opt_ml))
            try:
                self._download_prefix(s3_input["S3Uri"], local,
                                      data_type=s3_input.get("S3DataType", "S3Prefix"))
            except _JobError:
                raise
            except Exception as exc:
                raise _JobError(f"ClientError: could not download {s3_input['S3Uri']}: {exc}") from exc
        outputs = p.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for item in outputs:
            Path(self._remap(item["S3Output"]["LocalPath"], opt_ml)).mkdir(parents=True, exist_ok=True)
        (opt_ml / "output").mkdir(parents=True, exist_ok=True)
        (opt_ml / "config").mkdir(parents=True, exist_ok=True)
        (opt_ml / "config" / "processingjobconfig.json").write_text(json.dumps(p))

        app = p["AppSpecification"]
        entrypoint = list(app.get("ContainerEntrypoint") or [])
        if not entrypoint:
            raise _JobError("ClientError: the local engine needs AppSpecification.ContainerEntrypoint (it "
                            "has no image to take a default entrypoint from).")
        if re.fullmatch(r"python[0-9.]*", Path(entrypoint[0]).name):
            entrypoint[0] = sys.executable
        cmd = [self._remap(str(a), opt_ml) for a in entrypoint + list(app.get("ContainerArguments") or [])]
        script = next((Path(a) for a in cmd[1:] if a.endswith(".py")), None)
        cwd = script.parent if script is not None and script.parent.is_dir() else opt_ml
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (p.get("Environment") or {}).items()})
        env[OPT_ML_ENV] = str(opt_ml)
        env["PYTHONUNBUFFERED"] = "1"
        log_path = root / "stdout.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
            with self._lock:
                self._processes.add(process)
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._processes.discard(process)
        if code != 0:
            reason = _read_first(opt_ml / "output" / "message", opt_ml / "output" / "failure")
            if reason is None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                reason = f"exit code {code}: " + " | ".join(tail)
            raise _JobError(_as_reason(reason))
        for item in outputs:
            s3_output = item["S3Output"]
            self._upload_dir(Path(self._remap(s3_output["LocalPath"], opt_ml)), s3_output["S3Uri"])

    # -- training ----------------------------------------------------------------------------------

    def create_training_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(p, "TrainingJobName"))
        image = str(_require(p, "AlgorithmSpecification", "TrainingImage"))
        output_path = str(_require(p, "OutputDataConfig", "S3OutputPath"))
        _require(p, "ResourceConfig")
        _require(p, "RoleArn")
        _require(p, "StoppingCondition")
        hyperparameters = p.get("HyperParameters") or {}
        bad = [k for k, v in hyperparameters.items() if not isinstance(v, str)]
        if bad:
            raise _reject("Hyperparameter values must be strings; got non-strings for "
                          f"{', '.join(sorted(bad))}")
        self._register(name, "trainingJobName")
        started = _now_ms()
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
                                                  "Timestamp": _now_ms()} for m in metrics])
        except _JobError as exc:
            describe.update(TrainingJobStatus="Failed", SecondaryStatus="Failed",
                            FailureReason=_truncate(exc.reason))
        finally:
            self._cleanup(root)
        ended = _now_ms()
        seconds = max(1, round((ended - started) / 1000))
        describe.update(TrainingEndTime=ended, LastModifiedTime=ended, TrainingTimeInSeconds=seconds,
                        BillableTimeInSeconds=seconds)
        self.jobs[name] = describe
        return describe

    @staticmethod
    def algorithm_module(image: str) -> str:
        repository = image.rsplit("/", 1)[-1].split(":", 1)[0].lower()
        if "factorization-machines" in repository:
            return "recpipe.algorithms.fm"
        if "knn" in repository:
            return "recpipe.algorithms.knn"
        raise _JobError(f"ClientError: the local engine has no stand-in for the training image '{image}' "
                        "(known: factorization-machines, knn).")

    def _run_training(self, name: str, image: str, p: dict[str, Any], hyperparameters: dict[str, str],
                      opt_ml: Path, threads: Callable[[], int] | None = None) -> list[dict[str, Any]]:
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
            except _JobError:
                raise
            except Exception as exc:
                raise _JobError(f"ClientError: could not download channel '{channel_name}' "
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
            raise _JobError(f"AlgorithmError: the local stand-in {module_name} cannot be imported: "
                            f"{exc}") from exc

        total: int | None
        try:
            total = int(hyperparameters.get("epochs", "")) if "epochs" in hyperparameters else None
        except ValueError:
            total = None
        accepted = inspect.signature(module.run_training_job).parameters
        options: dict[str, Any] = {}
        if "on_epoch" in accepted:
            options["on_epoch"] = self._epoch_callback(name, total)
        if "n_jobs" in accepted and threads is not None:
            options["n_jobs"] = threads
        try:
            metrics = module.run_training_job(opt_ml, **options)
        except (Exception, SystemExit) as exc:  # a stand-in may sys.exit(1) as a container would
            failure = _read_first(opt_ml / "output" / "failure")
            if failure is None:
                failure = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc(limit=3)
                failure_detail = tb.strip().splitlines()[-1] if tb else ""
                if failure_detail and failure_detail not in failure:
                    failure += f" ({failure_detail})"
            raise _JobError(_as_reason(failure)) from exc
        failure = _read_first(opt_ml / "output" / "failure")
        if failure is not None:
            raise _JobError(_as_reason(failure))
        if not any((opt_ml / "model").iterdir()):
            raise _JobError("AlgorithmError: the algorithm wrote no model files to /opt/ml/model.")
        return list(metrics or [])

    def _epoch_callback(self, name: str, total: int | None) -> Callable[..., None]:
        def on_epoch(*args: Any, **kwargs: Any) -> None:
            if self.on_progress is None:
                return
            epoch = kwargs.get("epoch", args[0] if args else 0)
            metrics = kwargs.get("metrics")
            if metrics is None:
                metrics = next((a for a in args[1:] if isinstance(a, Mapping | list)), {})
            if isinstance(metrics, list):  # [{"MetricName", "Value"}]
                metrics = {m["MetricName"]: m["Value"] for m in metrics if isinstance(m, Mapping)}
            epochs = kwargs.get("epochs", kwargs.get("total", total))
            with contextlib.suppress(Exception):  # progress display must never fail the job
                self.on_progress(JobProgress(job_name=name, kind="training", epoch=int(epoch),
                                             total=int(epochs) if epochs is not None else None,
                                             metrics={str(k): float(v) for k, v in dict(metrics).items()
                                                      if isinstance(v, int | float)}))
        return on_epoch

    def _upload_model(self, model_dir: Path, uri: str) -> None:
        bucket, key = parse_s3_uri(uri)
        tar_path = model_dir.parent / "model.tar.gz"
        with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
            for path in sorted(model_dir.iterdir()):
                tar.add(path, arcname=path.name)
        self.s3.upload_file(str(tar_path), bucket, key, Config=_UPLOAD)

    # -- models and batch transform ----------------------------------------------------------------

    def create_model(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(p, "ModelName"))
        _check_job_name(name, "modelName")
        _require(p, "ExecutionRoleArn")
        container = p.get("PrimaryContainer") or (p.get("Containers") or [None])[0]
        if not container or not container.get("Image"):
            raise _reject("1 validation error detected: Value null at 'primaryContainer.image' failed to "
                          "satisfy constraint: Member must not be null")
        with self._lock:
            if name in self.models:
                raise _reject(f"Cannot create already existing model \"{self._arn('model', name)}\".")
            self.models[name] = dict(container)
        return {"ModelArn": self._arn("model", name)}

    def create_transform_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(_require(p, "TransformJobName"))
        model_name = str(_require(p, "ModelName"))
        source = _require(p, "TransformInput", "DataSource", "S3DataSource")
        _require(p, "TransformInput", "DataSource", "S3DataSource", "S3Uri")
        output = _require(p, "TransformOutput")
        _require(p, "TransformOutput", "S3OutputPath")
        _require(p, "TransformResources")
        container = self.models.get(model_name)
        if container is None:
            raise _reject(f"Could not find model \"{self._arn('model', model_name)}\".")
        self._register(name, "transformJobName")
        started = _now_ms()
        describe: dict[str, Any] = {
            "TransformJobName": name,
            "TransformJobArn": self._arn("transform-job", name),
            "ModelName": model_name,
            "TransformInput": p["TransformInput"],
            "TransformOutput": output,
            "TransformResources": p["TransformResources"],
            "CreationTime": started,
            "TransformStartTime": started,
        }
        for key in ("BatchStrategy", "MaxPayloadInMB", "MaxConcurrentTransforms", "Environment",
                    "DataProcessing"):
            if key in p:
                describe[key] = p[key]
        root = self._job_dir(name)
        try:
            self._run_transform(container, source, p["TransformInput"], output, root)
            describe["TransformJobStatus"] = "Completed"
        except _JobError as exc:
            describe.update(TransformJobStatus="Failed", FailureReason=_truncate(exc.reason))
        finally:
            self._cleanup(root)
        describe["TransformEndTime"] = _now_ms()
        self.jobs[name] = describe
        return describe

    def _run_transform(self, container: dict[str, Any], source: dict[str, Any],
                       transform_input: dict[str, Any], output: dict[str, Any], root: Path) -> None:
        module_name = self.algorithm_module(str(container["Image"]))
        model_url = container.get("ModelDataUrl")
        if not model_url:
            raise _JobError("ClientError: the model has no ModelDataUrl.")
        model_dir = root / "model"
        model_dir.mkdir()
        bucket, key = parse_s3_uri(model_url)
        tar_path = root / "model.tar.gz"
        try:
            self.s3.download_file(bucket, key, str(tar_path), Config=_DOWNLOAD)
        except Exception as exc:
            raise _JobError(f"ClientError: Could not download model data from {model_url}: {exc}") from exc
        with tarfile.open(tar_path) as tar:
            tar.extractall(model_dir, filter="data")
        input_dir = root / "input"
        files = self._download_prefix(source["S3Uri"], input_dir,
                                      data_type=source.get("S3DataType", "S3Prefix"))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise _JobError(f"AlgorithmError: the local stand-in {module_name} cannot be imported: "
                            f"{exc}") from exc
        groups: dict[Path, list[Path]] = {}
        for path in files:
            groups.setdefault(path.parent.relative_to(input_dir), []).append(path)
        out_bucket, out_prefix = parse_s3_uri(str(output["S3OutputPath"]))
        if out_prefix and not out_prefix.endswith("/"):
            out_prefix += "/"
        for rel_dir, group in sorted(groups.items()):
            out_dir = root / "output" / rel_dir
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                module.run_transform(model_dir, group, out_dir,
                                     content_type=transform_input.get("ContentType", ""),
                                     accept=output.get("Accept", ""))
            except Exception as exc:
                raise _JobError(_as_reason(f"{type(exc).__name__}: {exc}")) from exc
            for path in group:
                produced = out_dir / f"{path.name}.out"
                if not produced.is_file():
                    raise _JobError(f"AlgorithmError: the transform wrote no output for {path.name}.")
                rel = (rel_dir / produced.name).as_posix()
                self.s3.upload_file(str(produced), out_bucket, out_prefix + rel, Config=_UPLOAD)


class _JobError(Exception):
    """A job ended Failed; ``reason`` becomes its FailureReason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
