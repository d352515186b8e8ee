"""Local SageMaker processing jobs: the request's ``ContainerEntrypoint`` run as a subprocess with
this interpreter, ``/opt/ml`` paths remapped to the job's directory (passed to the job as the
environment variable ``RECPIPE_OPT_ML``), inputs downloaded and outputs uploaded as SageMaker does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from recpipe.local.sagemaker.jobs import JobError, JobHost, as_reason, now_ms, read_first, require, truncate
from workflows.processing.paths import OPT_ML_ENV


class ProcessingJobs(JobHost):
    """``createProcessingJob``; :meth:`terminate` kills the running job subprocesses (Ctrl-C)."""

    _processes: set[subprocess.Popen[bytes]]

    def terminate(self) -> None:
        """Kill running processing subprocesses (on Ctrl-C)."""
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                process.kill()

    def create_processing_job(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(require(p, "ProcessingJobName"))
        app = require(p, "AppSpecification")
        require(p, "AppSpecification", "ImageUri")
        require(p, "ProcessingResources")
        require(p, "RoleArn")
        self._register(name, "processingJobName")
        started = now_ms()
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
            message = read_first(opt_ml / "output" / "message")
            if message:
                describe["ExitMessage"] = truncate(message)
        except JobError as exc:
            describe.update(ProcessingJobStatus="Failed", FailureReason=truncate(exc.reason))
            message = read_first(opt_ml / "output" / "message")
            if message:
                describe["ExitMessage"] = truncate(message)
        finally:
            self._cleanup(root)
        describe["ProcessingEndTime"] = describe["LastModifiedTime"] = now_ms()
        self.jobs[name] = describe
        return describe

    def _remap(self, value: str, opt_ml: Path) -> str:
        return str(opt_ml) + value[len("/opt/ml"):] if value.startswith("/opt/ml") else value

    def _run_processing(self, p: dict[str, Any], opt_ml: Path, root: Path) -> None:
        for item in p.get("ProcessingInputs", []):
            s3_input = item.get("S3Input")
            if not s3_input:
                raise JobError(f"ClientError: input '{item.get('InputName')}' has no S3Input (the only kind "
                                "the local engine supports).")
            local = Path(self._remap(s3_input["LocalPath"], opt_ml))
            try:
                self._download_prefix(s3_input["S3Uri"], local,
                                      data_type=s3_input.get("S3DataType", "S3Prefix"))
            except JobError:
                raise
            except Exception as exc:
                raise JobError(f"ClientError: could not download {s3_input['S3Uri']}: {exc}") from exc
        outputs = p.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for item in outputs:
            Path(self._remap(item["S3Output"]["LocalPath"], opt_ml)).mkdir(parents=True, exist_ok=True)
        (opt_ml / "output").mkdir(parents=True, exist_ok=True)
        (opt_ml / "config").mkdir(parents=True, exist_ok=True)
        (opt_ml / "config" / "processingjobconfig.json").write_text(json.dumps(p))

        app = p["AppSpecification"]
        entrypoint = list(app.get("ContainerEntrypoint") or [])
        if not entrypoint:
            raise JobError("ClientError: the local engine needs AppSpecification.ContainerEntrypoint (it "
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
            reason = read_first(opt_ml / "output" / "message", opt_ml / "output" / "failure")
            if reason is None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                reason = f"exit code {code}: " + " | ".join(tail)
            raise JobError(as_reason(reason))
        for item in outputs:
            s3_output = item["S3Output"]
            self._upload_dir(Path(self._remap(s3_output["LocalPath"], opt_ml)), s3_output["S3Uri"])
