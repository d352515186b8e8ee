"""Benchmark: recpipe's recordio-protobuf writers/reader vs the SageMaker SDK writers.

Sparse: FM-style one-hot rows (2-20 non-zeros, float32 values and labels), ``--rows`` of them
(default 1M). The SDK writer is slow (~50 us/row), so it runs on ``--sdk-rows`` rows only (say so
in any figure quoted); ours always writes all ``--rows`` rows. The machine is shared and noisy, so
the two are measured interleaved: ``--rounds`` rounds, each timing one slice of the SDK's rows and
then ``write_sparse`` on all rows; rates are total rows / total seconds per writer, so load that
comes and goes hits both alike. What is timed is what ships: there is one writer.

Dense: k-NN vectors (``--dense-rows`` x 64 float32), the SDK's ``write_numpy_to_dense_tensor`` on a
subset, ``write_dense`` on all, interleaved the same way. Byte identity with the SDK is checked on
the subsets; the sparse output is read back with ``read_sparse`` (timed too).

    .venv/bin/python bench/recordio.py [--rows 1000000] [--sdk-rows 20000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import time
from collections.abc import Callable
from typing import Any

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


def timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def write(writer: Callable[..., None], *args: Any) -> bytes:
    out = io.BytesIO()
    writer(out, *args)
    return out.getvalue()


class Meter:
    """Rows and seconds summed over rounds, per writer."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def add(self, name: str, rows: int, seconds: float) -> None:
        self.rows[name] = self.rows.get(name, 0) + rows
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rate(self, name: str) -> float:
        return self.rows[name] / self.seconds[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sdk-rows", type=int, default=20_000)
    parser.add_argument("--cols", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dense-rows", type=int, default=200_000)
    parser.add_argument("--dense-sdk-rows", type=int, default=20_000)
    args = parser.parse_args()

    from sagemaker.amazon.common import write_numpy_to_dense_tensor, write_spmatrix_to_sparse_tensor

    matrix, labels = make_rows(args.rows, args.cols)
    vectors = np.random.default_rng(1).normal(size=(args.dense_rows, 64)).astype(np.float32)

    # Byte identity on the SDK subsets.
    subset, sub_labels = matrix[: args.sdk_rows], labels[: args.sdk_rows]
    sdk_bytes = io.BytesIO()
    write_spmatrix_to_sparse_tensor(sdk_bytes, subset, sub_labels)
    identical = write(recordio.write_sparse, subset, sub_labels) == sdk_bytes.getvalue()
    dense_sdk = io.BytesIO()
    write_numpy_to_dense_tensor(dense_sdk, vectors[: args.dense_sdk_rows])
    identical &= write(recordio.write_dense, vectors[: args.dense_sdk_rows]) == dense_sdk.getvalue()

    meter = Meter()
    sparse_cuts = np.linspace(0, args.sdk_rows, args.rounds + 1).astype(int)
    dense_cuts = np.linspace(0, args.dense_sdk_rows, args.rounds + 1).astype(int)
    data = b""
    for r in range(args.rounds):
        lo, hi = int(sparse_cuts[r]), int(sparse_cuts[r + 1])
        part, part_labels = matrix[lo:hi], labels[lo:hi]
        meter.add("sdk", hi - lo, timed(write_spmatrix_to_sparse_tensor, io.BytesIO(), part, part_labels))
        start = time.perf_counter()
        data = write(recordio.write_sparse, matrix, labels)
        meter.add("ours", args.rows, time.perf_counter() - start)

        lo, hi = int(dense_cuts[r]), int(dense_cuts[r + 1])
        meter.add("dense_sdk", hi - lo, timed(write_numpy_to_dense_tensor, io.BytesIO(), vectors[lo:hi]))
        meter.add("dense_ours", args.dense_rows, timed(write, recordio.write_dense, vectors))
        meter.add("read", args.rows, timed(recordio.read_sparse, data))
        print(
            f"round {r + 1}/{args.rounds}: sdk {meter.rate('sdk'):,.0f} rows/s, "
            f"ours {meter.rate('ours'):,.0f} (running totals)",
            flush=True,
        )
    back, back_labels = recordio.read_sparse(data)
    round_trip = (back != matrix).nnz == 0 and back_labels is not None and np.array_equal(back_labels, labels)

    speedup = meter.rate("ours") / meter.rate("sdk")
    dense_speedup = meter.rate("dense_ours") / meter.rate("dense_sdk")
    print(f"sparse rows={args.rows} nnz={matrix.nnz} bytes={len(data)} ({len(data) / args.rows:.1f} B/row)")
    print(
        f"SDK sparse writer ({args.sdk_rows} rows in {args.rounds} slices): {meter.rate('sdk'):,.0f} rows/s"
    )
    print(f"recpipe write_sparse (all {args.rows} rows x {args.rounds}): {meter.rate('ours'):,.0f} rows/s")
    print(f"recpipe read_sparse: {meter.rate('read'):,.0f} rows/s")
    print(
        f"dense {args.dense_rows}x64: SDK ({args.dense_sdk_rows} rows) {meter.rate('dense_sdk'):,.0f} rows/s,"
        f" ours {meter.rate('dense_ours'):,.0f}"
    )
    print(f"byte-identical to the SDK on the subsets: {identical}; read back exactly: {round_trip}")
    print(
        f"RESULT speedup={speedup:.1f} dense_speedup={dense_speedup:.1f} "
        f"ours_rows_per_s={meter.rate('ours'):.0f} sdk_rows_per_s={meter.rate('sdk'):.0f} "
        f"read_rows_per_s={meter.rate('read'):.0f} identical={int(identical and round_trip)}"
    )


if __name__ == "__main__":
    main()
