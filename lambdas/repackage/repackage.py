"""The Repackage step: FM artifact -> the k-NN training set (items) and inference set (users).

Writes, under ``output_prefix``:

- ``items/items.pbr``: one dense recordio-protobuf record per item, ``concat(V^T x_i, b_i)``, label =
  the item index (float32, exact below 2**24 items): the k-NN model returns these labels. Every
  item is written exactly once, in index order (checked before the upload): the k-NN index, trained
  on one instance with ``sample_size = n_items`` (Plan), then covers every item once;
- ``users/users-<start:010d>-<stop:010d>.pbr``: per user shard of the variant's shard list
  (``processed/shards/<variant>.json``, written by the processing step), the vectors
  ``concat(V^T x_u, 1)`` of its rows in order, no labels (batch transform reads none). ``start``/
  ``stop`` are the shard list's: user indices for ``serve``, positions in the evaluation sample for
  ``eval``. The batch transform names its output ``<input>.out``, so Publish and Evaluate find a
  shard's output (and these vectors) by its range (:mod:`recpipe.vectors`).

Memory: float32 throughout for users; one shard's rows and vectors at a time, plus the item
vectors and the model. Only the factor rows a shard's features use are touched (``V[columns]``),
so no full-size copy of the model is made. The returned payload is the same few hundred bytes
whatever the shard count.

Objects a previous attempt left under ``items/`` or ``users/`` that this attempt did not write are
deleted (a changed shard size must not leave overlapping shards behind); a key DeleteObjects
reports as not deleted fails the step, naming the keys.
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
DELETE_BATCH = 1000  # DeleteObjects' limit per call


@dataclass(frozen=True)
class RepackageRequest:
    """The Repackage event (docs/CONTRACTS.md), validated."""

    run_id: str
    variant: str
    model_artifact: str
    manifest: str
    output_prefix: str

    @classmethod
    def from_event(cls, event: Any) -> RepackageRequest:
        if not isinstance(event, Mapping):
            raise InputError(f"The Repackage event must be a JSON object, got {type(event).__name__}.")
        required = ("run_id", "variant", "model_artifact", "manifest", "output_prefix")
        missing = [key for key in required if key not in event]
        if missing:
            raise InputError(f"The Repackage event lacks {', '.join(repr(k) for k in missing)}.")
        for key in required:
            if not isinstance(event[key], str) or not event[key]:
                raise InputError(
                    f"The Repackage event's {key!r} must be a non-empty string, got {event[key]!r}."
                )
        for key in ("model_artifact", "manifest", "output_prefix"):
            runs.parse_s3_uri(event[key])
        return cls(*(event[key] for key in required))


def _count(manifest_uri: str, manifest: Mapping[str, Any], name: str) -> int:
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
    del raw
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


def delete_stale(s3: Any, prefix: str, keep: set[str]) -> list[str]:
    """Delete every object under ``prefix`` whose URI is not in ``keep``; returns the deleted keys.

    DeleteObjects answers 200 even when keys fail (access denied, ...), listing them under
    ``Errors``: those fail the step with an InputError naming them (a stale shard left behind would
    be read as this run's)."""
    bucket, key_prefix = runs.parse_s3_uri(prefix)
    stale = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
        for obj in page.get("Contents", [])
        if runs.s3_uri(bucket, obj["Key"]) not in keep
    ]
    failed: list[str] = []
    for start in range(0, len(stale), DELETE_BATCH):
        chunk = stale[start:start + DELETE_BATCH]
        answer = s3.delete_objects(Bucket=bucket,
                                   Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True})
        failed += [f"{e.get('Key')} ({e.get('Code')}: {e.get('Message')})" for e in answer.get("Errors", [])]
    if failed:
        shown = "; ".join(failed[:5]) + (f"; and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise InputError(f"Could not delete {len(failed)} stale object(s) a previous attempt left under "
                         f"s3://{bucket}/{key_prefix}: {shown}. Delete them (the role needs "
                         "s3:DeleteObject on the run prefix) and retry.")
    return stale


def user_shards(s3: Any, manifest_uri: str, manifest: Mapping[str, Any], variant: str,
                step: str) -> tuple[list[shards.ShardEntry], int]:
    """The variant's user shards (in order, checked to tile its users) and its user count:
    ``counts.users`` for ``serve``, ``counts.eval_users`` (the evaluation sample) for ``eval``."""
    uri = runs.shard_list_uri(manifest_uri, manifest, variant, step)
    n_users = _count(manifest_uri, manifest, "eval_users" if variant == "eval" else "users")
    entries = [e for e in shards.load_shard_list(s3, uri) if e.kind == shards.KIND_USERS]
    try:
        vectors.check_tiling([(e.start, e.stop) for e in entries], n_users)
    except ValueError as exc:
        raise InputError(f"{uri}: {exc}") from exc
    return sorted(entries, key=lambda e: e.start), n_users


def repackage(request: RepackageRequest, *, s3: Any) -> dict[str, Any]:
    """Read the model, the item rows and one user shard at a time; write the vectors; return the
    step's (small) result."""
    manifest = runs.load_manifest(s3, request.manifest)
    feature_dim = _count(request.manifest, manifest, "feature_dim")
    n_items = _count(request.manifest, manifest, "items")
    entries, n_users = user_shards(s3, request.manifest, manifest, request.variant, "Repackage")
    item_rows_uri = runs.required_file_uri(request.manifest, manifest, "item_rows", "Repackage")
    item_rows = runs.load_csr(s3, item_rows_uri, (n_items, feature_dim))
    V, w, _ = load_model(s3, request.model_artifact, feature_dim)

    items_prefix = runs.prefix_uri(request.output_prefix, "items")
    users_prefix = runs.prefix_uri(request.output_prefix, "users")
    items_uri = items_prefix + ITEMS_FILE
    item_vectors = vectors.item_vectors(item_rows, V, w)
    if item_vectors.shape[0] != n_items:  # the k-NN index must hold every item, once
        raise InputError(f"{request.manifest}: {item_vectors.shape[0]} item vectors for {n_items} items.")
    _put(s3, items_uri, item_vectors, np.arange(n_items, dtype=np.float32))
    item_columns = np.unique(item_rows.indices)
    del item_rows, item_vectors

    processed = request.manifest.rsplit("/", 1)[0]
    written = set()
    for entry in entries:
        assert entry.prefix is not None  # a users entry always has one (ShardEntry.parse)
        rows_uri = runs.join_uri(processed, entry.prefix, "user_rows.npz")
        rows = runs.load_csr(s3, rows_uri, (entry.size, feature_dim))
        try:
            vectors.check_disjoint_columns(rows, item_columns)
        except ValueError as exc:
            raise InputError(f"{rows_uri}: {exc}") from exc
        uri = users_prefix + vectors.user_shard_name(entry.start, entry.stop)
        _put(s3, uri, vectors.user_vectors(rows, V), None)
        written.add(uri)
    delete_stale(s3, items_prefix, {items_uri})
    delete_stale(s3, users_prefix, written)
    return {
        "items_prefix": items_prefix,
        "users_prefix": users_prefix,
        "dimension": int(V.shape[1]) + 1,
        "n_items": n_items,
        "n_users": n_users,
        "n_shards": len(entries),
    }
