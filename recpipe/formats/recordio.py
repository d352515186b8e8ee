"""recordio-protobuf, the input format of the SageMaker built-in algorithms, written and read with numpy.

A file is a sequence of MXNet/dmlc RecordIO frames::

    uint32 magic 0xCED7230A | uint32 length | payload (length bytes) | zero padding to 4 bytes

and each payload is a serialised ``aialgs.data.Record`` protobuf (``sagemaker/amazon/record.proto``):
``features["values"]`` holds a tensor (``values``; for sparse rows also ``keys`` and
``shape = [n_columns]``) and ``label["values"]`` an optional one-element tensor.

Writer. The bytes are exactly those of ``sagemaker.amazon.common.write_spmatrix_to_sparse_tensor``
and ``write_numpy_to_dense_tensor`` (same dtype rules: float32 -> Float32Tensor, float64 ->
Float64Tensor, the platform ``int`` (int64) -> Int32Tensor), built for a whole chunk of rows at
once instead of one protobuf object per row (the SDK writes ~20k rows/s; this, 30x more or better).
Every field's length is known up front, so every row's frame offset is too, and each field is
written for all rows of the chunk with one scatter per byte column: ``out[pos + j] = column j``.
A varint column is written at the width of the chunk's longest value even where a value is
shorter: the extra bytes land at most 4 bytes past the field, on bytes that belong to a field
written later (fields go in frame order, padding and then the frame headers last; the columns of a
list of varints last to first), so they are overwritten and no byte mask is ever built.

Reader: :mod:`recpipe.formats.recordio_read` (its names are re-exported here, so
``recpipe.formats.recordio`` stays the one import for both directions); the frame and tensor
constants both use: :mod:`recpipe.formats._recordio_layout`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import scipy.sparse as sp

from recpipe.formats._recordio_layout import DTYPE, F4, F8, I4, MAGIC, TAG, VALUES_KEY, WIDTH
from recpipe.formats.exceptions import RecordIOError
from recpipe.formats.recordio_read import read_dense, read_dense_files, read_sparse, read_sparse_files

__all__ = ["MAGIC", "RecordIOError", "read_dense", "read_dense_files", "read_sparse", "read_sparse_files",
           "write_dense", "write_sparse"]  # fmt: skip


def _resolve_type(dtype: np.dtype[Any], what: str) -> str:
    for kind, accepted in ((I4, np.dtype(int)), (F8, np.dtype(np.float64)), (F4, np.dtype(np.float32))):
        if dtype == accepted:
            return kind
    raise RecordIOError(
        f"The {what} dtype must be float32, float64 or int64 (written as Int32Tensor), got {dtype}."
    )


# --------------------------------------------------------------------------------------------------
# varints


def _varint_len(x: np.ndarray) -> np.ndarray:
    """Bytes of the protobuf varint of each value (non-negative ints, or uint64)."""
    out = np.ones(x.shape, np.int64)
    top = int(x.max()) if x.size else 0
    k = 1
    while k < 10 and top >= 1 << (7 * k):
        out += x >= x.dtype.type(1 << (7 * k))  # compared in x's own type: no conversion pass
        k += 1
    return out


def _varint_columns(x: np.ndarray) -> np.ndarray:
    """(m, width) uint8: the varint of each value, zeros after it; width = the longest varint."""
    top = int(x.max()) if x.size else 0
    width = max(1, -(-top.bit_length() // 7))
    part: Any = x.astype(np.uint32 if width <= 4 else np.uint64, copy=False)
    seven, low = part.dtype.type(7), part.dtype.type(0x7F)
    out = np.empty((x.size, width), np.uint8)
    for j in range(width):
        byte = (part & low).astype(np.uint8)
        part = part >> seven
        if j + 1 < width:
            byte |= (part != 0).view(np.uint8) << np.uint8(7)
        out[:, j] = byte
    return out


def _segment_sums(per_item: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    csum = np.zeros(per_item.size + 1, np.int64)
    np.cumsum(per_item, out=csum[1:])
    return csum[indptr[1:]] - csum[indptr[:-1]]


# --------------------------------------------------------------------------------------------------
# writer


@dataclass
class _Rows:
    """Rows in CSR form (``keys`` is None for dense rows)."""

    indptr: np.ndarray  # int64, starts at 0
    keys: np.ndarray | None  # column indices
    values: np.ndarray
    value_type: str
    n_cols: int
    labels: np.ndarray | None
    label_type: str | None


def _int32_as_varints(values: np.ndarray, what: str) -> np.ndarray:
    """Int32 tensor values as protobuf writes them: int64 sign-extended, as uint64."""
    ints = values.reshape(-1).astype(np.int64, copy=False)
    if ints.size and (ints.min() < -(2**31) or ints.max() >= 2**31):
        raise RecordIOError(
            f"Int32 tensor {what} must fit in int32, got values in [{ints.min()}, {ints.max()}]."
        )
    return ints.view(np.uint64)


def _shape_field(n_cols: int) -> bytes:
    shape = _varint_columns(np.array([n_cols], np.uint64)).tobytes()
    return b"\x1a" + bytes([len(shape)]) + shape


def _label_size(rows: _Rows) -> np.ndarray | int:
    if rows.labels is None:
        return 0
    if rows.label_type == I4:  # 0x12 len | entry (14 + varint) with one-byte inner lengths
        return 16 + _varint_len(_int32_as_varints(rows.labels, "labels"))
    return 16 + WIDTH[str(rows.label_type)]


def _scatter(out: np.ndarray, pos: np.ndarray, columns: np.ndarray, lens: np.ndarray | None) -> None:
    """``out[pos[i] + j] = columns[i, j]`` for j < lens[i] (every column when lens is None).

    Bytes past a row's length are written anyway when that spills at most 4 bytes (see the module
    docstring: they are overwritten later); columns go last to first, so in a list of varints the
    spill of one onto the next is overwritten by the next's own columns.
    """
    width = columns.shape[1]
    if _regular(pos) and (lens is None or bool(np.all(lens == width))):
        # (rows of one layout, e.g. dense ones: row i's bytes at pos[0] + i * step) one strided copy
        _rows_view(out, pos, width)[...] = columns
        return
    shortest = width if lens is None or lens.size == 0 else int(lens.min())
    for j in range(width - 1, -1, -1):
        target = out[j:]
        if j < shortest or width <= 5:
            target[pos] = columns[:, j]
        else:  # (10-byte varints of negative Int32 values: rare) exact bytes only
            keep = lens > j  # type: ignore[operator]
            target[pos[keep]] = columns[keep, j]


def _regular(pos: np.ndarray) -> bool:
    """Whether the positions are evenly spaced (then a strided view reaches them all)."""
    return pos.size > 1 and pos[1] > pos[0] and bool(np.all(np.diff(pos) == pos[1] - pos[0]))


def _rows_view(out: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """(n, width) view of ``out`` whose row i starts at ``pos[i]`` (evenly spaced positions)."""
    step = int(pos[1] - pos[0])
    return np.lib.stride_tricks.as_strided(out[int(pos[0]) :], (pos.size, width), (step, 1))


class _Cursor:
    """Per-row write position in a chunk's output buffer; fields are written in frame order."""

    def __init__(self, out: np.ndarray, pos: np.ndarray) -> None:
        self.out, self.pos = out, pos

    def put(self, columns: np.ndarray, lens: Any = None, rows: np.ndarray | None = None) -> None:
        """One field per row (``rows``: a mask of the rows that have it)."""
        everyone = slice(None) if rows is None else rows
        _scatter(self.out, self.pos[everyone], columns, lens)
        self.pos[everyone] += columns.shape[1] if lens is None else lens

    def const(self, data: bytes, rows: np.ndarray | None = None) -> None:
        n = self.pos.size if rows is None else int(np.count_nonzero(rows))
        self.put(np.broadcast_to(np.frombuffer(data, np.uint8), (n, len(data))), rows=rows)

    def varint(self, x: np.ndarray, rows: np.ndarray | None = None) -> None:
        x = x if rows is None else x[rows]
        self.put(_varint_columns(x), _varint_len(x), rows)

    def ragged(
        self, columns: np.ndarray, lens: np.ndarray | None, indptr: np.ndarray, size: np.ndarray
    ) -> None:
        """A list per row (element e: ``columns[e]``, of ``lens[e]`` bytes) taking ``size`` bytes."""
        width = columns.shape[1]
        counts = np.diff(indptr)
        if lens is None and _regular(self.pos) and bool(np.all(counts == counts[0])):
            _rows_view(self.out, self.pos, int(counts[0]) * width)[...] = columns.reshape(counts.size, -1)
            self.pos += size
            return
        if lens is None:
            offsets = np.arange(0, width * columns.shape[0] + 1, width, dtype=np.int64)
        else:
            offsets = np.zeros(lens.size + 1, np.int64)
            np.cumsum(lens, out=offsets[1:])
        dst = offsets[:-1] + np.repeat(self.pos - offsets[indptr[:-1]], counts)
        _scatter(self.out, dst, columns, lens)
        self.pos += size


