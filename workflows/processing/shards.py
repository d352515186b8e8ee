"""Per-shard files: everything one worker (a Publish child, an Evaluate shard, a transform input)
needs for its range of users, so that no worker loads the global per-user files.

``shards/serve.json`` lists the user shards (contiguous user index ranges of at most
``processing.users_per_shard``), then the item shards (item index ranges of the same bound);
``shards/eval.json`` the shards of the evaluation sample (start/stop are positions in the sample).
Under each user shard's ``prefix``: ``user_ids.txt``, ``user_index.npy`` (int64 global index of
each row), ``user_rows.npz`` (the model's scoring rows), ``seen.npz`` (seen items; serve: all
data, eval: the training part) and, for eval shards, ``holdout.csv`` (that shard's users only).
Every file is a row slice of the global matrices (CSR row slicing copies only those rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from workflows.processing.prepare import Prepared
from workflows.processing.write import write_csv, write_ids


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ..., (.., n)]``: ceil(n / size) ranges (none when n = 0)."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _write_user_shard(directory: Path, prep: Prepared, users: np.ndarray, rows: sp.csr_matrix,
                      seen: sp.csr_matrix) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_ids(directory / "user_ids.txt", prep.user_ids[users])
    np.save(directory / "user_index.npy", users.astype(np.int64))
    sp.save_npz(directory / "user_rows.npz", rows)
    # Uncompressed as the global seen files: zlib would cost seconds per million interactions.
    sp.save_npz(directory / "seen.npz", seen, compressed=False)


def write_shards(output: Path, prep: Prepared, positive: np.ndarray, scoring: dict[str, sp.csr_matrix],
                 seen_all: sp.csr_matrix, seen_train: sp.csr_matrix, users_per_shard: int,
                 sample: np.ndarray | None) -> dict[str, Any]:
    """Write ``shards/``; returns the manifest's ``shards`` entry. ``sample`` = the evaluation users
    (sorted user indices), None without a holdout."""
    root = output / "shards"
    serve: list[dict[str, Any]] = []
    for shard, (start, stop) in enumerate(shard_ranges(prep.n_users, users_per_shard)):
        prefix = f"shards/serve/{shard:05d}/"
        _write_user_shard(output / prefix, prep, np.arange(start, stop, dtype=np.int64),
                          scoring["full"][start:stop], seen_all[start:stop])
        serve.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
    serve += [{"kind": "items", "shard": shard, "start": start, "stop": stop}
              for shard, (start, stop) in enumerate(shard_ranges(prep.n_items, users_per_shard))]
    root.mkdir(parents=True, exist_ok=True)
    (root / "serve.json").write_text(json.dumps(serve, indent=1) + "\n", encoding="utf-8")
    entry: dict[str, Any] = {"users_per_shard": users_per_shard, "serve": "shards/serve.json", "eval": None,
                             "user_shards": sum(s["kind"] == "users" for s in serve),
                             "item_shards": sum(s["kind"] == "items" for s in serve), "eval_shards": 0}
    if sample is None:
        return entry
    # The holdout of user u is hold_rows[hold_start[u]:hold_start[u] + hold_count[u]] (users sorted).
    hold_rows = np.flatnonzero(prep.holdout)
    hold_count = np.bincount(prep.users[hold_rows], minlength=prep.n_users)
    hold_start = np.cumsum(hold_count) - hold_count
    evaluation: list[dict[str, Any]] = []
    for shard, (start, stop) in enumerate(shard_ranges(len(sample), users_per_shard)):
        prefix = f"shards/eval/{shard:05d}/"
        users = sample[start:stop]
        _write_user_shard(output / prefix, prep, users, scoring["train"][users], seen_train[users])
        count = hold_count[users]
        offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        picked = hold_rows[np.repeat(hold_start[users], count) + offsets]
        write_csv(output / prefix / "holdout.csv", {
            "user_index": prep.users[picked], "item_index": prep.items[picked],
            "rating": prep.ratings[picked] if prep.ratings is not None else np.ones(len(picked)),
            "relevant": positive[picked].astype(np.int8),
        })
        evaluation.append({"kind": "users", "shard": shard, "start": start, "stop": stop, "prefix": prefix})
    (root / "eval.json").write_text(json.dumps(evaluation, indent=1) + "\n", encoding="utf-8")
    entry.update({"eval": "shards/eval.json", "eval_shards": len(evaluation)})
    return entry
