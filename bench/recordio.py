"""Benchmark: recpipe's recordio-protobuf writer/reader vs the SageMaker SDK writer.

FM-style one-hot rows (2-20 non-zeros, float32 values, float32 labels). The SDK writer is slow,
so it is timed on a subset (--sdk-rows) and its rows/s extrapolated; both are measured in this
run (the machine is shared: only the ratio is meaningful). Also checks that both writers agree
byte for byte on that subset.

    .venv/bin/python bench/recordio.py [--rows 1000000] [--sdk-rows 20000]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import time

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.disable(logging.WARNING)

from recpipe.formats import recordio  # noqa: E402


def make_rows(n: int, n_cols: int, seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    nnz = rng.integers(2, 21, n)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    indices = rng.integers(0, n_cols, int(indptr[-1])).astype(np.int32)
    data = np.ones(int(indptr[-1]), np.float32)
    labels = rng.integers(1, 6, n).astype(np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n_cols)), labels


def best_of(repeats: int, fn: object) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sdk-rows", type=int, default=20_000)
    parser.add_argument("--cols", type=int, default=100_000)
    args = parser.parse_args()

    from sagemaker.amazon.common import write_spmatrix_to_sparse_tensor

    matrix, labels = make_rows(args.rows, args.cols)
    subset, sub_labels = matrix[: args.sdk_rows], labels[: args.sdk_rows]

    sdk_buf = io.BytesIO()
    sdk_s = best_of(1, lambda: write_spmatrix_to_sparse_tensor(sdk_buf, subset, sub_labels))
    ours_sub = io.BytesIO()
    recordio.write_sparse(ours_sub, subset, sub_labels)
    identical = ours_sub.getvalue() == sdk_buf.getvalue()

    out = io.BytesIO()

    def write() -> None:
        out.seek(0)
        out.truncate()
        recordio.write_sparse(out, matrix, labels)

    ours_s = best_of(3, write)
    data = out.getvalue()
    read_s = best_of(2, lambda: recordio.read_sparse(data))
    back, back_labels = recordio.read_sparse(data)
    round_trip = (back != matrix).nnz == 0 and back_labels is not None and np.array_equal(back_labels, labels)

    sdk_rps = args.sdk_rows / sdk_s
    ours_rps = args.rows / ours_s
    read_rps = args.rows / read_s
    print(f"rows={args.rows} nnz={matrix.nnz} bytes={len(data)} ({len(data) / args.rows:.1f} B/row)")
    print(f"SDK writer (on the first {args.sdk_rows} rows): {sdk_rps:,.0f} rows/s")
    print(f"recpipe writer (all rows, best of 3): {ours_rps:,.0f} rows/s")
    print(f"recpipe reader (all rows, best of 2): {read_rps:,.0f} rows/s")
    print(f"byte-identical to the SDK on the subset: {identical}; read back exactly: {round_trip}")
    print(
        f"RESULT speedup={ours_rps / sdk_rps:.1f} ours_rows_per_s={ours_rps:.0f} "
        f"sdk_rows_per_s={sdk_rps:.0f} read_rows_per_s={read_rps:.0f} identical={int(identical)}"
    )


if __name__ == "__main__":
    main()
