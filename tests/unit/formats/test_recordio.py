"""recordio-protobuf: byte identity with the SageMaker SDK writers, round trips, errors."""

from __future__ import annotations

import io
import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.formats import recordio
from recpipe.formats.exceptions import RecordIOError

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
sm = pytest.importorskip("sagemaker.amazon.common")


def _random_csr(
    rng: np.random.Generator, n: int, cols: int, max_nnz: int, dtype: type = np.float32
) -> sp.csr_matrix:
    nnz = rng.integers(0, max_nnz + 1, n)
    nnz[rng.random(n) < 0.1] = 0  # empty rows
    nnz = np.minimum(nnz, cols)
    indptr = np.concatenate([[0], np.cumsum(nnz)])
    indices = np.concatenate([np.sort(rng.choice(cols, k, replace=False)) for k in nnz] + [np.zeros(0, int)])
    data = rng.normal(size=indptr[-1]).astype(dtype)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr), shape=(n, cols))


def _sdk_sparse(matrix: sp.spmatrix, labels: np.ndarray | None) -> bytes:
    buf = io.BytesIO()
    sm.write_spmatrix_to_sparse_tensor(buf, matrix, labels)
    return buf.getvalue()


def _ours_sparse(matrix: sp.spmatrix, labels: np.ndarray | None) -> bytes:
    buf = io.BytesIO()
    recordio.write_sparse(buf, matrix, labels)
    return buf.getvalue()


SHAPES = [(1, 1, 1), (50, 7, 7), (300, 200, 20), (200, 70_000, 30), (40, 3_000_000, 5), (64, 300, 300)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "cols", "max_nnz"), SHAPES)
@pytest.mark.parametrize("with_labels", [True, False])
def test_sparse_bytes_match_sdk(seed: int, n: int, cols: int, max_nnz: int, with_labels: bool) -> None:
    rng = np.random.default_rng(seed)
    matrix = _random_csr(rng, n, cols, max_nnz)
    labels = rng.normal(size=n).astype(np.float32) if with_labels else None
    ours = _ours_sparse(matrix, labels)
    assert ours == _sdk_sparse(matrix, labels)
    records = sm.read_records(io.BytesIO(ours))
    assert len(records) == n
    back, back_labels = recordio.read_sparse(ours)
    assert back.shape == matrix.shape and back.dtype == np.float32
    assert (back != matrix).nnz == 0
    if with_labels:
        assert labels is not None and back_labels is not None
        np.testing.assert_array_equal(back_labels, labels)
    else:
        assert back_labels is None


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "cols"), [(1, 1), (30, 5), (100, 64), (10, 600)])
@pytest.mark.parametrize("with_labels", [True, False])
def test_dense_bytes_match_sdk(seed: int, n: int, cols: int, with_labels: bool) -> None:
    rng = np.random.default_rng(seed)
    array = rng.normal(size=(n, cols)).astype(np.float32)
    array[rng.random((n, cols)) < 0.3] = 0.0
    labels = rng.normal(size=n).astype(np.float32) if with_labels else None
    ours = io.BytesIO()
    recordio.write_dense(ours, array, labels)
    sdk = io.BytesIO()
    sm.write_numpy_to_dense_tensor(sdk, array, labels)
    assert ours.getvalue() == sdk.getvalue()
    back, back_labels = recordio.read_dense(ours.getvalue())
    np.testing.assert_array_equal(back, array)
    assert (back_labels is None) == (labels is None)
    if labels is not None:
        np.testing.assert_array_equal(back_labels, labels)


@pytest.mark.parametrize(
    ("value_dtype", "label_dtype"),
    [
        (np.float64, np.float64),
        (np.float32, np.float64),
        (np.float64, np.float32),
        (int, int),
        (np.float32, int),
    ],
)
def test_other_sdk_dtypes_match(value_dtype: type, label_dtype: type) -> None:
    rng = np.random.default_rng(7)
    if value_dtype is int:
        matrix = sp.csr_matrix(rng.integers(-(2**31), 2**31 - 1, (40, 9)) * (rng.random((40, 9)) < 0.5))
    else:
        matrix = _random_csr(rng, 40, 1000, 12, value_dtype)
    labels = rng.integers(-5, 2**20, 40) if label_dtype is int else rng.normal(size=40).astype(label_dtype)
    ours = _ours_sparse(matrix, labels)
    assert ours == _sdk_sparse(matrix, labels)
    back, back_labels = recordio.read_sparse(ours)  # through the general per-record parser
    assert (back != matrix).nnz == 0
    np.testing.assert_array_equal(back_labels, labels)


