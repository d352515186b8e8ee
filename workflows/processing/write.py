"""Writing: training sets as recordio-protobuf part files (rows built chunk by chunk, one round in
memory at a time), and the CSV / id files of ``meta/``."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recpipe.formats import recordio
from workflows.processing.context import SequenceContext
from workflows.processing.exceptions import BadInputError, show
from workflows.processing.prepare import Prepared

# A recordio part file never exceeds this many bytes.
MAX_SHARD_BYTES = 64 * 2**20


def training_rows(user_rows: sp.csr_matrix, item_rows: sp.csr_matrix, users: np.ndarray,
                   items: np.ndarray, context: SequenceContext | None = None,
                   anchors: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows x_u + x_i (+ the context before each anchor) for the given (user, item) pairs."""
    n_users, dim = user_rows.shape
    n = len(users)
    if context is None and user_rows.nnz == n_users and item_rows.nnz == item_rows.shape[0]:
        indices = np.empty(2 * n, dtype=np.int32 if dim < 2**31 else np.int64)  # ids only: 2 ones per row
        indices[0::2] = users
        indices[1::2] = n_users + items
        indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
        return sp.csr_matrix((np.ones(2 * n, dtype=np.float32), indices, indptr), shape=(n, dim))
    matrix = user_rows[users] + item_rows[items]
    if context is not None:
        assert anchors is not None
        matrix = matrix + context.rows(users, anchors)
    matrix = matrix.tocsr()
    matrix.sort_indices()
    return matrix.astype(np.float32)


