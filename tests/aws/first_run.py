"""What the first-run check reads and compares: the same code for the AWS run and the local one.

The local engine and AWS expose the same boto3 interfaces (S3, Step Functions, SageMaker), so each
finding below is computed by one function from a :class:`Backend` and the finished execution
(:class:`recpipe.executions.history.ExecutionOutcome`); the AWS figures are then printed next to
the local engine's on the same synthetic data. The readers are the library's own
(``recpipe.formats``, ``recpipe.topn``); nothing here parses a format again, except counting the
raw lines of a transform output (which is the point of that check).
"""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recpipe import runs, topn
from recpipe.executions.history import PREPARE_STATE, ExecutionOutcome, StateRun

# ~5,000 users: big enough for several transform mini-batches and a meaningful NDCG, small enough
# for a run of about half an hour on ml.m5.xlarge instances.
N_USERS, N_ITEMS, N_GROUPS = 5_000, 400, 20
PER_USER = (8, 30)
IN_GROUP = 0.8  # the planted structure: most of a user's items come from the user's own group
DISTANCE_SAMPLE = 100


@dataclass(frozen=True)
class Backend:
    """Where a run happened: ``name`` ("aws" or "local"), boto3 clients and the data bucket."""

    name: str
    s3: Any
    sfn: Any
    sagemaker: Any
    bucket: str


class LocalTrainingJobs:
    """``describe_training_job`` of the local engine's SageMaker (``LocalEngine.sagemaker.jobs``
    holds each job's Describe response; moto's SageMaker never sees the jobs)."""

    def __init__(self, jobs: Mapping[str, Mapping[str, Any]]) -> None:
        self.jobs = jobs

    def describe_training_job(self, *, TrainingJobName: str) -> Mapping[str, Any]:  # boto3's spelling
        return self.jobs[TrainingJobName]


# --- the data --------------------------------------------------------------------------------------

def write_dataset(root: Path, *, n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 11) -> Path:
    """``root/interactions/interactions.csv`` (user_id, item_id, timestamp): an implicit dataset
    with planted structure (each user's group of items, Zipf popularity inside a group), so a model
    that learns beats most-popular clearly. Returns ``root``."""
    rng = np.random.default_rng(seed)
    group_of_item = np.arange(n_items) % N_GROUPS
    zipf = 1.0 / np.arange(1, n_items + 1)
    rows: list[tuple[str, str, int]] = []
    t = 1_700_000_000
    for u in range(n_users):
        group = u % N_GROUPS
        count = int(rng.integers(*PER_USER, endpoint=True))
        own = rng.random(count) < IN_GROUP
        weights_own = np.where(group_of_item == group, zipf, 0.0)
        picks_own = rng.choice(n_items, size=int(own.sum()), p=weights_own / weights_own.sum())
        picks_any = rng.choice(n_items, size=int((~own).sum()), p=zipf / zipf.sum())
        for item in dict.fromkeys(np.concatenate([picks_own, picks_any]).tolist()):
            t += int(rng.integers(1, 600))
            rows.append((f"u{u}", f"i{item}", t))
    out = root / "interactions"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "interactions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return root


# --- what a run produced ----------------------------------------------------------------------------

# Where the state machine puts each result (workflows/definition.py, docs/CONTRACTS.md "The state
# data"): the state that writes it and the path in that state's output. Read there and nowhere else,
# so a result that moved is a failure here, not silently found somewhere else.
RUN_AT = (PREPARE_STATE, ("run",))
FM_ARTIFACT_AT = ("Train FM", ("fm", "model_artifact"))
KNN_ARTIFACT_AT = ("Train k-NN", ("knn", "model_artifact"))
VECTORS_AT = ("Repackage", ("vectors",))
METRICS_AT = ("Evaluate", ("evaluation", "metrics"))


def _at(state: StateRun, path: tuple[str, ...]) -> Any:
    """The value at ``$.<path>`` of the state's output; an AssertionError naming both when absent."""
    value: Any = state.output
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            where = "$." + ".".join(path)
            raise AssertionError(f"The output of {state.label} has no {where}: {state.output!r:.300}")
        value = value[key]
    return value


