"""The first-run check (tests/aws): collected only with RECPIPE_AWS_STACK, and its checks, run here
against a small local pipeline run, find what they are meant to find."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _collected(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECPIPE_AWS_STACK"}
    if env_value is not None:
        env["RECPIPE_AWS_STACK"] = env_value
    command = [sys.executable, "-m", "pytest", "--collect-only", "-o", "addopts=", "-q",
               "-p", "no:cacheprovider", "tests/aws"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_tests_aws_is_collected_only_with_a_stack() -> None:
    without = _collected(None)
    assert without.returncode == 5, without.stdout + without.stderr  # 5: no tests collected
    assert "test_first_run" not in without.stdout
    with_stack = _collected("Recpipe")
    assert with_stack.returncode == 0, with_stack.stdout + with_stack.stderr
    assert "tests/aws/test_first_run.py::test_an_alarm_reaches_the_topic" in with_stack.stdout
    assert "tests/aws/test_first_run.py::test_transform_output_has_one_line_per_user" in with_stack.stdout


def test_make_test_does_not_name_tests_aws() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "tests/aws" not in makefile


# --- the checks on a local run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Any]]:
    from recpipe.local.engine import EngineOptions, LocalEngine
    from tests.aws.first_run import Backend, LocalTrainingJobs, RunView, write_dataset

    root = tmp_path_factory.mktemp("first-run")
    data = write_dataset(root / "data", n_users=300, n_items=60)
    with LocalEngine(EngineOptions(workdir=root / "work")) as engine:
        engine.put_data("input", interactions=data / "interactions")
        assert engine.sagemaker is not None
        jobs = engine.sagemaker.jobs
        _, outcome = engine.run({"fm.epochs": 2, "fm.num_factors": 8}, timeout_s=900)
        backend = Backend("local", s3=engine.s3, sfn=engine.sfn,
                          sagemaker=LocalTrainingJobs(jobs), bucket=engine.options.bucket)
        yield backend, RunView.from_outcome(outcome), engine


def test_the_checks_read_a_local_run(local_run: tuple[Any, Any, Any]) -> None:
    from tests.aws.first_run import findings, format_report

    backend, view, _ = local_run
    found = findings(backend, view)
    assert found["transform"] == {"files": found["transform"]["files"], "users": 300, "records": 300,
                                  "lines": 300, "blank_lines": 0}
    assert found["distances"]["convention"] == "inner product"  # what the local stand-in writes
    assert found["distances"]["best_candidate"] == "last"  # sorted smallest to largest
    assert found["knn_labels"]["every_item_once"] and found["knn_labels"]["labels"] == 60
    assert set(found["fm_params"]) == {"arg:v", "arg:w1_weight", "arg:w0_weight"}
    assert found["fm_params"]["arg:w0_weight"] == "default (dense) [1]"
    assert "test:binary_classification_cross_entropy" in found["fm_metrics"]
    assert 0 < found["evaluation"]["ndcg_at_10"] <= 1
    text = format_report({"transform": {"aws": found["transform"], "local": found["transform"]}, "note": 1})
    assert "transform.blank_lines" in text and "note: 1" in text


def _rewrite_outputs(backend: Any, view: Any, change: Any) -> None:
    from recpipe import runs, topn
    from recpipe.formats import read_verbose_jsonlines

    uri = view.transform_output("serve")
    for part in topn.transform_parts(backend.s3, uri, int(view.vectors["serve"]["n_users"])):
        labels, distances = read_verbose_jsonlines(io.BytesIO(runs.get_bytes(backend.s3, runs.s3_uri(
            part.bucket, part.key))))
        backend.s3.put_object(Bucket=part.bucket, Key=part.key, Body=change(labels, distances))


def test_blank_lines_and_negated_distances_are_reported(local_run: tuple[Any, Any, Any]) -> None:
    from recpipe.formats import write_verbose_jsonlines
    from tests.aws.first_run import distance_agreement, transform_lines

    backend, view, _ = local_run

    def negate_with_blank_lines(labels: np.ndarray, distances: np.ndarray) -> bytes:
        out = io.BytesIO()
        write_verbose_jsonlines(out, labels, -distances, labels[:, -1])
        return out.getvalue().replace(b"\n", b"\n\n")  # a newline after every record, as AWS may

    _rewrite_outputs(backend, view, negate_with_blank_lines)
    found = transform_lines(backend, view.transform_output("serve"), 300)
    assert (found["records"], found["lines"], found["blank_lines"]) == (300, 300, 300)
    assert distance_agreement(backend, view)["convention"] == "negated inner product"


def test_storage_types_of_a_real_row_sparse_artifact() -> None:
    # The fixture is real MXNet 1.9.1 output (tests/fixtures/sagemaker-fm-rowsparse/README.md).
    from recpipe.formats import fm_model, mxnet

    artifact = ROOT / "tests" / "fixtures" / "sagemaker-fm-rowsparse" / "model.tar.gz"
    member, where = fm_model._member_bytes(artifact)
    params, _ = fm_model._params_bytes(member, where)
    assert mxnet.storage_types(params) == {"arg:v": "row_sparse", "arg:w1_weight": "row_sparse",
                                           "arg:w0_weight": "default (dense)"}


def _state(name: str, output: Any, path: tuple[int, ...] = (), variant: str | None = None) -> Any:
    import datetime as dt

    from recpipe.executions.history import StateRun

    return StateRun(name=name, type="Task", path=path, started=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                    status="succeeded", variant=variant, output=output)


def _outcome(fm_output: Any) -> Any:
    from recpipe.executions.history import ExecutionOutcome

    run = {"run": {"run_id": "r1", "transform_outputs": {}}}
    return ExecutionOutcome(status="SUCCEEDED", states=[
        _state("Prepare", run),
        _state("Train FM", {**run, "fm": fm_output}, (0,), "eval"),
        _state("Evaluate", {**run, "evaluation": {"metrics": {"ndcg_at_10": 0.5}, "threshold": 0.1}}),
    ])


def test_the_run_view_reads_each_result_where_the_state_machine_puts_it() -> None:
    from tests.aws.first_run import RunView

    view = RunView.from_outcome(_outcome({"model_artifact": "s3://b/fm/model.tar.gz"}))
    assert view.run_id == "r1" and view.fm_artifact == {"eval": "s3://b/fm/model.tar.gz"}
    assert view.metrics == {"ndcg_at_10": 0.5}
    # the artifact one level deeper than $.fm.model_artifact is not "found anyway"
    moved = r"The output of Train FM \[eval\] has no \$\.fm\.model_artifact"
    with pytest.raises(AssertionError, match=moved):
        RunView.from_outcome(_outcome({"training": {"model_artifact": "s3://b/fm/model.tar.gz"}}))
