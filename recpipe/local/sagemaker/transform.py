"""Local SageMaker models and batch transform: ``createModel`` remembers the container; a transform
job downloads the model and the input, runs the algorithm stand-in's ``run_transform`` per input
directory and uploads ``<input>.out`` files where SageMaker would."""

from __future__ import annotations

import importlib
import tarfile
from pathlib import Path
from typing import Any

from recpipe.local.s3store import parse_s3_uri
from recpipe.local.sagemaker.jobs import (
    DOWNLOAD,
    UPLOAD,
    JobError,
    JobHost,
    as_reason,
    check_job_name,
    now_ms,
    reject,
    require,
    truncate,
)


class TransformJobs(JobHost):
    """``createModel`` and ``createTransformJob``."""

    models: dict[str, dict[str, Any]]

    def create_model(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(require(p, "ModelName"))
        check_job_name(name, "modelName")
        require(p, "ExecutionRoleArn")
        container = p.get("PrimaryContainer") or (p.get("Containers") or [None])[0]
        if not container or not container.get("Image"):
            raise reject("1 validation error detected: Value null at 'primaryContainer.image' failed to "
                          "satisfy constraint: Member must not be null")
        with self._lock:
            if name in self.models:
                raise reject(f"Cannot create already existing model \"{self._arn('model', name)}\".")
            self.models[name] = dict(container)
        return {"ModelArn": self._arn("model", name)}

    def create_transform_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(require(p, "TransformJobName"))
        model_name = str(require(p, "ModelName"))
        source = require(p, "TransformInput", "DataSource", "S3DataSource")
        require(p, "TransformInput", "DataSource", "S3DataSource", "S3Uri")
        output = require(p, "TransformOutput")
        require(p, "TransformOutput", "S3OutputPath")
        require(p, "TransformResources")
        container = self.models.get(model_name)
        if container is None:
            raise reject(f"Could not find model \"{self._arn('model', model_name)}\".")
        self._register(name, "transformJobName")
        started = now_ms()
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
        except JobError as exc:
            describe.update(TransformJobStatus="Failed", FailureReason=truncate(exc.reason))
        finally:
            self._cleanup(root)
        describe["TransformEndTime"] = now_ms()
        self.jobs[name] = describe
        return describe

    def _run_transform(self, container: dict[str, Any], source: dict[str, Any],
                       transform_input: dict[str, Any], output: dict[str, Any], root: Path) -> None:
        module_name = self.algorithm_module(str(container["Image"]))
        model_url = container.get("ModelDataUrl")
        if not model_url:
            raise JobError("ClientError: the model has no ModelDataUrl.")
        model_dir = root / "model"
        model_dir.mkdir()
        bucket, key = parse_s3_uri(model_url)
        tar_path = root / "model.tar.gz"
        try:
            self.s3.download_file(bucket, key, str(tar_path), Config=DOWNLOAD)
        except Exception as exc:
            raise JobError(f"ClientError: Could not download model data from {model_url}: {exc}") from exc
        with tarfile.open(tar_path) as tar:
            tar.extractall(model_dir, filter="data")
        input_dir = root / "input"
        files = self._download_prefix(source["S3Uri"], input_dir,
                                      data_type=source.get("S3DataType", "S3Prefix"))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise JobError(f"AlgorithmError: the local stand-in {module_name} cannot be imported: "
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
                raise JobError(as_reason(f"{type(exc).__name__}: {exc}")) from exc
            for path in group:
                produced = out_dir / f"{path.name}.out"
                if not produced.is_file():
                    raise JobError(f"AlgorithmError: the transform wrote no output for {path.name}.")
                rel = (rel_dir / produced.name).as_posix()
                self.s3.upload_file(str(produced), out_bucket, out_prefix + rel, Config=UPLOAD)