@dataclass(frozen=True)
class RunView:
    """The artifacts of one finished run, per variant (``eval``/``serve``), from its state outputs."""

    run_id: str
    run: Mapping[str, Any]
    fm_artifact: Mapping[str, str]
    knn_artifact: Mapping[str, str]
    vectors: Mapping[str, Mapping[str, Any]]
    metrics: Mapping[str, Any] | None

    @classmethod
    def from_outcome(cls, outcome: ExecutionOutcome) -> RunView:
        if outcome.status != "SUCCEEDED":
            raise AssertionError(f"The run ended {outcome.status}: {outcome.error}: {outcome.cause}")
        run: Mapping[str, Any] | None = None
        fm: dict[str, str] = {}
        knn: dict[str, str] = {}
        vectors: dict[str, Mapping[str, Any]] = {}
        metrics = None
        for state in outcome.states:
            if state.status != "succeeded":
                continue
            variant = state.variant or ""
            if state.name == RUN_AT[0] and not state.path:
                run = _at(state, RUN_AT[1])
            elif state.name == FM_ARTIFACT_AT[0]:
                fm[variant] = str(_at(state, FM_ARTIFACT_AT[1]))
            elif state.name == KNN_ARTIFACT_AT[0]:
                knn[variant] = str(_at(state, KNN_ARTIFACT_AT[1]))
            elif state.name == VECTORS_AT[0]:
                vectors[variant] = _at(state, VECTORS_AT[1])
            elif state.name == METRICS_AT[0] and not state.path:
                metrics = _at(state, METRICS_AT[1])
        if not isinstance(run, Mapping):
            raise AssertionError(f"No succeeded {RUN_AT[0]} state put the run document at $.{RUN_AT[1][0]}.")
        return cls(run_id=str(run["run_id"]), run=run, fm_artifact=fm, knn_artifact=knn, vectors=vectors,
                   metrics=metrics)

    def transform_output(self, variant: str) -> str:
        uri = (self.run.get("transform_outputs") or {}).get(variant)
        if not uri:
            raise AssertionError(f"The run document has no transform output for the {variant!r} variant.")
        return str(uri)


def _bytes(backend: Backend, uri: str) -> bytes:
    return runs.get_bytes(backend.s3, uri)


def _keys(backend: Backend, uri: str) -> list[str]:
    bucket, prefix = runs.parse_s3_uri(uri)
    keys: list[str] = []
    for page in backend.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def _tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name.lstrip("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


# --- the checks -------------------------------------------------------------------------------------

def transform_lines(backend: Backend, uri: str, n_users: int) -> dict[str, Any]:
    """Batch transform output: records per user range (the library's reader) and, from the raw
    bytes, non-empty lines vs users and blank lines (``AssembleWith=Line`` after responses that
    may already end with a newline)."""
    parts = topn.transform_parts(backend.s3, uri, n_users)
    records = lines = blank = 0
    for part in parts:
        data = _bytes(backend, runs.s3_uri(part.bucket, part.key))
        raw = data.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()  # the final newline ends the last line; it is no blank line
        blank += sum(1 for line in raw if not line.strip())
        lines += sum(1 for line in raw if line.strip())
        labels, _ = topn.read_part(backend.s3, part)
        records += labels.shape[0]
    return {"files": len(parts), "users": n_users, "records": records, "lines": lines, "blank_lines": blank}


def _dense(backend: Backend, uri: str) -> tuple[np.ndarray, np.ndarray | None]:
    from recpipe.formats import read_dense

    return read_dense(io.BytesIO(_bytes(backend, uri)))


def item_vectors(backend: Backend, items_prefix: str) -> np.ndarray:
    """The k-NN's indexed item vectors in item-index order (their labels are the item indices)."""
    keys = [k for k in _keys(backend, items_prefix) if k.endswith(".pbr")]
    bucket, _ = runs.parse_s3_uri(items_prefix)
    blocks = [_dense(backend, runs.s3_uri(bucket, key)) for key in sorted(keys)]
    vectors = np.concatenate([b[0] for b in blocks])
    labels = np.concatenate([np.asarray(b[1]) for b in blocks]).astype(np.int64)
    out = np.empty_like(vectors)
    out[labels] = vectors
    return out


def distance_agreement(backend: Backend, view: RunView, variant: str = "serve", *,
                       sample: int = DISTANCE_SAMPLE, seed: int = 3) -> dict[str, Any]:
    """For ``sample`` random users: the k-NN's verbose ``distances`` against the user . item products
    recomputed from the stored vectors (what Publish ranks by). ``convention`` says which relation
    holds: "inner product" (equal), "negated" (equal up to sign) or "other"."""
    vec = view.vectors[variant]
    n_users = int(vec["n_users"])
    parts = topn.transform_parts(backend.s3, view.transform_output(variant), n_users)
    items = item_vectors(backend, str(vec["items_prefix"]))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_users, size=min(sample, n_users), replace=False))
    equal_err = negated_err = 0.0
    scale = 0.0
    best_first = best_last = 0
    users_prefix = str(vec["users_prefix"]).rstrip("/") + "/"
    for part in parts:
        rows = chosen[(chosen >= part.start) & (chosen < part.stop)] - part.start
        if not rows.size:
            continue
        labels, distances = topn.read_part(backend.s3, part)
        from recpipe.vectors import user_shard_name

        users, _ = _dense(backend, users_prefix + user_shard_name(part.start, part.stop))
        scores = topn.exact_scores(labels[rows], users[rows], items)
        valid = ~np.isnan(scores)
        d = np.asarray(distances[rows], dtype=np.float64)[valid]
        s = scores.astype(np.float64)[valid]
        equal_err = max(equal_err, float(np.max(np.abs(d - s), initial=0.0)))
        negated_err = max(negated_err, float(np.max(np.abs(d + s), initial=0.0)))
        scale = max(scale, float(np.max(np.abs(s), initial=0.0)))
        for r in range(rows.size):
            ok = valid[r]
            if ok.sum() < 2:
                continue
            row = scores[r][ok]
            best_first += int(row[0] >= row[-1])
            best_last += int(row[-1] > row[0])
    tolerance = 1e-3 * max(1.0, scale)
    convention = ("inner product" if equal_err <= tolerance else
                  "negated inner product" if negated_err <= tolerance else "other")
    return {"users": int(chosen.size), "max_abs_diff_equal": equal_err, "max_abs_diff_negated": negated_err,
            "max_abs_score": scale, "convention": convention,
            "best_candidate": "first" if best_first >= best_last else "last"}


