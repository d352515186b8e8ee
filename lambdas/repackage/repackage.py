"""The Repackage step: FM artifact -> the k-NN training set (items) and inference set (users).

Writes, under ``output_prefix``:

- ``items/items.pbr``: one dense recordio-protobuf record per item, ``concat(V^T x_i, b_i)``, label =
  the item index (float32, exact below 2**24 items): the k-NN model returns these labels;
- ``users/users-<start>-<stop>.pbr``: the user vectors ``concat(V^T x_u, 1)`` of user indices
  ``[start, stop)`` in index order, no labels (batch transform does not read any), split into
  ``user_shards`` contiguous ranges (fewer when there are fewer users). The batch transform names
  its output after the input file, so Publish and Evaluate read the user range back from the name
  (:mod:`recpipe.vectors`).

Objects a previous attempt left under ``items/`` or ``users/`` that this attempt did not write are
deleted, so a retry with another shard count cannot leave overlapping shards behind.

Memory: the user vectors are computed and encoded one shard at a time (a 1M-user, 65-dim set in 4
shards holds ~65 MB of vectors at once, plus its encoding).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from recpipe import runs, vectors
from recpipe.formats import recordio
from recpipe.formats.media_types import RECORDIO_PROTOBUF
from recpipe.lambda_errors import InputError
from recpipe.results import shards

ITEMS_FILE = "items.pbr"


@dataclass(frozen=True)
class RepackageRequest:
    """The Repackage event (docs/CONTRACTS.md), validated."""

    run_id: str
    variant: str
    model_artifact: str
    manifest: str
    output_prefix: str
    user_shards: int

    @classmethod
    def from_event(cls, event: Any) -> RepackageRequest:
        if not isinstance(event, Mapping):
            raise InputError(f"The Repackage event must be a JSON object, got {type(event).__name__}.")
        required = ("run_id", "variant", "model_artifact", "manifest", "output_prefix", "user_shards")
        missing = [key for key in required if key not in event]
        if missing:
            raise InputError(f"The Repackage event lacks {', '.join(repr(k) for k in missing)}.")
        for key in required[:-1]:
            if not isinstance(event[key], str) or not event[key]:
                raise InputError(
                    f"The Repackage event's {key!r} must be a non-empty string, got {event[key]!r}."
                )
        for key in ("model_artifact", "manifest", "output_prefix"):
            runs.parse_s3_uri(event[key])
        shards = event["user_shards"]
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 1000:
            raise InputError(
                f"The Repackage event's 'user_shards' must be an int in [1, 1000], got {shards!r}."
            )
        return cls(event["run_id"], event["variant"], event["model_artifact"], event["manifest"],
                   event["output_prefix"], shards)


def _count(manifest_uri: str, manifest: dict[str, Any], name: str) -> int:
    value = (manifest.get("counts") or {}).get(name) if name != "feature_dim" else manifest.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        where = name if name == "feature_dim" else f"counts.{name}"
        raise InputError(f"The manifest {manifest_uri} has no valid '{where}' (got {value!r}).")
    return value


def load_model(s3: Any, uri: str, feature_dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(V, w, w0)`` of the FM artifact (``model.tar.gz``) at ``uri``, checked against ``feature_dim``."""
    from recpipe.formats.fm_model import load_fm_model

    raw = runs.get_bytes(s3, uri)
    try:
        V, w, b = load_fm_model(io.BytesIO(raw))
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(f"{uri} is not a Factorization Machines model artifact: {exc}") from exc
    try:
        return vectors.fm_parameters(V, w, b, feature_dim=feature_dim)
    except ValueError as exc:
        raise InputError(f"{uri}: {exc}") from exc


def _put(s3: Any, uri: str, array: np.ndarray, labels: np.ndarray | None) -> None:
    buf = io.BytesIO()
    recordio.write_dense(buf, array, labels)
    bucket, key = runs.parse_s3_uri(uri)
    buf.seek(0)
    s3.upload_fileobj(buf, bucket, key, ExtraArgs={"ContentType": RECORDIO_PROTOBUF})


def _delete_stale(s3: Any, prefix: str, keep: set[str]) -> list[str]:
    bucket, key_prefix = runs.parse_s3_uri(prefix)
    stale = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
        for obj in page.get("Contents", [])
        if runs.s3_uri(bucket, obj["Key"]) not in keep
    ]
    for start in range(0, len(stale), 1000):
        chunk = stale[start:start + 1000]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
    return stale


def user_rows_file(variant: str, manifest: dict[str, Any]) -> str:
    """The manifest file holding the variant's user rows. With a sequence context
    (``processing.context_items``) a user's row ends with their most recent interactions, which
    differ between the training part (the "eval" variant: ``user_rows_train``) and all data (the
    "serve" variant: ``user_rows``). Manifests without ``user_rows_train`` have one set of rows."""
    if variant == "eval" and (manifest.get("files") or {}).get("user_rows_train"):
        return "user_rows_train"
    return "user_rows"


def user_ranges(s3: Any, request: RepackageRequest, manifest: dict[str, Any],
                n_users: int) -> list[tuple[int, int]]:
    """The user files to write: for the serve variant the user shards of ``shards/serve.json`` when the
    manifest lists it (the Publish Map's children read one file per shard, named by its range), else
    ``user_shards`` near-equal ranges."""
    serve_list = (manifest.get("shards") or {}).get("serve")
    if request.variant != "serve" or not serve_list:
        return vectors.shard_ranges(n_users, request.user_shards)
    uri = runs.join_uri(request.manifest.rsplit("/", 1)[0], serve_list)
    return [(e.start, e.stop) for e in shards.load_shard_list(s3, uri) if e.kind == shards.KIND_USERS]


def repackage(request: RepackageRequest, *, s3: Any) -> dict[str, Any]:
    """Read the model and feature rows, write item and user vectors; return the step's result."""
    manifest = runs.load_manifest(s3, request.manifest)
    feature_dim = _count(request.manifest, manifest, "feature_dim")
    n_users = _count(request.manifest, manifest, "users")
    n_items = _count(request.manifest, manifest, "items")
    user_rows, item_rows = (
        runs.load_csr(s3, runs.required_file_uri(request.manifest, manifest, name, "Repackage"),
                      (n, feature_dim))
        for name, n in ((user_rows_file(request.variant, manifest), n_users), ("item_rows", n_items))
    )
    try:
        vectors.check_disjoint_columns(user_rows, item_rows)
    except ValueError as exc:
        raise InputError(f"{request.manifest}: {exc}") from exc
    V, w, _ = load_model(s3, request.model_artifact, feature_dim)

    items_prefix = runs.prefix_uri(request.output_prefix, "items")
    users_prefix = runs.prefix_uri(request.output_prefix, "users")
    items_uri = items_prefix + ITEMS_FILE
    _put(s3, items_uri, vectors.item_vectors(item_rows, V, w), np.arange(n_items, dtype=np.float32))

    user_files = []
    for start, stop in user_ranges(s3, request, manifest, n_users):
        uri = users_prefix + vectors.user_shard_name(start, stop)
        _put(s3, uri, vectors.user_vectors(user_rows[start:stop], V), None)
        user_files.append(uri)
    _delete_stale(s3, items_prefix, {items_uri})
    _delete_stale(s3, users_prefix, set(user_files))
    return {
        "items_prefix": items_prefix,
        "users_prefix": users_prefix,
        "dimension": int(V.shape[1]) + 1,
        "n_items": n_items,
        "n_users": n_users,
        "user_files": user_files,
    }