def _frame_offsets(data: bytes) -> list[int]:
    """Byte offset of each frame (and the end), walking the headers."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + ((struct.unpack_from("<I", data, pos + 4)[0] + 3) & ~3)
    return [*offsets, pos]


def test_many_rows_and_very_uneven_rows_match_sdk_and_read_back() -> None:
    """Enough rows to be written and read in several pieces, with a few rows far longer than the
    rest; rows around every 1,000th are compared with the SDK's bytes for them."""
    rng = np.random.default_rng(3)
    matrix = sp.vstack(
        [
            _random_csr(rng, 40_000, 100_000, 3),
            _random_csr(rng, 3, 100_000, 5000),
            _random_csr(rng, 30_000, 100_000, 4),
        ]
    ).tocsr()
    labels = rng.normal(size=matrix.shape[0]).astype(np.float32)
    ours = _ours_sparse(matrix, labels)
    offsets = _frame_offsets(ours)
    assert len(offsets) == matrix.shape[0] + 1
    for start in [*range(0, matrix.shape[0] - 8, 997), 39_998, matrix.shape[0] - 8]:
        stop = start + 8
        assert ours[offsets[start] : offsets[stop]] == _sdk_sparse(matrix[start:stop], labels[start:stop])
    back, back_labels = recordio.read_sparse(io.BytesIO(ours))
    assert (back != matrix).nnz == 0
    np.testing.assert_array_equal(back_labels, labels)


def test_many_dense_rows_match_sdk() -> None:
    array = np.random.default_rng(14).normal(size=(9_000, 64)).astype(np.float32)  # > one piece of values
    ours = io.BytesIO()
    recordio.write_dense(ours, array)
    sdk = io.BytesIO()
    sm.write_numpy_to_dense_tensor(sdk, array)
    assert ours.getvalue() == sdk.getvalue()
    np.testing.assert_array_equal(recordio.read_dense(ours.getvalue())[0], array)


def test_csr_array_and_concatenated_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a, b = _random_csr(rng, 30, 50, 5), _random_csr(rng, 20, 50, 5)
    ya, yb = rng.random(30).astype(np.float32), rng.random(20).astype(np.float32)
    with (tmp_path / "a.pbr").open("wb") as f:
        recordio.write_sparse(f, sp.csr_array(a), ya)
    with (tmp_path / "b.pbr").open("wb") as f:
        recordio.write_sparse(f, b, yb)
    both = (tmp_path / "a.pbr").read_bytes() + (tmp_path / "b.pbr").read_bytes()
    m, y = recordio.read_sparse(both)
    assert (m != sp.vstack([a, b])).nnz == 0
    m2, y2 = recordio.read_sparse_files([tmp_path / "a.pbr", tmp_path / "b.pbr"])
    x, y3 = recordio.read_dense_files([tmp_path / "a.pbr", tmp_path / "b.pbr"])
    np.testing.assert_array_equal(x, m2.toarray())
    np.testing.assert_array_equal(y3, np.concatenate([ya, yb]))
    assert (m2 != m).nnz == 0
    np.testing.assert_array_equal(y, np.concatenate([ya, yb]))
    np.testing.assert_array_equal(y2, y)


def test_empty_inputs() -> None:
    m, y = recordio.read_sparse(b"")
    assert m.shape == (0, 0) and y is None
    assert _ours_sparse(sp.csr_matrix((0, 5), dtype=np.float32), None) == b""


def _frame(payload: bytes) -> bytes:
    pad = (-len(payload)) % 4
    return struct.pack("<II", recordio.MAGIC, len(payload)) + payload + b"\0" * pad