def knn_labels(backend: Backend, view: RunView, variant: str = "serve") -> dict[str, Any]:
    """The k-NN model artifact's ``model_algo-*.labels``, read as the local stand-in writes them
    (raw little-endian float32, one per indexed vector): do they cover every item exactly once?"""
    members = _tar_members(_bytes(backend, view.knn_artifact[variant]))
    label_files = sorted(name for name in members if name.endswith(".labels"))
    n_items = int(view.vectors[variant]["n_items"])
    labels = np.concatenate([np.frombuffer(members[name], dtype="<f4") for name in label_files]) \
        if label_files else np.empty(0, np.float32)
    values, counts = np.unique(labels, return_counts=True)
    expected = np.arange(n_items, dtype=np.float32)
    return {"files": label_files, "members": sorted(members), "labels": int(labels.size), "items": n_items,
            "duplicates": int((counts > 1).sum()),
            "missing": int(np.setdiff1d(expected, values).size),
            "every_item_once": bool(labels.size == n_items and np.array_equal(values, expected))}


def fm_params(backend: Backend, view: RunView, variant: str = "eval") -> dict[str, Any]:
    """The FM artifact's parameter arrays (``model_algo-1``'s ``params``): shape and MXNet storage
    type of each (dense, or row_sparse as MXNet's sparse FM recipe keeps ``v`` and ``w1_weight``)."""
    from recpipe.formats import fm_model, mxnet

    member, where = fm_model._member_bytes(io.BytesIO(_bytes(backend, view.fm_artifact[variant])))
    params, _ = fm_model._params_bytes(member, where)
    arrays = mxnet.load_params(params)
    storage = mxnet.storage_types(params)
    return {key: f"{storage[key]} {list(value.shape)}" for key, value in arrays.items()}


def fm_final_metrics(backend: Backend, view: RunView, variant: str = "eval") -> dict[str, float]:
    """The FM training job's ``FinalMetricDataList`` (its name is in the artifact's path:
    ``<output>/<job name>/output/model.tar.gz``)."""
    key = runs.parse_s3_uri(view.fm_artifact[variant])[1].split("/")
    job = key[-3]
    described = backend.sagemaker.describe_training_job(TrainingJobName=job)
    return {m["MetricName"]: float(m["Value"]) for m in described.get("FinalMetricDataList", [])}


def evaluation(view: RunView) -> dict[str, Any]:
    metrics = dict(view.metrics or {})
    return {k: metrics.get(k) for k in ("ndcg_at_10", "precision_at_10", "coverage_at_10", "users_evaluated")}


def findings(backend: Backend, view: RunView) -> dict[str, Any]:
    """Every artifact finding of one run (the alarm check is AWS-only, see the test)."""
    serve = view.vectors["serve"]
    return {
        "transform": transform_lines(backend, view.transform_output("serve"), int(serve["n_users"])),
        "distances": distance_agreement(backend, view),
        "knn_labels": knn_labels(backend, view),
        "fm_params": fm_params(backend, view),
        "fm_metrics": fm_final_metrics(backend, view),
        "evaluation": evaluation(view),
    }


# --- the report -------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """``section.key | aws | local`` lines (sections holding {"aws": {...}, "local": {...}}), then
    any other entries as ``key: value``."""
    lines: list[str] = []
    for section, value in report.items():
        if isinstance(value, Mapping) and {"aws", "local"} & set(value):
            aws, local = value.get("aws") or {}, value.get("local") or {}
            keys = list(dict.fromkeys([*aws, *local]))
            for key in keys:
                lines.append(f"{section}.{key:<24} aws: {_text(aws.get(key, '-')):<28} "
                             f"local: {_text(local.get(key, '-'))}")
        else:
            lines.append(f"{section}: {_text(value)}")
    return "\n".join(lines)