def _label_columns(rows: _Rows, cursor: _Cursor) -> None:
    labels = np.asarray(rows.labels)
    if rows.label_type == I4:
        u = _int32_as_varints(labels, "labels")
        lv = _varint_len(u)  # label entry, its Value, the tensor, its values: each length prefixed
        for piece in (b"\x12", 14 + lv, VALUES_KEY, 4 + lv, bytes([TAG[I4]]), 2 + lv, b"\x0a", lv, u):
            cursor.const(piece) if isinstance(piece, bytes) else cursor.varint(piece)
        return
    kind = str(rows.label_type)
    width = WIDTH[kind]
    cursor.const(
        bytes([0x12, 14 + width]) + VALUES_KEY + bytes([4 + width, TAG[kind], 2 + width, 0x0A, width])
    )
    cursor.put(labels.astype(DTYPE[kind]).reshape(-1, 1).view(np.uint8))


def _encode(rows: _Rows) -> np.ndarray:
    """The bytes of a chunk of rows: first every row's nested message lengths (what the protobuf
    length prefixes hold), hence every frame's offset; then each field of every row."""
    nnz = np.diff(rows.indptr)
    present = nnz > 0
    has = None if bool(np.all(present)) else present  # (rows without values omit those fields)
    value_lens: np.ndarray | None = None
    if rows.value_type == I4:  # varints
        values = _int32_as_varints(rows.values, "values")
        value_lens = _varint_len(values)
        value_bytes = _varint_columns(values)
        vb = _segment_sums(value_lens, rows.indptr)
    else:
        values = rows.values.reshape(-1).astype(DTYPE[rows.value_type], copy=False)
        value_bytes = values.view(np.uint8).reshape(values.size, values.itemsize)
        vb = values.itemsize * nnz
    tensor = present * (1 + _varint_len(vb) + vb)
    if rows.keys is not None:
        keys = rows.keys  # CSR indices: non-negative, written as they are (uint64 if negative)
        if keys.dtype.kind != "i" or (keys.size and int(keys.min()) < 0):
            keys = keys.astype(np.uint64)
        key_lens = _varint_len(keys)
        kb = _segment_sums(key_lens, rows.indptr)
        tensor = tensor + present * (1 + _varint_len(kb) + kb) + len(_shape_field(rows.n_cols))
    value = 1 + _varint_len(tensor) + tensor
    entry = len(VALUES_KEY) + _varint_len(value) + value
    record = 1 + _varint_len(entry) + entry + _label_size(rows)
    frame = 8 + ((record + 3) & ~3)

    frame_start = np.cumsum(frame) - frame
    total = int(frame.sum())
    out = np.zeros(total + 16, np.uint8)  # (room for spills past the last frame)
    c = _Cursor(out, frame_start + 8)
    c.const(b"\x0a")
    c.varint(entry)
    c.const(VALUES_KEY)
    c.varint(value)
    c.const(bytes([TAG[rows.value_type]]))
    c.varint(tensor)
    c.const(b"\x0a", has)
    c.varint(vb, has)
    c.ragged(value_bytes, value_lens, rows.indptr, vb)
    if rows.keys is not None:
        c.const(b"\x12", has)
        c.varint(kb, has)
        c.ragged(_varint_columns(keys), key_lens, rows.indptr, kb)
        c.const(_shape_field(rows.n_cols))
    if rows.labels is not None:
        _label_columns(rows, c)
    c.const(b"\0\0\0")  # padding (over anything spilled there)
    words = out.view("<u4")  # frames start 4-aligned: headers last, one word each
    words[frame_start // 4] = MAGIC
    words[frame_start // 4 + 1] = record
    return out[:total]


# Rows per chunk: bounds the chunk's working set (a few times its output, ~120 bytes a row for FM).
_CHUNK_ROWS = 1 << 15
_CHUNK_VALUES = 1 << 19


def _chunks(indptr: np.ndarray) -> Iterator[tuple[int, int]]:
    start, n = 0, indptr.size - 1
    while start < n:
        by_values = int(np.searchsorted(indptr, indptr[start] + _CHUNK_VALUES, side="right")) - 1
        yield start, (start := max(start + 1, min(start + _CHUNK_ROWS, by_values, n)))


def _check_labels(labels: np.ndarray | None, n_rows: int) -> str | None:
    if labels is None:
        return None
    if np.ndim(labels) != 1 or len(labels) != n_rows:
        raise RecordIOError(
            f"The labels must be a vector of {n_rows} values (one per row), got shape {np.shape(labels)}."
        )
    return _resolve_type(np.asarray(labels).dtype, "labels")


def _sparse_rows(matrix: Any, labels: np.ndarray | None) -> _Rows:
    if not sp.issparse(matrix):
        raise RecordIOError(f"write_sparse expects a scipy.sparse matrix, got {type(matrix).__name__}.")
    if len(matrix.shape) != 2:
        raise RecordIOError(f"The matrix must be 2-dimensional, got shape {matrix.shape}.")
    value_type = _resolve_type(matrix.dtype, "matrix")
    csr = matrix.tocsr()
    return _Rows(
        csr.indptr.astype(np.int64), csr.indices, csr.data, value_type, int(csr.shape[1]),
        None if labels is None else np.asarray(labels), _check_labels(labels, csr.shape[0]),
    )  # fmt: skip


def _dense_rows(array: Any, labels: np.ndarray | None) -> _Rows:
    array = np.asarray(array)
    if array.ndim != 2:
        raise RecordIOError(f"The array must be 2-dimensional, got shape {array.shape}.")
    value_type = _resolve_type(array.dtype, "array")
    n_rows, n_cols = array.shape
    return _Rows(
        np.arange(n_rows + 1, dtype=np.int64) * n_cols, None, np.ascontiguousarray(array).reshape(-1),
        value_type, int(n_cols), None if labels is None else np.asarray(labels),
        _check_labels(labels, n_rows),
    )  # fmt: skip


def _slice(rows: _Rows, start: int, stop: int) -> _Rows:
    lo, hi = int(rows.indptr[start]), int(rows.indptr[stop])
    keys, labels = rows.keys, rows.labels
    return replace(
        rows, indptr=rows.indptr[start : stop + 1] - lo, values=rows.values[lo:hi],
        keys=None if keys is None else keys[lo:hi], labels=None if labels is None else labels[start:stop],
    )  # fmt: skip


def _write_rows(fileobj: IO[bytes], rows: _Rows) -> None:
    for start, stop in _chunks(rows.indptr):
        fileobj.write(_encode(_slice(rows, start, stop)).data)


def write_sparse(fileobj: IO[bytes], matrix: Any, labels: np.ndarray | None = None) -> None:
    """Write each row of a scipy sparse matrix as one sparse record (keys, values, shape, label).

    Byte-identical to ``sagemaker.amazon.common.write_spmatrix_to_sparse_tensor``.
    """
    _write_rows(fileobj, _sparse_rows(matrix, labels))


def write_dense(fileobj: IO[bytes], array: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write each row of a 2-D array as one dense record (values, label).

    Byte-identical to ``sagemaker.amazon.common.write_numpy_to_dense_tensor``.
    """
    _write_rows(fileobj, _dense_rows(array, labels))
