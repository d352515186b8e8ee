"""The handler of the state machine's ``sagemaker`` Task states (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recpipe.local.exceptions import TaskFailure
from recpipe.local.moto_hook import TaskCall
from recpipe.local.sagemaker.jobs import reject
from recpipe.local.sagemaker.processing import ProcessingJobs
from recpipe.local.sagemaker.training import CoreShare, ProgressCallback, TrainingJobs
from recpipe.local.sagemaker.transform import TransformJobs


class LocalSageMaker(ProcessingJobs, TrainingJobs, TransformJobs):
    """Handler of ``sagemaker`` Task states: one job kind per base class.

    ``s3`` is a boto3 S3 client (moto's); ``job_root`` receives one directory per job (kept when
    ``keep_job_dirs``, for inspection); ``on_progress`` receives FM epoch reports; ``cores`` is
    the number of cores the training jobs running at once share (default: this machine's).
    """

    def __init__(self, s3: Any, *, job_root: Path | None = None, keep_job_dirs: bool = False,
                 on_progress: ProgressCallback | None = None, region: str = "us-east-1",
                 account: str = "123456789012", cores: int | None = None) -> None:
        super().__init__(s3, job_root=job_root, keep_job_dirs=keep_job_dirs, region=region, account=account)
        self.on_progress = on_progress
        self.models = {}
        self._processes = set()
        self.core_share = CoreShare(cores)

    def __call__(self, call: TaskCall) -> dict[str, Any]:
        actions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "createProcessingJob": self.create_processing_job,
            "createTrainingJob": self.create_training_job,
            "createModel": self.create_model,
            "createTransformJob": self.create_transform_job,
        }
        action = actions.get(call.action)
        if action is None:
            raise reject(f"The local engine does not implement sagemaker:{call.action}.", "UnknownOperation")
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