@dataclass
class Round:
    """One pass of training rows: (user, item, label) and, with a sequence context, each row's anchor."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    anchors: np.ndarray | None = None


def write_set(directory: Path, user_rows: sp.csr_matrix, item_rows: sp.csr_matrix,
               rounds: Iterable[Round], rng: np.random.Generator,
               context: SequenceContext | None = None, rows_per_part: int = 0) -> tuple[int, list[str]]:
    """Write the rounds one after the other, each shuffled, as recordio-protobuf part files
    ``part-00000.pbr``, ... of at most MAX_SHARD_BYTES each and (``rows_per_part`` > 0) at most that
    many rows (whole records; chunks are encoded in memory, then appended or rotated). Only one round
    is in memory at a time. Returns the rows written and the part file names, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    shard, size, in_part, written = 0, 0, 0, 0
    parts: list[str] = []
    fh: Any = None
    chunk = 4096
    try:
        for batch in rounds:
            n = len(batch.users)
            perm = rng.permutation(n)
            users, items = batch.users[perm], batch.items[perm]
            labels = batch.labels[perm].astype(np.float32)
            anchors = batch.anchors[perm] if batch.anchors is not None else None
            del perm, batch
            start = 0
            while start < n:
                if fh is not None and rows_per_part and in_part >= rows_per_part:
                    fh.close()
                    fh = None
                stop = min(start + chunk, n)
                if rows_per_part:  # the chunk ends where the part does
                    stop = min(stop, start + rows_per_part - (in_part if fh is not None else 0))
                buffer = io.BytesIO()
                rows = training_rows(user_rows, item_rows, users[start:stop], items[start:stop], context,
                                      anchors[start:stop] if anchors is not None else None)
                recordio.write_sparse(buffer, rows, labels[start:stop])
                del rows
                encoded = buffer.getbuffer()
                if len(encoded) > MAX_SHARD_BYTES and stop - start > 1:  # too big for a shard: smaller chunk
                    chunk = max(1, (stop - start) // 4)
                    del encoded, buffer
                    continue
                if fh is not None and size + len(encoded) > MAX_SHARD_BYTES:
                    fh.close()
                    fh = None
                if fh is None:
                    parts.append(f"part-{shard:05d}.pbr")
                    fh = (directory / parts[-1]).open("wb")
                    shard, size, in_part = shard + 1, 0, 0
                fh.write(encoded)
                size += len(encoded)
                in_part += stop - start
                # Chunks of about 1/16 of a shard: shards end close to the bound, writes stay efficient.
                per_row = max(len(encoded) / (stop - start), 1.0)
                chunk = max(1, min(1_000_000, int(MAX_SHARD_BYTES / 16 / per_row)))
                del encoded, buffer
                start = stop
            written += n
    finally:
        if fh is not None:
            fh.close()
    return written, parts


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        pd.DataFrame(columns).to_csv(path, index=False)
        return
    with path.open("wb") as fh:  # pyarrow would quote the header names
        fh.write((",".join(columns) + "\n").encode())
        pacsv.write_csv(pa.table(columns), fh, pacsv.WriteOptions(include_header=False))


def write_ids(path: Path, ids: np.ndarray) -> None:
    text = [str(v) for v in ids.tolist()]
    bad = next((t for t in text if "\n" in t or "\r" in t), None)
    if bad is not None:
        raise BadInputError("interactions/", f"the id {show(bad)} contains a line break")
    path.write_text("".join(t + "\n" for t in text), encoding="utf-8")


def clear_output(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test", "full", "meta", "shards"):
        shutil.rmtree(output / name, ignore_errors=True)
    (output / "manifest.json").unlink(missing_ok=True)


def write_meta(meta: Path, prep: Prepared, positive: np.ndarray, scoring: dict[str, sp.csr_matrix],
               item_rows: sp.csr_matrix, seen_train: sp.csr_matrix, seen_all: sp.csr_matrix,
               feature_values: dict[str, Any], *, has_holdout: bool, with_context: bool) -> dict[str, Any]:
    """The global files of ``meta/``; returns their entries of the manifest's ``files``."""
    meta.mkdir(parents=True, exist_ok=True)
    write_ids(meta / "user_ids.txt", prep.user_ids)
    write_ids(meta / "item_ids.txt", prep.item_ids)
    sp.save_npz(meta / "user_rows.npz", scoring["full"])
    user_rows_train = "meta/user_rows.npz"
    if with_context and has_holdout:
        user_rows_train = "meta/user_rows_train.npz"
        sp.save_npz(meta / "user_rows_train.npz", scoring["train"])
    sp.save_npz(meta / "item_rows.npz", item_rows)
    # Uncompressed: zlib would cost seconds per million interactions; load_npz reads both kinds.
    sp.save_npz(meta / "seen_train.npz", seen_train, compressed=False)
    sp.save_npz(meta / "seen_all.npz", seen_all, compressed=False)
    # The users who interacted with each item (pairs are unique): all data, the training part.
    np.save(meta / "popularity_all.npy", np.bincount(prep.items, minlength=prep.n_items).astype(np.int64))
    np.save(meta / "popularity_train.npy",
            np.bincount(prep.items[~prep.holdout], minlength=prep.n_items).astype(np.int64))
    (meta / "features.json").write_text(json.dumps(feature_values, indent=1), encoding="utf-8")
    if has_holdout:
        hold = prep.holdout
        write_csv(meta / "holdout.csv", {
            "user_index": prep.users[hold], "item_index": prep.items[hold],
            "rating": prep.ratings[hold] if prep.ratings is not None else np.ones(int(hold.sum())),
            "relevant": positive[hold].astype(np.int8),
        })
    return {
        "user_ids": "meta/user_ids.txt", "item_ids": "meta/item_ids.txt",
        "user_rows": "meta/user_rows.npz", "user_rows_train": user_rows_train,
        "item_rows": "meta/item_rows.npz",
        "seen_train": "meta/seen_train.npz", "seen_all": "meta/seen_all.npz",
        "holdout": "meta/holdout.csv" if has_holdout else None,
        "feature_values": "meta/features.json",
        "popularity_all": "meta/popularity_all.npy", "popularity_train": "meta/popularity_train.npy",
    }