def _good() -> bytes:
    return _ours_sparse(sp.csr_matrix(np.array([[0, 1.5, 0], [2.0, 0, 3.0]], np.float32)), None)


def _sparse_record(labelled: bool, cols: int = 3) -> bytes:
    matrix = sp.csr_matrix(np.eye(1, cols, 1, dtype=np.float32))
    return _sdk_sparse(matrix, np.ones(1, np.float32) if labelled else None)


_TENSOR = b"\x0a\x04\x00\x00\xc0\x3f\x12\x01\x01\x1a\x01\x03"  # values [1.5], keys [1], shape [3]


def _record(tensor: bytes) -> bytes:
    value = b"\x12" + bytes([len(tensor)]) + tensor
    entry = b"\x0a\x06values\x12" + bytes([len(value)]) + value
    return b"\x0a" + bytes([len(entry)]) + entry


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x03\x04\x05\x06\x07\x08", r"wrong magic 0x04030201 \(expected 0xCED7230A\), at byte 0\."),
        (
            _good() + b"\x0a\x23\xd7\xce",
            rf"truncated record header \(4 bytes left, need 8\), at byte {len(_good())}\.",
        ),
        (_good()[:-6], r"truncated record \(\d+ bytes declared, \d+ left\), at byte [1-9]\d"),
        (_good() + b"\0" * 8, rf"wrong magic 0x00000000 .*, at byte {len(_good())}\."),
        (
            struct.pack("<II", recordio.MAGIC, (1 << 29) | 4) + b"\0" * 4,
            r"multi-part record \(dmlc continuation flag 1\), which the SDK never writes, at byte 0",
        ),
        (_frame(_record(_TENSOR)), None),  # (the hand-built record is right: the cases below break it)
        (
            _frame(b"\x30\x01"),
            r"record 0 \(frame at byte 0\): expected the features field \(tag 0x0a\) at byte 8",
        ),
        (_frame(b""), r"record 0 \(frame at byte 0\): expected the features field \(tag 0x0a\) at byte 8"),
        (_frame(b"\x0a\x10"), r"expected features entry within its message at byte 10"),
        (_frame(b"\x0a\x02\x08\x01"), r"expected the feature name 'values' at byte 10"),
        (_frame(_record(_TENSOR).replace(b"values", b"valuez")), r"expected the feature name 'values'"),
        (_frame(_record(_TENSOR).replace(b"\x12\x0c\x0a", b"\x42\x0c\x0a")), r"Float32, Float64 or Int32"),
        (_frame(_record(_TENSOR[6:] + _TENSOR[:6])), r"packed values \(1\), keys \(2\), shape \(3\) in this"),
        (
            _frame(_record(b"\x0d\x00\x00\xc0\x3f" + _TENSOR[6:])),
            r"packed values .* in this order",
        ),  # unpacked
        (
            _frame(_record(_TENSOR[:6] + b"\x12\x02\x01\x02" + _TENSOR[9:])),
            r"expected as many keys as values",
        ),
        (_frame(_record(_TENSOR[:6] + b"\x12\x01\x81" + _TENSOR[9:])), r"expected whole packed key varints"),
        (_frame(_record(b"\x0a\x03\x00\x00\xc0" + _TENSOR[6:])), r"expected whole packed Float32 values"),
        (
            _frame(_record(_TENSOR[:-1] + b"\x01")),
            r"record 0 \(frame at byte 0\) has key 1 outside its shape \[1\]",
        ),
        (
            _sparse_record(True) + _sparse_record(False),
            rf"record 1 \(frame at byte {len(_sparse_record(True))}\): expected a label, as record 0",
        ),
        (_sparse_record(False) + _sparse_record(True), r"record 1 \(frame at byte \d+\): expected no label"),
        (
            _sparse_record(False) + _sparse_record(False, 4),
            r"^recordio input: records differ in feature shape \[3, 4\]\.$",
        ),
        (
            _good()
            + _ours_sparse(sp.csr_matrix(np.ones((1, 3))), None),  # a Float64 record after Float32 ones
            rf"record 2 \(frame at byte {len(_good())}\): expected the tensor type of record 0 \(tag 0x12\)",
        ),
    ],
)
def test_bad_bytes_name_the_record_and_byte(data: bytes, message: str | None) -> None:
    if message is None:
        matrix, labels = recordio.read_sparse(data)
        assert matrix.toarray().tolist() == [[0, 1.5, 0]] and labels is None
        return
    with pytest.raises(RecordIOError, match=message):
        recordio.read_sparse(data)


