"""Does Repackage and Publish's number crunching fit a Lambda at 1M users? Figures, not a test.

Measured in one process, each against a baseline doing the least possible work on the same data:

- user vectors for 1,000,000 users (one-hot id + 3 side features, k = 64 -> 65 dims), 4 shards:
  ``recpipe.vectors.user_vectors`` per shard vs the bare sparse product ``rows @ V``;
  plus recordio encoding of the shards (``recpipe.formats.recordio.write_dense``);
- ranking k-NN output (k = 220 = top_n 20 + margin 200) with 100 seen items per user for 100,000
  users: ``recpipe.topn.rank`` vs a bare per-row ``np.argsort`` of the scores;
- building the DynamoDB rows (``lambdas.publish.publish.user_rows``) for those users.

Peak memory is the process's max RSS. Extrapolated: seconds per 1M users.

    .venv/bin/python bench/repackage_publish.py [--quick]

Ends with ``RESULT user_vectors_s_per_1m=<s> vectors_vs_matmul=<ratio> rank_s_per_1m=<s>
rank_vs_argsort=<ratio> rows_s_per_1m=<s> peak_rss_mb=<MB>``.
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import numpy as np
import scipy.sparse as sp

from lambdas.publish.publish import user_rows
from recpipe import topn, vectors
from recpipe.formats import recordio


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10x fewer users")
    args = parser.parse_args()
    n_users = 100_000 if args.quick else 1_000_000
    n_rank = 10_000 if args.quick else 100_000
    n_items, k_factors, side = 50_000, 64, 40
    rng = np.random.default_rng(0)

    # --- Repackage: user vectors ---------------------------------------------------------------
    feature_dim = n_users + n_items + side
    ids = np.arange(n_users)
    side_cols = n_users + n_items + rng.integers(0, side, size=(n_users, 3))
    rows = sp.csr_matrix(
        (np.ones(4 * n_users), (np.repeat(ids, 4), np.column_stack([ids, side_cols]).ravel())),
        shape=(n_users, feature_dim),
    )
    rows.sum_duplicates()
    V = rng.normal(scale=0.1, size=(feature_dim, k_factors)).astype(np.float32)
    shards = vectors.shard_ranges(n_users, 4)

    def bare() -> None:
        for a, b in shards:
            rows[a:b] @ V

    def ours() -> int:
        size = 0
        for a, b in shards:
            size += vectors.user_vectors(rows[a:b], V).nbytes
        return size

    def encode() -> int:
        size = 0
        for a, b in shards:
            buf = io.BytesIO()
            recordio.write_dense(buf, vectors.user_vectors(rows[a:b], V))
            size += buf.tell()
        return size

    _, t_bare = timed(bare)
    _, t_vec = timed(ours)
    encoded, t_enc = timed(encode)
    scale = 1_000_000 / n_users
    print(f"user vectors, {n_users:,} users x {k_factors + 1} dims in 4 shards: {t_vec:.2f} s "
          f"(bare rows @ V: {t_bare:.2f} s); with recordio encoding: {t_enc:.2f} s, {encoded / 1e6:.0f} MB")

    # --- Publish: ranking and rows ----------------------------------------------------------------
    k = 220
    base = np.stack([rng.choice(n_items, k, replace=False) for _ in range(1000)])
    labels = base[rng.integers(0, 1000, n_rank)]
    distances = rng.normal(size=(n_rank, k)).astype(np.float32)
    seen_cols = np.concatenate([labels[:, :50], rng.integers(0, n_items, size=(n_rank, 50))], axis=1)
    seen = sp.csr_matrix((np.ones(seen_cols.size), (np.repeat(np.arange(n_rank), 100), seen_cols.ravel())),
                         shape=(n_rank, n_items))
    seen.sum_duplicates()
    seen.data[:] = 1
    popularity = np.asarray(seen.sum(axis=0)).ravel()

    _, t_sort = timed(lambda: np.argsort(-distances, axis=1))
    ranked, t_rank = timed(topn.rank, labels, distances, seen, 20, popularity)
    user_ids = [f"user-{i}" for i in range(n_rank)]
    item_attributes = [{"S": f"item-{i}"} for i in range(n_items)]
    count, t_rows = timed(lambda: sum(1 for _ in user_rows(ranked, user_ids, item_attributes, "r1",
                                                           "2026-01-01T00:00:00Z", 1_800_000_000)))
    rank_scale = 1_000_000 / n_rank
    print(f"rank {n_rank:,} users x k={k} (100 seen each): {t_rank:.2f} s (bare argsort: {t_sort:.2f} s); "
          f"topped up: {ranked.n_topped_up}")
    print(f"DynamoDB rows for {count:,} users: {t_rows:.2f} s")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    print(
        f"RESULT user_vectors_s_per_1m={t_vec * scale:.2f} vectors_vs_matmul={t_vec / t_bare:.2f} "
        f"rank_s_per_1m={t_rank * rank_scale:.1f} rank_vs_argsort={t_rank / t_sort:.2f} "
        f"rows_s_per_1m={t_rows * rank_scale:.1f} peak_rss_mb={peak_rss_mb():.0f}"
    )


if __name__ == "__main__":
    main()
