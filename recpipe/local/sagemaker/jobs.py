"""What every local SageMaker job kind shares: request validation and the errors SageMaker would
report, the job's directory standing in for ``/opt/ml``, and S3 copies as SageMaker makes them."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from recpipe.local.exceptions import TaskFailure
from recpipe.local.s3store import list_keys, parse_s3_uri

JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MAX_REASON = 1024
# S3 is moto in this process: transfer threads only add overhead. Downloads: one request (a 64 MB
# shard in ~0.15-0.2 s instead of ~0.35-0.4 s). Uploads keep 8 MB parts: moto decodes a single
# aws-chunked PUT body in time superlinear in its size (1.2-2.5 s for 64 MB against ~0.35-0.45 s).
DOWNLOAD = TransferConfig(use_threads=False, multipart_threshold=1 << 40)
UPLOAD = TransferConfig(use_threads=False)


def now_ms() -> int:
    return int(time.time() * 1000)


def reject(message: str, code: str = "ValidationException") -> TaskFailure:
    """The error Step Functions reports when SageMaker rejects a request."""
    details = "; ".join(["Service: AmazonSageMaker", "Status Code: 400", f"Error Code: {code}",
                         f"Request ID: {uuid.uuid4()}", "Proxy: null"])
    return TaskFailure("SageMaker.AmazonSageMakerException", f"{message} ({details})")


def require(params: Mapping[str, Any], *path: str) -> Any:
    node: Any = params
    for i, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node or node[part] in (None, ""):
            dotted = ".".join(path[: i + 1])
            raise reject(f"1 validation error detected: Value null at '{dotted}' failed to satisfy "
                          "constraint: Member must not be null")
        node = node[part]
    return node


def check_job_name(name: Any, field_name: str) -> str:
    if not isinstance(name, str) or not JOB_NAME.match(name):
        raise reject(f"1 validation error detected: Value '{name}' at '{field_name}' failed to satisfy "
                      "constraint: Member must satisfy regular expression pattern: "
                      "^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$ (at most 63 characters)")
    return name


def truncate(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def read_first(*paths: Path) -> str | None:
    for path in paths:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text
    return None


def as_reason(text: str) -> str:
    prefixed = text.startswith(("ClientError", "AlgorithmError"))
    return truncate(text if prefixed else f"AlgorithmError: {text}")



class JobError(Exception):
    """A job ended Failed; ``reason`` becomes its FailureReason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class JobHost:
    """State and helpers shared by the job kinds (:mod:`.processing`, :mod:`.training`,
    :mod:`.transform`), which :class:`~recpipe.local.sagemaker.service.LocalSageMaker` combines.

    ``s3`` is a boto3 S3 client (moto's); ``job_root`` receives one directory per job (kept when
    ``keep_job_dirs``, for inspection).
    """

    def __init__(self, s3: Any, *, job_root: Path | None = None, keep_job_dirs: bool = False,
                 region: str = "us-east-1", account: str = "123456789012") -> None:
        self.s3 = s3
        self.job_root = Path(job_root) if job_root else None
        self.keep_job_dirs = keep_job_dirs
        self.region = region
        self.account = account
        self.jobs: dict[str, dict[str, Any]] = {}   # name -> Describe* response
        self._lock = threading.Lock()

    @staticmethod
    def algorithm_module(image: str) -> str:
        """The local stand-in's module for a built-in algorithm's image (training and transform)."""
        repository = image.rsplit("/", 1)[-1].split(":", 1)[0].lower()
        if "factorization-machines" in repository:
            return "recpipe.algorithms.fm"
        if "knn" in repository:
            return "recpipe.algorithms.knn"
        raise JobError(f"ClientError: the local engine has no stand-in for the training image '{image}' "
                       "(known: factorization-machines, knn).")

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def _register(self, name: str, field_name: str) -> None:
        check_job_name(name, field_name)
        with self._lock:
            if name in self.jobs:
                raise reject("Job name must be unique within an AWS account and region, and a job with "
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
            raise JobError(f"ClientError: No S3 objects found under S3 URL \"{uri}\" given in input data "
                            "source. Please ensure that the bucket exists in the region (us-east-1), "
                            "that objects exist under that S3 prefix, and that the role has s3:ListBucket.")
        paths = []
        for key, rel in keys:
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(path), Config=DOWNLOAD)
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
                                    Config=UPLOAD)
                count += 1
        return count
