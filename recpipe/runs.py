"""Shared helpers of the pipeline's Lambdas: run ids, S3 URIs and JSON documents, the manifest,
and the environment variables through which resource names arrive.

Standard library plus a boto3 client passed in by the caller (never created here), so that the
Lambdas stay testable with moto and this module stays cheap to import.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from recpipe.lambda_errors import ConfigurationError, InputError, NotFoundError, SchemaVersionError
from recpipe.tables import BUCKET_ENV, TABLE_ENV

MANIFEST_SCHEMA_VERSION = 1
RUNS_PREFIX = "runs/"

# Every SageMaker job and model name starts with "<prefix>-": the deployed stack sets the prefix
# (its name prefix) in this variable and scopes the state machine's IAM rights on "<prefix>-*", so
# two stacks in one account cannot touch each other's jobs. Unset (a local run): DEFAULT_JOB_PREFIX.
JOB_PREFIX_ENV = "RECPIPE_JOB_PREFIX"
DEFAULT_JOB_PREFIX = "recpipe"
# Lower case only: SageMaker writes names lower-cased into ARNs (which IAM matches, and from which
# the state machine reads the created model's name back), so a name must equal its ARN's spelling.
_VALID_JOB_PREFIX = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")  # 1-32 characters
# SageMaker job/model names: at most 63 characters of [a-zA-Z0-9-], starting alphanumeric.
MAX_JOB_NAME = 63
# The state machine makes every name unique per attempt by appending "-<State.RetryCount>-
# <Execution.RedriveCount>" to the base name built here (workflows.definition.attempt_name): room
# for a two-digit retry count and a four-digit redrive count.
ATTEMPT_SUFFIX_CHARS = len("-99-9999")
MAX_BASE_NAME = MAX_JOB_NAME - ATTEMPT_SUFFIX_CHARS  # 55
# The longest part a base name gets after the run id (see ``job_name``): "-serve-model".
_LONGEST_JOB_SUFFIX = len("-serve-model")
# Run ids name S3 prefixes and table versions too, so they do not depend on the job prefix; a run
# id too long for the job names is shortened there (:func:`job_name`).
MAX_RUN_ID = 43
_HASH_CHARS = 8
_VALID_RUN_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]


def derive_run_id(execution_name: str) -> str:
    """The run id of an execution: its name when that is already a short lower-case slug
    (``[a-z0-9]`` words joined by single hyphens, at most 43 characters), otherwise a sanitised,
    truncated slug plus 8 hex characters of the name's SHA-256, so distinct names stay distinct.

    The run id names S3 prefixes, the results table's version and every SageMaker job
    (:func:`job_name`).
    """
    if not isinstance(execution_name, str) or not execution_name:
        raise InputError(f"The 'execution_name' must be a non-empty string, got {execution_name!r}.")
    if len(execution_name) <= MAX_RUN_ID and _VALID_RUN_ID.match(execution_name):
        return execution_name
    slug = re.sub(r"[^a-z0-9]+", "-", execution_name.lower()).strip("-")
    slug = slug[: MAX_RUN_ID - _HASH_CHARS - 1].strip("-")
    digest = _digest(execution_name)
    return f"{slug}-{digest}" if slug else f"run-{digest}"


def job_prefix() -> str:
    """The job-name prefix: ``RECPIPE_JOB_PREFIX``, or ``recpipe`` when unset; checked."""
    prefix = os.environ.get(JOB_PREFIX_ENV, "") or DEFAULT_JOB_PREFIX
    if not _VALID_JOB_PREFIX.match(prefix):
        raise ConfigurationError(
            f"The environment variable {JOB_PREFIX_ENV} must be 1-32 characters of a-z, 0-9 and '-', "
            f"starting and ending with a letter or digit (SageMaker names are matched lower-cased); "
            f"got {prefix!r}.")
    return prefix


def job_name(run_id: str, kind: str, variant: str | None = None, *, prefix: str = DEFAULT_JOB_PREFIX) -> str:
    """The base name ``<prefix>-<run>[-<variant>]-<kind>`` of one SageMaker job or model, at most
    55 characters so that the state machine's per-attempt suffix fits in SageMaker's 63.

    ``<run>`` is the run id, or, when the prefix leaves too little room, its head plus 8 hex
    characters of its SHA-256 (the same for every name of the run, distinct between runs).
    """
    room = MAX_BASE_NAME - len(prefix) - 1 - _LONGEST_JOB_SUFFIX
    run = run_id
    if len(run_id) > room:
        head = run_id[: room - _HASH_CHARS - 1].rstrip("-")
        run = f"{head}-{_digest(run_id)}" if head else _digest(run_id)
    name = "-".join([prefix, run, *([variant] if variant else []), kind])
    if len(name) > MAX_BASE_NAME:
        raise InputError(f"The SageMaker base name {name!r} is {len(name)} characters long; the limit is "
                         f"{MAX_BASE_NAME} (63 less the per-attempt suffix).")
    return name


# --- S3 URIs -----------------------------------------------------------------------------------

def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` -> ``("bucket", "key/part")`` (the key may be empty or a prefix)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InputError(f"Expected an S3 URI like 's3://bucket/key', got {uri!r}.")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise InputError(f"The S3 URI {uri!r} has no bucket.")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def join_uri(prefix: str, *parts: str) -> str:
    """``join_uri("s3://b/runs/x/", "processed", "manifest.json")`` -> ``s3://b/runs/x/processed/manifest.json``."""
    out = prefix.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def prefix_uri(prefix: str, *parts: str) -> str:
    """Like :func:`join_uri` but always ending in ``/`` (an S3 prefix)."""
    return join_uri(prefix, *parts) + "/"


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket")