def test_a_tensor_type_change_between_pieces_is_refused() -> None:
    """Within a piece of records parsed at once the record is named (above); across pieces, the types."""
    first = _ours_sparse(sp.csr_matrix(np.eye(1 << 15, 3, dtype=np.float32)), None)  # one whole piece
    then = _ours_sparse(sp.csr_matrix(np.eye(1, 3, dtype=np.float64)), None)
    message = (
        r"^recordio input: records differ in tensor types: float32 values, no labels; "
        r"float64 values, no labels\.$"
    )
    with pytest.raises(RecordIOError, match=message):
        recordio.read_sparse(first + then)


def test_errors_count_records_across_pieces() -> None:
    """A bad record far into a file is named by its index in the file."""
    matrix = sp.csr_matrix(np.eye(40_000, 3, dtype=np.float32))
    data = bytearray(_ours_sparse(matrix, None))
    offsets = _frame_offsets(bytes(data))
    data[offsets[39_999] + 8] = 0x30  # the features tag of the last record
    with pytest.raises(RecordIOError, match=rf"record 39999 \(frame at byte {offsets[39_999]}\)"):
        recordio.read_sparse(bytes(data))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: recordio.write_sparse(io.BytesIO(), np.ones((2, 2))), "expects a scipy.sparse matrix"),
        (lambda: recordio.write_dense(io.BytesIO(), np.ones(3, np.float32)), "must be 2-dimensional"),
        (lambda: recordio.write_dense(io.BytesIO(), np.ones((2, 2), np.int8)), "dtype must be float32"),
        (
            lambda: recordio.write_dense(io.BytesIO(), np.ones((2, 2), np.float32), np.ones(3, np.float32)),
            r"vector of 2 values",
        ),
        (
            lambda: recordio.write_dense(io.BytesIO(), np.full((1, 2), 2**40), None),
            r"Int32 tensor values must fit in int32",
        ),
    ],
)
def test_writer_argument_errors(call: object, message: str) -> None:
    with pytest.raises(RecordIOError, match=message):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_int_and_float64_records_with_negative_labels(seed: int) -> None:
    rng = np.random.default_rng(20 + seed)
    for array in (rng.integers(-(2**31), 2**31 - 1, (50, 9)), rng.normal(size=(50, 9))):
        labels = rng.integers(-(2**31), 2**31 - 1, 50)
        ours = io.BytesIO()
        recordio.write_dense(ours, array, labels)
        sdk = io.BytesIO()
        sm.write_numpy_to_dense_tensor(sdk, array, labels)
        assert ours.getvalue() == sdk.getvalue()
        back, back_labels = recordio.read_dense(ours.getvalue())
        np.testing.assert_array_equal(back, array)
        np.testing.assert_array_equal(back_labels, labels)


def test_file_readers_check_labels_and_widths(tmp_path: Path) -> None:
    for name, labels, cols in (("a", np.ones(2, np.float32), 4), ("b", None, 4), ("c", None, 5)):
        with (tmp_path / f"{name}.pbr").open("wb") as f:
            recordio.write_dense(f, np.ones((2, cols), np.float32), labels)
    with pytest.raises(RecordIOError, match=r"'.*b\.pbr' has no labels but other files do"):
        recordio.read_dense_files([tmp_path / "a.pbr", tmp_path / "b.pbr"])
    with pytest.raises(RecordIOError, match=r"different widths \[4, 5\]"):
        recordio.read_sparse_files([tmp_path / "b.pbr", tmp_path / "c.pbr"])