def get_bytes(s3: Any, uri: str) -> bytes:
    """The object's bytes; :class:`NotFoundError` naming the bucket and key when it is absent."""
    bucket, key = parse_s3_uri(uri)
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if _is_not_found(exc):
            raise NotFoundError(f"S3 object s3://{bucket}/{key} does not exist.") from exc
        raise
    return body


def get_json(s3: Any, uri: str) -> Any:
    """Parse the JSON object at ``uri``; errors name the bucket and key."""
    raw = get_bytes(s3, uri)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"S3 object {uri} is not valid JSON: {exc}.") from exc


def put_json(s3: Any, uri: str, document: Any) -> None:
    """Write ``document`` as pretty, key-sorted JSON (stable bytes for identical documents)."""
    bucket, key = parse_s3_uri(uri)
    body = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def load_manifest(s3: Any, uri: str) -> dict[str, Any]:
    """The processing manifest at ``uri`` (``.../processed/manifest.json``), schema version checked."""
    manifest = get_json(s3, uri)
    if not isinstance(manifest, dict):
        raise InputError(f"The manifest {uri} must be a JSON object, got {type(manifest).__name__}.")
    version = manifest.get("schema_version")
    if version != MANIFEST_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"The manifest {uri} has schema_version {version!r}; this code reads version "
            f"{MANIFEST_SCHEMA_VERSION}. Re-run the processing step with the deployed code."
        )
    return manifest


def manifest_file_uri(manifest_uri: str, manifest: dict[str, Any], name: str) -> str | None:
    """The URI of ``manifest["files"][name]`` (paths are relative to the manifest's directory);
    ``None`` when the manifest lists it as null (e.g. ``test`` without a holdout)."""
    files = manifest.get("files") or {}
    if name not in files:
        raise InputError(f"The manifest {manifest_uri} has no 'files.{name}' entry.")
    rel = files[name]
    if rel is None:
        return None
    base = manifest_uri.rsplit("/", 1)[0]
    return f"{base}/{rel}"


def required_file_uri(manifest_uri: str, manifest: dict[str, Any], name: str, step: str) -> str:
    """Like :func:`manifest_file_uri`, but an :class:`InputError` when the manifest lists no such
    file (``step`` names who needs it)."""
    uri = manifest_file_uri(manifest_uri, manifest, name)
    if uri is None:
        raise InputError(f"The manifest {manifest_uri} lists no '{name}' file; {step} needs it.")
    return uri


def shard_list_uri(manifest_uri: str, manifest: Mapping[str, Any], variant: str, step: str) -> str:
    """The URI of the variant's shard list (``manifest["shards"][variant]``, e.g.
    ``shards/serve.json``, relative to the manifest's directory); an InputError when absent
    (``step`` names who needs it)."""
    rel = (manifest.get("shards") or {}).get(variant)
    if not isinstance(rel, str) or not rel:
        raise InputError(f"The manifest {manifest_uri} lists no 'shards.{variant}' shard list; {step} needs "
                         "it. Re-run the processing step with the deployed code.")
    return f"{manifest_uri.rsplit('/', 1)[0]}/{rel}"


def load_csr(s3: Any, uri: str, shape: tuple[int, int] | None = None) -> Any:
    """The ``scipy.sparse.save_npz`` matrix at ``uri`` as CSR, its shape checked when given.

    scipy is imported here, not at module level, to keep this module cheap to import.
    """
    import io

    import scipy.sparse as sp

    try:
        matrix = sp.csr_matrix(sp.load_npz(io.BytesIO(get_bytes(s3, uri))))
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(f"{uri} is not a scipy sparse .npz file: {exc}.") from exc
    if shape is not None and matrix.shape != tuple(shape):
        raise InputError(f"{uri} has shape {matrix.shape}; expected {tuple(shape)} (from the manifest).")
    return matrix


def load_vectors(s3: Any, uri: str, rows: int, what: str, *, by_label: bool = False) -> Any:
    """The dense recordio-protobuf vectors at ``uri`` (Repackage's ``items.pbr`` or a user shard) as a
    float32 array (rows, dim); ``by_label``: row i is the record labelled i (Repackage labels each item
    record with its index; every index must appear once). An InputError when it holds another number
    of ``what`` vectors."""
    import numpy as np

    from recpipe.formats import recordio
    from recpipe.vectors import vectors_by_index

    try:
        array, labels = recordio.read_dense(get_bytes(s3, uri))
        if by_label:
            array = vectors_by_index(array, labels, rows)
    except ValueError as exc:
        raise InputError(f"{uri} is not the expected dense recordio-protobuf: {exc}") from exc
    if array.shape[0] != rows:
        raise InputError(f"{uri} holds {array.shape[0]} {what} vectors; expected {rows}.")
    return np.asarray(array, dtype=np.float32)


def run_prefix(bucket: str, run_id: str) -> str:
    """``s3://<bucket>/runs/<run_id>/``: everything a run writes lives under it."""
    return f"s3://{bucket}/{RUNS_PREFIX}{run_id}/"


# --- environment -------------------------------------------------------------------------------

def env(name: str) -> str:
    """A required environment variable; :class:`ConfigurationError` naming it when unset."""
    value = os.environ.get(name, "")
    if not value:
        raise ConfigurationError(f"The environment variable {name} is not set; the deployment "
                                 "(CDK construct or local engine) must set it.")
    return value


def bucket_name() -> str:
    """The data bucket (environment variable ``RECPIPE_BUCKET``)."""
    return env(BUCKET_ENV)


def table_name() -> str:
    """The results table (environment variable ``RECPIPE_TABLE``)."""
    return env(TABLE_ENV)
