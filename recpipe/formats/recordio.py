"""recordio-protobuf, the input format of the SageMaker built-in algorithms, encoded with numpy.

Self-contained on purpose: this module imports only numpy, scipy and the standard library, because
it is copied as ``recpipe_recordio.py`` next to the processing script inside a SageMaker container.

Format
------
A file is a sequence of MXNet/dmlc RecordIO frames::

    uint32 magic 0xCED7230A | uint32 length | payload (length bytes) | zero padding to 4 bytes

and each payload is a serialised ``aialgs.data.Record`` protobuf (``sagemaker/amazon/record.proto``):
``features["values"]`` holds a ``Float32Tensor`` (``values``, and for sparse rows ``keys`` and
``shape = [n_columns]``) and ``label["values"]`` an optional one-element tensor.

The writers produce exactly the bytes of ``sagemaker.amazon.common.write_spmatrix_to_sparse_tensor``
and ``write_numpy_to_dense_tensor`` (same dtype rules: float32 -> Float32Tensor, float64 ->
Float64Tensor, the platform ``int`` (int64) -> Int32Tensor), but build whole chunks of records
with array operations instead of one protobuf object per row. When numba is installed (it is not
a dependency, and not in the processing container or the Lambdas), large writes use a compiled
loop that produces the same bytes; the numpy path stays the reference and the fallback.

The readers parse the layout these writers produce with array operations; any other valid
encoding (other field order, unpacked repeated fields, float64/int32 tensors, dmlc multi-part
frames) goes through a per-record parser, which is also the one that reports errors with the byte
offset of the problem.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import scipy.sparse as sp

__all__ = [
    "MAGIC",
    "RecordIOError",
    "read_dense",
    "read_dense_files",
    "read_sparse",
    "read_sparse_files",
    "record_sizes_dense",
    "record_sizes_sparse",
    "write_dense",
    "write_dense_shards",
    "write_sparse",
    "write_sparse_shards",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


class RecordIOError(ValueError):
    """Invalid recordio-protobuf input (bad bytes) or writer arguments."""


# --------------------------------------------------------------------------------------------------
# dtype rules (the same as sagemaker's ``_resolve_type``)

_F4, _F8, _I4 = "Float32", "Float64", "Int32"
# Field number of each tensor type inside the ``Value`` oneof.
_TENSOR_FIELD = {_F4: 2, _F8: 3, _I4: 7}
_FIELD_TENSOR = {v: k for k, v in _TENSOR_FIELD.items()}


def _resolve_type(dtype: np.dtype[Any], what: str) -> str:
    if dtype == np.dtype(int):
        return _I4
    if dtype == np.dtype(np.float64):
        return _F8
    if dtype == np.dtype(np.float32):
        return _F4
    raise RecordIOError(
        f"The {what} dtype must be float32, float64 or int64 (written as Int32Tensor), got {dtype}."
    )


# --------------------------------------------------------------------------------------------------
# varints, vectorised


def _varint_len(x: np.ndarray) -> np.ndarray:
    """Number of bytes of the protobuf varint of each uint64 in ``x`` (int64 array)."""
    x = np.asarray(x)
    if x.size == 0:
        return np.ones(x.shape, dtype=np.int64)
    if x.dtype.kind != "i" or int(x.min()) < 0:  # (negative ints: as uint64, 10 bytes)
        x = x.astype(np.uint64, copy=False)
    top = int(x.max())
    out = np.ones(x.shape, dtype=np.int8 if top < 1 << 63 else np.int64)
    k = 1
    while k < 10 and top >= (1 << (7 * k)):
        out += x >= x.dtype.type(1 << (7 * k))  # compared in x's own type: no conversion pass
        k += 1
    return out.astype(np.int64, copy=False)


def _varint_block(x: np.ndarray, lens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Varints of ``x`` as an (n, width) uint8 block (bytes past each length are 0) and the lengths."""
    x = np.asarray(x).reshape(-1)
    top = int(x.max()) if x.size else 0
    # Work in the narrowest unsigned type (uint64 sign-extended int32 values need all 10 bytes).
    work = x.astype(np.uint32 if top < 1 << 32 else np.uint64, copy=False)
    width = 1
    while width < 10 and top >= 1 << (7 * width):
        width += 1
    out = np.empty((width, x.size), dtype=np.uint8)
    more = np.zeros(x.size, dtype=bool)
    count = np.ones(x.size, dtype=np.int64)
    seven: Any = work.dtype.type(7)
    low: Any = work.dtype.type(0x7F)
    part = work
    for j in range(width):
        np.bitwise_and(part, low, out=out[j], casting="unsafe")
        if j + 1 < width:
            part = part >> seven
            np.not_equal(part, 0, out=more)
            out[j] |= more.view(np.uint8) << np.uint8(7)
            count += more
    return out.T, count


def _varint_stream(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All varints of ``x`` concatenated (uint8) and the byte length of each."""
    block, lens = _varint_block(x)
    mask = np.arange(block.shape[1]) < lens[:, None]
    return _compact(block, mask), lens


def _compact(block: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``block[mask]`` (row-major), but fast: 1-D boolean indexing copies runs of selected bytes
    without building an index array (``np.compress`` does, and is 4-20x slower here)."""
    return block.reshape(-1)[mask.reshape(-1)]


def _segment_sums(per_item: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    csum = np.zeros(per_item.size + 1, dtype=np.int64)
    np.cumsum(per_item, out=csum[1:])
    return csum[indptr[1:]] - csum[indptr[:-1]]


# --------------------------------------------------------------------------------------------------
# writer
#
# A chunk of rows is laid out as an (n, W) byte matrix plus an (n, W) mask of the bytes in use:
# row i holds record i's frame field by field (fixed-width slots, e.g. 3 bytes for a varint that
# needs at most 3), and ``matrix[mask]`` (row-major, 1-D boolean compaction) is the file's bytes.
# Every field is written straight into its columns of one preallocated matrix; dense float rows
# use every byte, so there the matrix is the output and no mask is built. The values and keys
# take ``max nnz`` slots per row; when that wastes too much (very uneven rows) the chunk is split,
# and small uneven chunks are assembled from flat per-field streams with one gather instead.


_Field = tuple[np.ndarray, np.ndarray]  # (n, width) uint8 block, per-row byte count
_Piece = tuple[np.ndarray, np.ndarray]  # (n, width) uint8 block, (n, width) mask of used bytes


def _const(n: int, data: bytes, present: np.ndarray | None = None) -> _Field:
    block = np.broadcast_to(np.frombuffer(data, dtype=np.uint8), (n, len(data)))
    lens = np.full(n, len(data), dtype=np.int64)
    if present is not None:
        lens = lens * present
    return block, lens


def _var(x: np.ndarray, present: np.ndarray | None = None) -> _Field:
    block, lens = _varint_block(x)
    if present is not None:
        lens = lens * present
    return block, lens


def _fields_piece(fields: Sequence[_Field]) -> _Piece:
    block = np.concatenate([b for b, _ in fields], axis=1)
    mask = np.concatenate([np.arange(b.shape[1]) < lens[:, None] for b, lens in fields], axis=1)
    return block, mask


def _pack(fields: Sequence[_Field]) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise concatenation of variable-length fields -> (byte stream, bytes per row)."""
    block, mask = _fields_piece(fields)
    total = np.sum(np.stack([lens for _, lens in fields], axis=1), axis=1)
    return _compact(block, mask), total


def _varint_words(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Varints of values < 2**56, each built inside one little-endian uint32/uint64 word.

    Returns the words and, as words of 0/1 bytes, which of their bytes are in use. Word
    arithmetic keeps every operation contiguous.
    """
    word = np.dtype("<u4") if top < 1 << 28 else np.dtype("<u8")
    t: Any = word.type
    x = x.astype(word, copy=False)
    enc: Any = x & t(0x7F)
    used: Any = np.ones(x.size, word)
    j = 1
    while j < word.itemsize and top >= 1 << (7 * j):
        more = (x >= t(1 << (7 * j))).astype(word)
        enc |= more << t(8 * j - 1)
        enc |= ((x >> t(7 * j)) & t(0x7F)) << t(8 * j)
        used |= more << t(8 * j)
        j += 1
    return enc, used


def _interleave(streams: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Row i of the output = row i's segment of stream 0, then of stream 1, ...

    Each stream is (bytes, bytes per row) with its rows stored one after the other.
    """
    lens = np.stack([lens for _, lens in streams], axis=1)  # (n, k)
    sizes = [s.size for s, _ in streams]
    base = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]).astype(np.int64)
    src_start = np.cumsum(lens, axis=0) - lens + base[None, :]
    flat_lens = lens.reshape(-1)
    out_start = np.cumsum(flat_lens) - flat_lens
    total = int(flat_lens.sum())
    src = np.concatenate([s for s, _ in streams])
    idx = np.repeat(src_start.reshape(-1) - out_start, flat_lens)
    idx += np.arange(total, dtype=np.int64)
    return src.take(idx)


@dataclass
class _Rows:
    """A block of rows in CSR form (``keys`` is None for dense rows)."""

    indptr: np.ndarray  # int64, starts at 0
    keys: np.ndarray | None  # column indices
    values: np.ndarray
    value_type: str
    n_cols: int
    labels: np.ndarray | None
    label_type: str | None


def _check_int32(ints: np.ndarray, what: str) -> None:
    if ints.size and (ints.min() < -(2**31) or ints.max() >= 2**31):
        raise RecordIOError(
            f"Int32 tensor {what} must fit in int32, got values in [{ints.min()}, {ints.max()}]."
        )


def _value_elements(rows: _Rows) -> tuple[np.ndarray, bool, np.ndarray]:
    """The values as little-endian scalars (or uint64 to write as varints: the flag) and the
    packed payload bytes per row."""
    nnz = np.diff(rows.indptr)
    if rows.value_type == _F4:
        return rows.values.astype("<f4", copy=False).reshape(-1), False, 4 * nnz
    if rows.value_type == _F8:
        return rows.values.astype("<f8", copy=False).reshape(-1), False, 8 * nnz
    ints = rows.values.reshape(-1).astype(np.int64, copy=False)
    _check_int32(ints, "values")
    return ints.view(np.uint64), True, _segment_sums(_varint_len(ints.view(np.uint64)), rows.indptr)


def _label_field(rows: _Rows) -> _Field:
    """The whole ``label`` map field of each row (20 bytes for a float32 label)."""
    n = rows.indptr.size - 1
    labels = rows.labels
    assert labels is not None
    if rows.label_type == _F4:
        head = b"\x12\x12\x0a\x06values\x12\x08\x12\x06\x0a\x04"
        tail = labels.astype("<f4").reshape(n, 1).view(np.uint8)
        return np.hstack([_const(n, head)[0], tail]), np.full(n, len(head) + 4, dtype=np.int64)
    if rows.label_type == _F8:
        head = b"\x12\x16\x0a\x06values\x12\x0c\x1a\x0a\x0a\x08"
        tail = labels.astype("<f8").reshape(n, 1).view(np.uint8)
        return np.hstack([_const(n, head)[0], tail]), np.full(n, len(head) + 8, dtype=np.int64)
    ints = labels.astype(np.int64)
    _check_int32(ints, "labels")
    u = ints.view(np.uint64)
    lv = _varint_len(u)
    # field 2 { entry { key "values", value { int32_tensor { values [label] } } } }
    return _fields_piece_as_field(
        [
            _const(n, b"\x12"),
            _var(14 + lv),
            _const(n, b"\x0a\x06values\x12"),
            _var(4 + lv),
            _const(n, b"\x3a"),
            _var(2 + lv),
            _const(n, b"\x0a"),
            _var(lv),
            _var(u),
        ]
    )


def _fields_piece_as_field(fields: Sequence[_Field]) -> _Field:
    stream, total = _pack(fields)
    block = np.zeros((total.size, int(total.max()) if total.size else 0), np.uint8)
    block[np.arange(block.shape[1]) < total[:, None]] = stream
    return block, total


@dataclass
class _Layout:
    nnz: np.ndarray
    has: np.ndarray  # 1 where the row has values (else the packed fields are omitted)
    value_elements: np.ndarray
    value_varint: bool
    vb: np.ndarray  # bytes of packed values per row
    keys: np.ndarray | None  # uint64
    kb: np.ndarray  # bytes of packed keys per row
    tensor: np.ndarray  # length of the tensor message
    value: np.ndarray  # length of the Value message
    entry: np.ndarray  # length of the features map entry
    record: np.ndarray  # length of the Record
    frame: np.ndarray  # header + record + padding
    label: _Field | None


def _layout(rows: _Rows) -> _Layout:
    """Per-row lengths of the nested messages and of the whole frame."""
    nnz = np.diff(rows.indptr)
    has = (nnz > 0).astype(np.int64)
    velems, vvarint, vb = _value_elements(rows)
    tensor = has * (1 + _varint_len(vb) + vb)
    keys = None
    kb = np.zeros_like(nnz)
    if rows.keys is not None:
        keys = rows.keys  # CSR indices: non-negative, written as they are (uint64 if negative)
        if keys.dtype.kind != "i" or (keys.size and int(keys.min()) < 0):
            keys = keys.astype(np.uint64)
        kb = _segment_sums(_varint_len(keys), rows.indptr)
        slen = int(_varint_len(np.array([rows.n_cols]))[0])
        tensor = tensor + has * (1 + _varint_len(kb) + kb) + (2 + slen)
    value = 1 + _varint_len(tensor) + tensor
    entry = 9 + _varint_len(value) + value
    record = 1 + _varint_len(entry) + entry
    label = None
    if rows.labels is not None:
        label = _label_field(rows)
        record = record + label[1]
    frame = 8 + ((record + 3) & ~3)
    return _Layout(nnz, has, velems, vvarint, vb, keys, kb, tensor, value, entry, record, frame, label)


class _Slots:
    """Builds a chunk as an (n, W) byte matrix of fixed-width slots and the (n, W) mask of the
    bytes in use; ``matrix[mask]`` (row-major) is then the file's bytes.

    Pieces are appended left to right and written straight into one preallocated matrix (no
    per-piece arrays concatenated). When every slot byte of every row is in use (dense float rows
    of one width) the matrix itself is the output and no mask is built.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.width = 0
        self.full = True
        self._puts: list[tuple[int, Any]] = []

    def const(self, data: bytes, present: np.ndarray | None = None) -> None:
        src = np.frombuffer(data, np.uint8)
        on = None if present is None or bool(present.all()) else present.astype(bool)[:, None]

        def put(block: np.ndarray, mask: np.ndarray | None, col: int) -> None:
            block[:, col : col + src.size] = src
            if mask is not None:
                mask[:, col : col + src.size] = True if on is None else on

        self._add(src.size, on is None, put)

    def field(self, data: np.ndarray, lens: np.ndarray) -> None:
        """``data``: (n, w) bytes, of which the first ``lens[i]`` of row i are used."""
        width = data.shape[1]
        full = bool(np.all(lens == width))

        def put(block: np.ndarray, mask: np.ndarray | None, col: int) -> None:
            block[:, col : col + width] = data
            if mask is not None:
                mask[:, col : col + width] = True if full else np.arange(width) < lens[:, None]

        self._add(width, full, put)

    def varint(self, x: np.ndarray, present: np.ndarray | None = None) -> None:
        data, lens = _varint_block(x)
        self.field(data, lens if present is None else lens * present)

    def ragged(self, valid: np.ndarray, elements: np.ndarray, varint: bool) -> None:
        """One slot per possible element of a row (``valid``: (n, slots) slots in use): scalars
        copied as they are, or unsigned ints as varints."""
        slots = valid.shape[1]
        full = bool(valid.all())
        if not varint:
            size = elements.dtype.itemsize

            def put_scalars(block: np.ndarray, mask: np.ndarray | None, col: int) -> None:
                region = block[:, col : col + slots * size].view(elements.dtype)
                if full:
                    region[...] = elements.reshape(region.shape)
                else:
                    region[valid] = elements
                if mask is not None:
                    _put_slot_mask(mask[:, col : col + slots * size], valid, np.ones((1, size), bool))

            self._add(slots * size, full, put_scalars)
            return
        top = int(elements.max()) if elements.size else 0
        if top < 1 << 56:
            words, used = _varint_words(elements, top)
            size = words.dtype.itemsize

            def put_words(block: np.ndarray, mask: np.ndarray | None, col: int) -> None:
                region = block[:, col : col + slots * size].view(words.dtype)
                region[valid] = words
                assert mask is not None
                used_region = mask[:, col : col + slots * size].view(words.dtype)
                used_region[...] = 0
                used_region[valid] = used

            self._add(slots * size, False, put_words)
            return
        data_t, lens = _varint_block(elements)  # 10-byte varints (negative Int32 values): rare
        size = data_t.shape[1]

        def put_bytes(block: np.ndarray, mask: np.ndarray | None, col: int) -> None:
            block[:, col : col + slots * size].reshape(-1, slots, size)[valid] = data_t
            assert mask is not None
            used_region = mask[:, col : col + slots * size].reshape(-1, slots, size)
            used_region[...] = False
            used_region[valid] = np.arange(size) < lens[:, None]

        self._add(slots * size, False, put_bytes)

    def _add(self, width: int, full: bool, put: Any) -> None:
        self._puts.append((width, put))
        self.width += width
        self.full &= full

    def assemble(self) -> np.ndarray:
        block = np.empty((self.n, self.width), np.uint8)
        mask = None if self.full else np.empty((self.n, self.width), bool)
        col = 0
        for width, put in self._puts:
            put(block, mask, col)
            col += width
        return block.reshape(-1) if mask is None else _compact(block, mask)


def _put_slot_mask(region: np.ndarray, valid: np.ndarray, used: np.ndarray) -> None:
    """region (n, slots * size) <- for each slot, ``used`` (1, size) where valid, else False."""
    size = used.shape[1]
    if size in (4, 8) and bool(used.all()):
        word = np.dtype(f"<u{size}")
        region.view(word)[...] = valid.view(np.uint8) * word.type(int("01" * size, 16))
    else:
        region.reshape(valid.shape[0], -1, size)[...] = valid[:, :, None] & used


def _encode(rows: _Rows) -> Iterator[np.ndarray]:
    """The bytes of a chunk of rows, in one or more consecutive pieces."""
    n = rows.indptr.size - 1
    if n == 0:
        return
    lay = _layout(rows)
    total = int(lay.nnz.sum())
    slots = int(lay.nnz.max())
    if n * slots > 2 * total + 4 * n:  # very uneven rows: max-nnz slots would waste too much
        if n > 64:
            half = n // 2
            yield from _encode(_slice(rows, 0, half))
            yield from _encode(_slice(rows, half, n))
        else:
            yield _encode_streams(rows, lay)
        return
    has, record = lay.has, lay.record
    s = _Slots(n)
    head = np.empty((n, 2), "<u4")
    head[:, 0] = MAGIC
    head[:, 1] = record
    s.field(head.view(np.uint8), np.full(n, 8))
    s.const(b"\x0a")
    s.varint(lay.entry)
    s.const(b"\x0a\x06values\x12")
    s.varint(lay.value)
    s.const(bytes([(_TENSOR_FIELD[rows.value_type] << 3) | 2]))
    s.varint(lay.tensor)
    s.const(b"\x0a", has)
    s.varint(lay.vb, has)
    valid = np.arange(slots) < lay.nnz[:, None]
    s.ragged(valid, lay.value_elements, lay.value_varint)
    if lay.keys is not None:
        s.const(b"\x12", has)
        s.varint(lay.kb, has)
        s.ragged(valid, lay.keys, True)
        s.const(_shape_field(rows.n_cols))
    if lay.label is not None:
        s.field(*lay.label)
    pad = (-record) % 4
    s.field(np.zeros((n, int(pad.max())), np.uint8), pad)  # as wide as needed: equal rows stay "full"
    yield s.assemble()


def _shape_field(n_cols: int) -> bytes:
    shape = _varint_block(np.array([n_cols]))[0].tobytes()
    return b"\x1a" + bytes([len(shape)]) + shape


def _encode_streams(rows: _Rows, lay: _Layout) -> np.ndarray:
    """The same bytes from flat per-field streams and one gather (for very uneven rows)."""
    n = rows.indptr.size - 1
    has, record = lay.has, lay.record
    head = _pack(
        [
            _const(n, _MAGIC_BYTES),
            (record.astype("<u4").reshape(n, 1).view(np.uint8), np.full(n, 4, np.int64)),
            _const(n, b"\x0a"),
            _var(lay.entry),
            _const(n, b"\x0a\x06values\x12"),
            _var(lay.value),
            _const(n, bytes([(_TENSOR_FIELD[rows.value_type] << 3) | 2])),
            _var(lay.tensor),
            _const(n, b"\x0a", has),
            _var(lay.vb, has),
        ]
    )
    values = _varint_stream(lay.value_elements)[0] if lay.value_varint else lay.value_elements.view(np.uint8)
    streams = [head, (values, lay.vb)]
    tail_fields: list[_Field] = []
    if lay.keys is not None:
        khead = _pack([_const(n, b"\x12", has), _var(lay.kb, has)])
        streams += [khead, (_varint_stream(lay.keys)[0], lay.kb)]
        tail_fields.append(_const(n, _shape_field(rows.n_cols)))
    if lay.label is not None:
        tail_fields.append(lay.label)
    tail_fields.append((np.zeros((n, 3), np.uint8), (-record) % 4))
    streams.append(_pack(tail_fields))
    return _interleave(streams)


# ---- optional numba kernel
#
# The same bytes from one compiled loop per chunk. numba is not a dependency: the processing
# container and the Lambdas have numpy/scipy only, so the numpy path above stays the reference and
# this kernel is used only when numba imports (tests check that both give the SDK's bytes).

# Rows + values of a write from which the kernel pays for itself: importing numba and loading the
# cached kernel take ~0.5-1 s, compiling it the first time a few seconds.
_NUMBA_MIN_ITEMS = 1 << 21
_NUMBA_MIN_ITEMS_LOADED = 1 << 16  # when numba is already imported
_numba_kernel: Any = None  # None: not tried yet; False: unavailable
# Rows + values written so far by this process: a process that writes many small chunks (the
# processing step: ~100 M in chunks of < 1 M) also pays the kernel's load back once it has written
# _NUMBA_MIN_ITEMS. Only for the package module, whose numba cache (in its __pycache__) stays warm
# from run to run: a copy of this file (``recpipe_recordio.py`` in a fresh code directory of each
# processing job) would compile the kernel every run (seconds), so it keeps the per-write rule.
_items_written = 0
_CUMULATIVE = __name__ == "recpipe.formats.recordio"


# Helpers of the kernels (plain Python; _numba_module registers them with numba, which compiles them
# into the kernels that call them).
def _varint_size(x: Any) -> Any:  # pragma: no cover - compiled by numba (run as Python in the tests)
    """Bytes of the varint of ``x`` >= 0."""
    length = 1
    while x >= 128:
        x >>= 7
        length += 1
    return length


def _put_varint(out: np.ndarray, p: Any, x: Any) -> Any:  # pragma: no cover - compiled by numba
    """Writes the varint of ``x`` >= 0 at ``out[p]``; returns the position after it."""
    while x >= 128:
        out[p] = (x & 0x7F) | 0x80
        x >>= 7
        p += 1
    out[p] = x
    return p + 1


def _encode_kernel_py(
    indptr: np.ndarray,
    keys: np.ndarray,
    has_keys: bool,
    vraw: np.ndarray,
    vsize: int,
    vints: np.ndarray,
    tag: int,
    shape_field: np.ndarray,
    label_block: np.ndarray,
    label_lens: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled by numba (run as Python in the tests)
    """Frames of CSR rows: raw values (``vraw``, ``vsize`` bytes each) or Int32 varints (``vints``,
    ``vsize`` 0), keys as varints when ``has_keys``, then ``shape_field`` and the label bytes."""
    n = indptr.size - 1
    vbs = np.empty(n, np.int64)
    kbs = np.empty(n, np.int64)
    tensors = np.empty(n, np.int64)
    records = np.empty(n, np.int64)
    total = 0
    for i in range(n):
        a, b = indptr[i], indptr[i + 1]
        if vsize > 0:
            vb = (b - a) * vsize
        else:
            vb = 0
            for j in range(a, b):
                v = vints[j]
                if v < 0:
                    vb += 10
                else:
                    vb += _varint_size(v)
        kb = 0
        if has_keys:
            for j in range(a, b):
                kb += _varint_size(keys[j])
        tensor = shape_field.size
        if b > a:
            tensor += 1 + _varint_size(vb) + vb
            if has_keys:
                tensor += 1 + _varint_size(kb) + kb
        size = tensor
        for extra in (1, 9, 1):  # Value (tag), map entry (key "values", tag), Record (tag)
            size += extra + _varint_size(size)
        record = size + label_lens[i]
        vbs[i], kbs[i], tensors[i], records[i] = vb, kb, tensor, record
        total += 8 + ((record + 3) & ~3)

    out = np.empty(total, np.uint8)
    p = 0
    for i in range(n):
        a, b = indptr[i], indptr[i + 1]
        record = records[i]
        out[p] = 0x0A
        out[p + 1] = 0x23
        out[p + 2] = 0xD7
        out[p + 3] = 0xCE
        for j in range(4):
            out[p + 4 + j] = (record >> (8 * j)) & 0xFF
        p += 8
        tensor = tensors[i]
        value = tensor + 1 + _varint_size(tensor)
        entry = value + 9 + _varint_size(value)
        out[p] = 0x0A
        p += 1
        p = _put_varint(out, p, entry)
        for c in (0x0A, 0x06, 0x76, 0x61, 0x6C, 0x75, 0x65, 0x73, 0x12):  # 1:"values", 2:{
            out[p] = c
            p += 1
        p = _put_varint(out, p, value)
        out[p] = tag
        p += 1
        p = _put_varint(out, p, tensor)
        if b > a:
            out[p] = 0x0A
            p += 1
            p = _put_varint(out, p, vbs[i])
            if vsize > 0:
                for j in range(a * vsize, b * vsize):
                    out[p] = vraw[j]
                    p += 1
            else:
                for j in range(a, b):
                    v = vints[j]
                    if v < 0:  # two's complement as a 10-byte varint
                        for s in range(9):
                            out[p] = ((v >> (7 * s)) & 0x7F) | 0x80
                            p += 1
                        out[p] = 1
                        p += 1
                    else:
                        p = _put_varint(out, p, v)
            if has_keys:
                out[p] = 0x12
                p += 1
                p = _put_varint(out, p, kbs[i])
                for j in range(a, b):
                    p = _put_varint(out, p, keys[j])
        for j in range(shape_field.size):
            out[p] = shape_field[j]
            p += 1
        for j in range(label_lens[i]):
            out[p] = label_block[i, j]
            p += 1
        for _ in range((-record) & 3):
            out[p] = 0
            p += 1
    return out


_kernel_helpers_registered = False


def _numba_module() -> Any:
    """The numba module, or None when it is not installed (or RECPIPE_NUMBA=0); the kernels'
    helpers are registered with it (once) so that the compiled kernels can call them."""
    global _kernel_helpers_registered
    if os.environ.get("RECPIPE_NUMBA", "1") != "0":
        try:
            import numba
        except ImportError:
            return None
        if not _kernel_helpers_registered:
            for helper in (_varint_size, _put_varint, _read_varint):
                numba.extending.register_jitable(helper)
            _kernel_helpers_registered = True
        return numba
    return None


def _numba_encoder() -> Any:
    """The compiled kernel, or None when numba is not installed (or RECPIPE_NUMBA=0)."""
    global _numba_kernel
    if _numba_kernel is None:
        numba = _numba_module()
        _numba_kernel = False if numba is None else numba.njit(cache=True, nogil=True)(_encode_kernel_py)
    return _numba_kernel or None


def _encode_compiled(kernel: Any, rows: _Rows) -> np.ndarray:
    n = rows.indptr.size - 1
    if rows.value_type == _I4:
        ints = rows.values.reshape(-1).astype(np.int64, copy=False)
        _check_int32(ints, "values")
        vraw, vsize, vints = np.zeros(0, np.uint8), 0, ints
    else:
        scalars = np.ascontiguousarray(rows.values.reshape(-1), "<f4" if rows.value_type == _F4 else "<f8")
        vraw, vsize, vints = scalars.view(np.uint8), scalars.itemsize, np.zeros(0, np.int64)
    keys = rows.keys if rows.keys is not None else np.zeros(0, np.int64)
    keys = keys.astype(np.int64, copy=False)  # one signature to compile; signed comparisons
    shape = np.zeros(0, np.uint8)
    if rows.keys is not None:
        shape = np.frombuffer(_shape_field(rows.n_cols), np.uint8).copy()  # writeable: one signature
    if rows.labels is not None:
        label_block, label_lens = _label_field(rows)
        label_block = np.ascontiguousarray(label_block)
    else:
        label_block, label_lens = np.zeros((n, 0), np.uint8), np.zeros(n, np.int64)
    tag = (_TENSOR_FIELD[rows.value_type] << 3) | 2
    return kernel(
        rows.indptr, keys, rows.keys is not None, vraw, vsize, vints, tag, shape, label_block, label_lens
    )


# Rows per chunk: the chunk's slot matrix (~200 bytes a row for FM rows) stays in cache.
_CHUNK_ROWS = 1 << 13
_CHUNK_VALUES = 1 << 17


def _chunks(indptr: np.ndarray) -> Iterable[tuple[int, int]]:
    n = indptr.size - 1
    start = 0
    while start < n:
        by_values = int(np.searchsorted(indptr, indptr[start] + _CHUNK_VALUES, side="right")) - 1
        stop = max(start + 1, min(start + _CHUNK_ROWS, by_values, n))
        yield start, stop
        start = stop


def _sparse_rows(matrix: Any, labels: np.ndarray | None) -> _Rows:
    if not sp.issparse(matrix):
        raise RecordIOError(f"write_sparse expects a scipy.sparse matrix, got {type(matrix).__name__}.")
    if len(matrix.shape) != 2:
        raise RecordIOError(f"The matrix must be 2-dimensional, got shape {matrix.shape}.")
    value_type = _resolve_type(matrix.dtype, "matrix")
    csr = matrix.tocsr()
    n_rows, n_cols = csr.shape
    label_type = _check_labels(labels, n_rows)
    return _Rows(
        indptr=csr.indptr.astype(np.int64),
        keys=csr.indices,
        values=csr.data,
        value_type=value_type,
        n_cols=int(n_cols),
        labels=labels,
        label_type=label_type,
    )


def _dense_rows(array: Any, labels: np.ndarray | None) -> _Rows:
    array = np.asarray(array)
    if array.ndim != 2:
        raise RecordIOError(f"The array must be 2-dimensional, got shape {array.shape}.")
    value_type = _resolve_type(array.dtype, "array")
    n_rows, n_cols = array.shape
    label_type = _check_labels(labels, n_rows)
    return _Rows(
        indptr=np.arange(n_rows + 1, dtype=np.int64) * n_cols,
        keys=None,
        values=np.ascontiguousarray(array).reshape(-1),
        value_type=value_type,
        n_cols=int(n_cols),
        labels=labels,
        label_type=label_type,
    )


def _check_labels(labels: np.ndarray | None, n_rows: int) -> str | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n_rows:
        raise RecordIOError(
            f"The labels must be a vector of {n_rows} values (one per row), got shape {labels.shape}."
        )
    return _resolve_type(labels.dtype, "labels")


def _slice(rows: _Rows, start: int, stop: int) -> _Rows:
    lo, hi = int(rows.indptr[start]), int(rows.indptr[stop])
    return _Rows(
        indptr=rows.indptr[start : stop + 1] - lo,
        keys=None if rows.keys is None else rows.keys[lo:hi],
        values=rows.values[lo:hi],
        value_type=rows.value_type,
        n_cols=rows.n_cols,
        labels=None if rows.labels is None else np.asarray(rows.labels)[start:stop],
        label_type=rows.label_type,
    )


# None: numba (when installed) for writes of at least _NUMBA_MIN_ITEMS rows + values; True/False:
# always/never (tests).
_USE_NUMBA: bool | None = None


def _write_rows(fileobj: IO[bytes], rows: _Rows) -> None:
    global _items_written
    kernel = None
    items = rows.indptr.size + rows.values.size
    if _USE_NUMBA is None:
        ready = _numba_kernel or "numba" in sys.modules
        # Dense float rows use every slot byte: the numpy path copies them as fast as the kernel.
        dense_floats = rows.keys is None and rows.value_type != _I4
        if not dense_floats:
            _items_written += items
            bulk = _CUMULATIVE and _items_written >= _NUMBA_MIN_ITEMS
            if bulk or items >= (_NUMBA_MIN_ITEMS_LOADED if ready else _NUMBA_MIN_ITEMS):
                kernel = _numba_encoder()
    elif _USE_NUMBA:
        kernel = _numba_encoder()
    for start, stop in _chunks(rows.indptr):
        chunk = _slice(rows, start, stop)
        if kernel is not None:
            fileobj.write(_encode_compiled(kernel, chunk).data)
            continue
        for piece in _encode(chunk):
            fileobj.write(piece.data)


def _frame_sizes(rows: _Rows) -> np.ndarray:
    sizes = [_layout(_slice(rows, a, b)).frame for a, b in _chunks(rows.indptr)]
    return np.concatenate(sizes) if sizes else np.zeros(0, np.int64)


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


def record_sizes_sparse(matrix: Any, labels: np.ndarray | None = None) -> np.ndarray:
    """Bytes of each row's frame (header, record, padding) as ``write_sparse`` writes it."""
    return _frame_sizes(_sparse_rows(matrix, labels))


def record_sizes_dense(array: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Bytes of each row's frame (header, record, padding) as ``write_dense`` writes it."""
    return _frame_sizes(_dense_rows(array, labels))


def _write_shards(directory: str | os.PathLike[str], rows: _Rows, max_bytes: int, prefix: str) -> list[Path]:
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise RecordIOError(f"The 'max_bytes' parameter must be a positive int, got {max_bytes!r}.")
    sizes = _frame_sizes(rows)
    too_big = np.flatnonzero(sizes > max_bytes)
    if too_big.size:
        i = int(too_big[0])
        raise RecordIOError(
            f"Row {i} takes {int(sizes[i])} bytes, more than max_bytes={max_bytes}: "
            "a shard holds whole records."
        )
    ends = np.cumsum(sizes)
    bounds = [0]
    while bounds[-1] < sizes.size:
        done = int(ends[bounds[-1] - 1]) if bounds[-1] else 0
        bounds.append(int(np.searchsorted(ends, done + max_bytes, side="right")))
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, (start, stop) in enumerate(itertools.pairwise(bounds)):
        path = out_dir / f"{prefix}-{shard:05d}.pbr"
        with path.open("wb") as f:
            _write_rows(f, _slice(rows, start, stop))
        paths.append(path)
    return paths


def write_sparse_shards(
    directory: str | os.PathLike[str],
    matrix: Any,
    labels: np.ndarray | None = None,
    *,
    max_bytes: int,
    prefix: str = "part",
) -> list[Path]:
    """Write the rows in order into ``<prefix>-00000.pbr``, ... each at most ``max_bytes`` bytes.

    Every file holds whole records, so each is a valid recordio file on its own and their
    concatenation equals what ``write_sparse`` writes. No rows -> no files.
    """
    return _write_shards(directory, _sparse_rows(matrix, labels), max_bytes, prefix)


def write_dense_shards(
    directory: str | os.PathLike[str],
    array: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    max_bytes: int,
    prefix: str = "part",
) -> list[Path]:
    """Dense counterpart of ``write_sparse_shards``."""
    return _write_shards(directory, _dense_rows(array, labels), max_bytes, prefix)


# --------------------------------------------------------------------------------------------------
# reader


def _load(source: Source) -> tuple[np.ndarray, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise RecordIOError(f"Cannot read recordio file '{path}': {e}") from e
        return np.frombuffer(data, dtype=np.uint8), f"'{path}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return np.frombuffer(source, dtype=np.uint8), "input"
    if hasattr(source, "read"):
        data = source.read()
        name = getattr(source, "name", None)
        return np.frombuffer(data, dtype=np.uint8), f"'{name}'" if isinstance(name, str) else "input"
    raise RecordIOError(f"Expected a path, bytes or a binary file object, got {type(source).__name__}.")


def _frames(buf: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, dict[int, bytes]]:
    """Start offset and length of each record payload.

    Multi-part (dmlc continuation) records are reassembled into the returned dict
    {record index: payload}; their start/length then point to their first frame.
    """
    size = buf.size
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), {}
    if size % 4 == 0:
        words = buf.view("<u4")
        cand = np.flatnonzero(words == MAGIC)
        if cand.size and cand[-1] + 1 < words.size:
            lens = words[cand + 1].astype(np.int64)
            starts = cand.astype(np.int64) * 4
            nxt = starts + 8 + ((lens + 3) & ~3)
            chained = np.array_equal(nxt[:-1], starts[1:]) and nxt[-1] == size
            if starts[0] == 0 and chained and lens.max() < 1 << 29:
                return starts + 8, lens, {}
    return _frames_slow(buf.tobytes(), name)


def _frames_slow(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray, dict[int, bytes]]:
    starts: list[int] = []
    lens: list[int] = []
    joined: dict[int, bytes] = {}
    parts: list[bytes] | None = None
    pos, size = 0, len(data)
    unpack = struct.Struct("<II").unpack_from
    while pos < size:
        if size - pos < 8:
            raise RecordIOError(
                f"recordio {name}: truncated record header at byte {pos} ({size - pos} bytes left, need 8)."
            )
        magic, word = unpack(data, pos)
        if magic != MAGIC:
            raise RecordIOError(
                f"recordio {name}: wrong magic 0x{magic:08X} at byte {pos} (expected 0x{MAGIC:08X})."
            )
        cflag, length = word >> 29, word & ((1 << 29) - 1)
        padded = (length + 3) & ~3
        if pos + 8 + length > size:
            raise RecordIOError(
                f"recordio {name}: truncated record at byte {pos}: it declares {length} bytes, "
                f"only {size - pos - 8} remain."
            )
        payload = data[pos + 8 : pos + 8 + length]
        if cflag == 0 and parts is None:
            starts.append(pos + 8)
            lens.append(length)
        elif cflag == 1 and parts is None:
            starts.append(pos + 8)
            lens.append(length)
            parts = [payload]
        elif cflag in (2, 3) and parts is not None:
            parts.append(payload)
            if cflag == 3:
                joined[len(starts) - 1] = _MAGIC_BYTES.join(parts)
                parts = None
        else:
            raise RecordIOError(
                f"recordio {name}: unexpected continuation flag {cflag} in the record at byte {pos}."
            )
        pos += 8 + min(padded, size - pos - 8)
    if parts is not None:
        raise RecordIOError(
            f"recordio {name}: the multi-part record at byte {starts[-1] - 8} is not finished."
        )
    return np.array(starts, np.int64), np.array(lens, np.int64), joined


@dataclass
class _Parsed:
    counts: np.ndarray  # values per record
    values: np.ndarray  # all values, record after record
    keys: np.ndarray | None  # column of each value (None when every record is dense)
    n_cols: int | None  # from the records' shape, when they carry one
    labels: np.ndarray | None


_WINDOW_PAD = 1024  # zero bytes after the data, so fixed-width windows stay in bounds


def _windows(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray | None:
    """Rows of ``max(lens)`` bytes starting at each start (one index per row, not per byte), or
    None when that would copy more than about twice the bytes needed (uneven lengths)."""
    width = int(lens.max()) if lens.size else 0
    if width == 0 or int(starts.max()) + width > buf.size:
        return None
    if width * lens.size > 2 * int(lens.sum()) + 64 * lens.size:
        return None
    return np.lib.stride_tricks.sliding_window_view(buf, width)[starts]


def _segments(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of buf[starts[i] : starts[i] + lens[i]]."""
    windows = _windows(buf, starts, lens)
    if windows is not None:
        return _compact(windows, np.arange(windows.shape[1]) < lens[:, None])
    out_start = np.cumsum(lens) - lens
    idx = np.repeat(starts - out_start, lens)
    idx += np.arange(idx.size, dtype=np.int64)
    return buf.take(idx)


_LOW_BYTES = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF], np.uint32)  # the first n bytes of a word


def _decode_varint_stream(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint64 values of a concatenation of complete varints and the index of each one's last byte."""
    ends = np.flatnonzero(stream < 0x80)
    if ends.size == 0:
        return np.zeros(0, np.uint64), ends
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    longest = int(lens.max())
    if longest > 10:
        raise ValueError("varint longer than 10 bytes")
    if longest <= 4:  # (keys below 2**28) one unaligned 4-byte load per varint, 7 bits per byte
        padded = np.concatenate([stream, np.zeros(3, np.uint8)])
        words = np.ndarray((stream.size,), "<u4", padded, strides=(1,))[starts]
        words &= _LOW_BYTES[lens]
        low: Any = np.uint32(0x7F)
        out = words & low
        for j in range(1, longest):
            out |= (words >> np.uint32(j)) & (low << np.uint32(7 * j))
        return out.astype(np.uint64), ends
    values = (stream[starts] & 0x7F).astype(np.uint64)
    for j in range(1, longest):
        byte = (stream[np.minimum(starts + j, stream.size - 1)] & 0x7F).astype(np.uint64)
        byte[lens <= j] = 0
        values |= byte << np.uint64(7 * j)
    return values, ends


class _Cursor:
    """Vectorised varint/tag reading at one position per record (``buf`` ends in zero padding)."""

    def __init__(self, buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf = buf
        self.win = np.lib.stride_tricks.sliding_window_view(buf, 10)
        self.limit = buf.size - _WINDOW_PAD
        self.pos = pos.copy()
        self.end = end
        self.ok = np.ones(pos.size, dtype=bool)

    def window(self) -> np.ndarray:
        return self.win[np.minimum(self.pos, self.limit)]

    def byte_is(self, value: int) -> np.ndarray:
        return (self.pos < self.end) & (self.buf[np.minimum(self.pos, self.limit)] == value)

    def expect(self, data: bytes) -> None:
        if len(data) <= 10:
            window = self.window()[:, : len(data)]
        else:
            windows = np.lib.stride_tricks.sliding_window_view(self.buf, len(data))
            window = windows[np.minimum(self.pos, self.limit)]
        self.ok &= (window == np.frombuffer(data, np.uint8)).all(axis=1)
        self.ok &= self.pos + len(data) <= self.end
        self.pos += len(data)

    def varint(self, where: np.ndarray | None = None) -> np.ndarray:
        """Read a varint at pos (only where ``where``); returns its value (0 elsewhere)."""
        window = self.window()
        stop = window < 0x80
        length = np.argmax(stop, axis=1) + 1
        valid = stop.any(axis=1) & (self.pos + length <= self.end)
        value = (window[:, 0] & 0x7F).astype(np.int64)
        longest = int(length.max()) if length.size else 0
        for j in range(1, min(longest, 9)):
            byte = (window[:, j] & 0x7F).astype(np.int64)
            byte[length <= j] = 0
            value |= byte << (7 * j)
        valid &= length <= 9  # lengths here are < 2**63
        if where is None:
            self.ok &= valid
            self.pos += length
            return value
        self.ok &= valid | ~where
        self.pos += np.where(where, length, 0)
        return np.where(where, value, 0)


_READ_CHUNK = 1 << 15


def _parse_fast(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> _Parsed | None:
    """Parse records laid out as the SDK writes them (Float32 values, optional Float32 label).

    Returns None when any record differs from that layout (the slow parser then takes over).
    """
    if starts.size == 0:
        return _Parsed(np.zeros(0, np.int64), np.zeros(0, np.float32), None, None, None)
    padded = np.concatenate([buf, np.zeros(_WINDOW_PAD, np.uint8)])
    parts: list[_Parsed] = []
    for lo in range(0, starts.size, _READ_CHUNK):
        part = _parse_fast_chunk(padded, starts[lo : lo + _READ_CHUNK], lens[lo : lo + _READ_CHUNK])
        if part is None:
            return None
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    shapes = {p.n_cols for p in parts if p.n_cols is not None}
    if len(shapes) > 1:
        return None
    with_labels = [p.labels is not None for p in parts]
    if any(with_labels) and not all(with_labels):
        return None
    any_keys = any(p.keys is not None for p in parts)
    keys = None
    if any_keys:
        keys = np.concatenate([p.keys if p.keys is not None else _local_columns(p.counts) for p in parts])
    return _Parsed(
        counts=np.concatenate([p.counts for p in parts]),
        values=np.concatenate([p.values for p in parts]),
        keys=keys,
        n_cols=shapes.pop() if shapes else None,
        labels=np.concatenate([p.labels for p in parts]) if all(with_labels) else None,  # type: ignore[misc]
    )


def _local_columns(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[i] - 1 for each record (the columns of dense records)."""
    total = int(counts.sum())
    local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return local.astype(np.uint64)


def _parse_fast_chunk(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> _Parsed | None:
    if int(lens.max()) >= 1 << 31:
        return None
    end = starts + lens
    c = _Cursor(buf, starts, end)
    c.expect(b"\x0a")
    entry_end = c.varint()
    entry_end += c.pos
    c.expect(b"\x0a\x06values\x12")
    value_end = c.varint()
    value_end += c.pos
    c.expect(b"\x12")
    tensor_end = c.varint()
    tensor_end += c.pos
    c.ok &= (tensor_end == value_end) & (value_end == entry_end) & (entry_end <= end)
    if not c.ok.all():
        return None
    c.end = tensor_end
    has_values = c.byte_is(0x0A)
    c.pos += has_values
    vb = c.varint(has_values)
    vstart = c.pos.copy()
    c.pos += vb
    has_keys = c.byte_is(0x12)
    c.pos += has_keys
    kb = c.varint(has_keys)
    kstart = c.pos.copy()
    c.pos += kb
    has_shape = c.byte_is(0x1A)
    c.pos += has_shape
    sb = c.varint(has_shape)
    sstart = c.pos.copy()
    c.pos += sb
    c.ok &= (c.pos == tensor_end) & (vb % 4 == 0)
    c.end = end
    has_label = c.pos < end
    if has_label.any():
        if not has_label.all():
            return None
        c.expect(b"\x12\x12\x0a\x06values\x12\x08\x12\x06\x0a\x04")
        label_pos = c.pos.copy()
        c.pos += 4
    c.ok &= c.pos == end
    if not c.ok.all():
        return None

    counts = vb // 4
    values = _segments(buf, vstart, vb).view("<f4")
    labels = None
    if has_label.any():
        labels = np.lib.stride_tricks.sliding_window_view(buf, 4)[label_pos].reshape(-1).view("<f4")

    n_cols: int | None = None
    if has_shape.any():
        ss = sstart[has_shape]
        c2 = _Cursor(buf, ss, ss + sb[has_shape])
        dims = c2.varint()
        if not (c2.ok.all() and np.array_equal(c2.pos, c2.end)):
            return None  # multi-dimensional or broken shape
        if np.any(dims != dims[0]):
            return None
        n_cols = int(dims[0])

    keys: np.ndarray | None = None
    if has_keys.any():
        kstream = _segments(buf, kstart, kb)
        if kstream.size and kstream[-1] >= 0x80:
            return None
        try:
            decoded, key_ends = _decode_varint_stream(kstream)
        except ValueError:
            return None
        # Number of keys in each record: terminators inside its segment; segments must end on one.
        seg_end = np.cumsum(kb)
        nk = np.diff(np.searchsorted(key_ends, seg_end, side="left"), prepend=0)
        ended = np.zeros(kstream.size + 1, dtype=bool)
        ended[key_ends + 1] = True
        ended[0] = True
        if not ended[seg_end].all() or not np.array_equal(nk[has_keys], counts[has_keys]):
            return None
        if (has_values & ~has_keys).any():
            keyed = np.repeat(has_keys, counts)
            keys = _local_columns(counts)
            keys[keyed] = decoded
        else:
            keys = decoded
    return _Parsed(counts.astype(np.int64), values, keys, n_cols, labels)


# ---- per-record parser (any valid encoding; precise errors)


_Tensor = tuple[str, np.ndarray, "list[int] | None", "list[int]"]  # kind, values, keys, shape


class _Reader:
    def __init__(self, data: bytes, name: str, base: int) -> None:
        self.data, self.name, self.base = data, name, base

    def fail(self, pos: int, message: str) -> RecordIOError:
        return RecordIOError(f"recordio {self.name}: {message} at byte {self.base + pos}.")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        value, shift = 0, 0
        start = pos
        while True:
            if pos >= end:
                raise self.fail(start, "truncated varint")
            b = self.data[pos]
            value |= (b & 0x7F) << shift
            pos += 1
            if b < 0x80:
                return value, pos
            shift += 7
            if shift >= 70:
                raise self.fail(start, "varint longer than 10 bytes")

    def fields(self, pos: int, end: int, message: str) -> Iterable[tuple[int, int, int, Any]]:
        """(field number, wire type, offset, payload): payload is an int or a (start, end) pair."""
        while pos < end:
            at = pos
            tag, pos = self.varint(pos, end)
            number, wire = tag >> 3, tag & 7
            payload: Any
            if wire == 0:
                payload, pos = self.varint(pos, end)
            elif wire == 1 or wire == 5:
                width = 8 if wire == 1 else 4
                if pos + width > end:
                    raise self.fail(at, f"truncated field {number} in {message}")
                payload = (pos, pos + width)
                pos += width
            elif wire == 2:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise self.fail(at, f"truncated field {number} in {message} (declares {length} bytes)")
                payload = (pos, pos + length)
                pos += length
            else:
                raise self.fail(at, f"unsupported wire type {wire} for field {number} in {message}")
            yield number, wire, at, payload

    def packed_varints(self, span: tuple[int, int]) -> list[int]:
        out = []
        pos, end = span
        while pos < end:
            value, pos = self.varint(pos, end)
            out.append(value)
        return out

    def tensor(self, span: tuple[int, int], kind: str) -> tuple[np.ndarray, list[int] | None, list[int]]:
        fmt = {_F4: "<f4", _F8: "<f8", _I4: None}[kind]
        width = {_F4: 4, _F8: 8, _I4: 0}[kind]
        scalar_wire = {_F4: 5, _F8: 1, _I4: 0}[kind]
        values: list[np.ndarray] = []
        keys: list[int] | None = None
        shape: list[int] = []
        message = f"{kind}Tensor"
        for number, wire, at, payload in self.fields(*span, message):
            if number == 1:
                if wire == 2 and fmt is not None:
                    a, b = payload
                    if (b - a) % width:
                        raise self.fail(
                            at, f"packed {kind} values of {b - a} bytes, not a multiple of {width}"
                        )
                    values.append(np.frombuffer(self.data[a:b], dtype=fmt))
                elif wire == 2:
                    ints = [v - (1 << 64) if v >= 1 << 63 else v for v in self.packed_varints(payload)]
                    values.append(np.array(ints, dtype=np.int64).astype(np.int32))
                elif wire == scalar_wire:
                    if fmt is None:
                        v = payload - (1 << 64) if payload >= 1 << 63 else payload
                        values.append(np.array([v], dtype=np.int64).astype(np.int32))
                    else:
                        values.append(np.frombuffer(self.data[payload[0] : payload[1]], dtype=fmt))
                else:
                    raise self.fail(at, f"{message}.values has wire type {wire}")
            elif number in (2, 3):
                if wire == 2:
                    got = self.packed_varints(payload)
                elif wire == 0:
                    got = [payload]
                else:
                    raise self.fail(at, f"{message} field {number} has wire type {wire}")
                if number == 2:
                    keys = (keys or []) + got
                else:
                    shape.extend(got)
            else:
                raise self.fail(at, f"unknown field {number} in {message}")
        dtype = {_F4: np.float32, _F8: np.float64, _I4: np.int32}[kind]
        arr = np.concatenate(values).astype(dtype, copy=False) if values else np.zeros(0, dtype)
        return arr, keys, shape

    def value_map(self, span: tuple[int, int], what: str) -> _Tensor:
        key: str | None = None
        tensor: _Tensor | None = None
        for number, wire, at, payload in self.fields(*span, f"the {what} map entry"):
            if number == 1 and wire == 2:
                key = self.data[payload[0] : payload[1]].decode("utf-8", "replace")
            elif number == 2 and wire == 2:
                for vnum, vwire, vat, vpayload in self.fields(payload[0], payload[1], "Value"):
                    if vnum in _FIELD_TENSOR and vwire == 2:
                        kind = _FIELD_TENSOR[vnum]
                        tensor = (kind, *self.tensor(vpayload, kind))
                    elif vnum == 9:
                        raise self.fail(vat, f"unsupported Bytes value in {what}")
                    else:
                        raise self.fail(vat, f"unknown field {vnum} (wire type {vwire}) in Value")
            else:
                raise self.fail(at, f"unknown field {number} (wire type {wire}) in the {what} map entry")
        if key != "values":
            raise self.fail(span[0], f"unsupported {what} name {key!r} (expected 'values')")
        if tensor is None:
            raise self.fail(span[0], f"{what} 'values' has no tensor")
        return tensor

    def record(self, start: int, end: int) -> tuple[str, np.ndarray, list[int] | None, list[int], Any]:
        features = None
        label: Any = None
        for number, wire, at, payload in self.fields(start, end, "Record"):
            if number == 1 and wire == 2:
                if features is not None:
                    raise self.fail(at, "more than one feature in Record")
                features = self.value_map(payload, "feature")
            elif number == 2 and wire == 2:
                if label is not None:
                    raise self.fail(at, "more than one label in Record")
                _, arr, _, _ = self.value_map(payload, "label")
                if arr.size != 1:
                    raise self.fail(at, f"label holds {arr.size} values, expected 1")
                label = arr[0]
            elif number in (3, 4, 5) and wire == 2:
                continue  # uid, metadata, configuration: not data
            else:
                raise self.fail(at, f"unknown field {number} (wire type {wire}) in Record")
        if features is None:
            raise self.fail(start, "Record has no features")
        return (*features, label)


def _parse_slow(
    buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, joined: dict[int, bytes], name: str
) -> _Parsed:
    data = buf.tobytes()
    all_values: list[np.ndarray] = []
    all_keys: list[np.ndarray] = []
    counts = np.zeros(starts.size, np.int64)
    labels: list[Any] = []
    shapes: set[tuple[int, ...]] = set()
    any_keys = False
    kinds: set[str] = set()
    for i, (start, length) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
        if i in joined:
            reader = _Reader(joined[i], f"{name} (multi-part record)", start)
            kind, values, keys, shape, label = reader.record(0, len(joined[i]))
        else:
            reader = _Reader(data, name, 0)
            kind, values, keys, shape, label = reader.record(start, start + length)
        kinds.add(kind)
        if len(kinds) > 1:
            raise reader.fail(start, f"{kind} tensor after records of type {sorted(kinds - {kind})[0]}")
        if keys is not None and len(keys) != values.size:
            raise reader.fail(start, f"sparse record with {len(keys)} keys but {values.size} values")
        if shape:
            if len(shape) != 1:
                raise reader.fail(start, f"feature shape {shape} is not one-dimensional")
            shapes.add(tuple(shape))
        any_keys |= keys is not None
        local = np.arange(values.size, dtype=np.uint64)
        all_keys.append(local if keys is None else np.array(keys, np.uint64))
        all_values.append(values)
        counts[i] = values.size
        labels.append(label)
    if len(shapes) > 1:
        raise RecordIOError(f"recordio {name}: records have different feature shapes {sorted(shapes)}.")
    with_label = sum(label is not None for label in labels)
    if with_label not in (0, len(labels)):
        first = next(i for i, label in enumerate(labels) if label is None)
        raise RecordIOError(
            f"recordio {name}: record {first} (byte {int(starts[first]) - 8}) has no label "
            "but other records do."
        )
    dtype = {_F4: np.float32, _F8: np.float64, _I4: np.int32}[kinds.pop()] if kinds else np.float32
    return _Parsed(
        counts=counts,
        values=np.concatenate(all_values).astype(dtype, copy=False) if all_values else np.zeros(0, dtype),
        keys=np.concatenate(all_keys) if any_keys else None,
        n_cols=shapes.pop()[0] if shapes else None,
        labels=np.array(labels) if with_label else None,  # label tensors keep their own type
    )


# ---- optional numba reader kernel
#
# The SDK layout of _parse_fast_chunk in one compiled pass per file (no GIL held): values, keys and
# labels of records of exactly that layout, with every record holding keys; anything else (dense
# records, 10-byte varints, broken bytes) returns ok=False and the numpy parser decides, so results
# and errors are those of the numpy path. Used when numba imports, for inputs of at least
# _NUMBA_READ_MIN_BYTES (_NUMBA_READ_MIN_BYTES_LOADED once numba is imported).
_NUMBA_READ_MIN_BYTES = 32 << 20
_NUMBA_READ_MIN_BYTES_LOADED = 1 << 20
_numba_parser: Any = None  # None: not tried yet; False: unavailable
# None: by size as above; True/False: always/never (tests).
_USE_NUMBA_READER: bool | None = None
_ENTRY_HEAD = np.frombuffer(b"\x0a\x06values\x12", np.uint8)
_LABEL_HEAD = np.frombuffer(b"\x12\x12\x0a\x06values\x12\x08\x12\x06\x0a\x04", np.uint8)


def _read_varint(buf: np.ndarray, pos: Any, end: Any) -> tuple[Any, Any, bool]:  # pragma: no cover - numba
    """-> (value, position after it, ok) of the varint at ``buf[pos]``: ok=False unless it ends
    before ``end`` in at most 9 bytes (values < 2**63)."""
    value = np.int64(0)
    shift = 0
    while True:
        if pos >= end or shift > 56:
            return value, pos, False
        b = buf[pos]
        pos += 1
        value |= np.int64(b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos, True


def _parse_kernel_py(  # pragma: no cover - compiled by numba (run as Python in the tests)
    buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, entry_head: np.ndarray, label_head: np.ndarray
) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any, bool]:
    """-> (ok, counts, value bytes, keys (int64), label bytes, n_cols or -1, labelled)."""
    n = starts.size
    counts = np.zeros(n, np.int64)
    vstarts = np.zeros(n, np.int64)
    kstarts = np.zeros(n, np.int64)
    kends = np.zeros(n, np.int64)
    label_pos = np.zeros(n, np.int64)
    empty8 = np.zeros(0, np.uint8)
    empty64 = np.zeros(0, np.int64)
    n_cols = np.int64(-1)
    labelled = -1
    any_keys = False
    size = buf.size
    for r in range(n):
        pos = starts[r]
        end = pos + lens[r]
        if end > size or pos >= end or buf[pos] != 0x0A:
            return False, counts, empty8, empty64, empty8, -1, False
        pos += 1
        # Each varint: at most 9 bytes (values < 2**63) inside its bound, else not this layout.
        entry_len, pos, ok = _read_varint(buf, pos, end)
        if not ok:
            return False, counts, empty8, empty64, empty8, -1, False
        entry_end = pos + entry_len
        if pos + entry_head.size > end:
            return False, counts, empty8, empty64, empty8, -1, False
        for j in range(entry_head.size):
            if buf[pos + j] != entry_head[j]:
                return False, counts, empty8, empty64, empty8, -1, False
        pos += entry_head.size
        value_len, pos, ok = _read_varint(buf, pos, end)
        if not ok:
            return False, counts, empty8, empty64, empty8, -1, False
        value_end = pos + value_len
        if pos >= end or buf[pos] != 0x12:
            return False, counts, empty8, empty64, empty8, -1, False
        pos += 1
        tensor_len, pos, ok = _read_varint(buf, pos, end)
        if not ok:
            return False, counts, empty8, empty64, empty8, -1, False
        tensor_end = pos + tensor_len
        if tensor_end != value_end or value_end != entry_end or entry_end > end:
            return False, counts, empty8, empty64, empty8, -1, False
        vb = np.int64(0)
        vstart = pos
        if pos < tensor_end and buf[pos] == 0x0A:
            pos += 1
            vb, pos, ok = _read_varint(buf, pos, tensor_end)
            if not ok:
                return False, counts, empty8, empty64, empty8, -1, False
            vstart = pos
            pos += vb
        kb = np.int64(0)
        kstart = pos
        if pos < tensor_end and buf[pos] == 0x12:
            pos += 1
            kb, pos, ok = _read_varint(buf, pos, tensor_end)
            if not ok:
                return False, counts, empty8, empty64, empty8, -1, False
            kstart = pos
            pos += kb
            any_keys = True
        elif vb > 0:  # values without keys: a dense record (the numpy parser's case)
            return False, counts, empty8, empty64, empty8, -1, False
        if pos < tensor_end and buf[pos] == 0x1A:
            pos += 1
            sb, pos, ok = _read_varint(buf, pos, tensor_end)
            if not ok:
                return False, counts, empty8, empty64, empty8, -1, False
            shape_end = pos + sb
            dim, pos, ok = _read_varint(buf, pos, shape_end)
            if not ok:
                return False, counts, empty8, empty64, empty8, -1, False
            if pos != shape_end or (n_cols != -1 and dim != n_cols):
                return False, counts, empty8, empty64, empty8, -1, False
            n_cols = dim
        if pos != tensor_end or vb % 4 != 0:
            return False, counts, empty8, empty64, empty8, -1, False
        has_label = 0
        if pos < end:
            if end - pos != label_head.size + 4:
                return False, counts, empty8, empty64, empty8, -1, False
            for j in range(label_head.size):
                if buf[pos + j] != label_head[j]:
                    return False, counts, empty8, empty64, empty8, -1, False
            label_pos[r] = pos + label_head.size
            has_label = 1
        if labelled != -1 and has_label != labelled:
            return False, counts, empty8, empty64, empty8, -1, False
        labelled = has_label
        counts[r] = vb // 4
        vstarts[r] = vstart
        kstarts[r] = kstart
        kends[r] = kstart + kb
    if not any_keys:  # (no record holds keys: keys is None in the numpy parser's result)
        return False, counts, empty8, empty64, empty8, -1, False
    total = 0
    for r in range(n):
        total += counts[r]
    values = np.empty(4 * total, np.uint8)
    keys = np.empty(total, np.int64)
    labels = np.empty(4 * n if labelled == 1 else 0, np.uint8)
    out = 0
    for r in range(n):
        count = counts[r]
        src = vstarts[r]
        values[4 * out : 4 * (out + count)] = buf[src : src + 4 * count]
        pos = kstarts[r]
        kend = kends[r]
        k = 0
        while pos < kend:
            key, pos, ok = _read_varint(buf, pos, kend)
            if not ok:
                return False, counts, empty8, empty64, empty8, -1, False
            if k >= count:
                return False, counts, empty8, empty64, empty8, -1, False
            keys[out + k] = key
            k += 1
        if k != count:
            return False, counts, empty8, empty64, empty8, -1, False
        if labelled == 1:
            for j in range(4):
                labels[4 * r + j] = buf[label_pos[r] + j]
        out += count
    return True, counts, values, keys, labels, n_cols, labelled == 1


def _numba_reader(size: int) -> Any:
    """The compiled parser when it is wanted for an input of ``size`` bytes, else None."""
    global _numba_parser
    if _USE_NUMBA_READER is None:
        ready = _numba_parser or "numba" in sys.modules
        if size < (_NUMBA_READ_MIN_BYTES_LOADED if ready else _NUMBA_READ_MIN_BYTES):
            return None
    elif not _USE_NUMBA_READER:
        return None
    if _numba_parser is None:
        numba = _numba_module()
        _numba_parser = False if numba is None else numba.njit(cache=True, nogil=True)(_parse_kernel_py)
    return _numba_parser or None


def _parse_compiled(kernel: Any, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> _Parsed | None:
    """_parse_fast's result from the kernel, or None when the records need the numpy parser."""
    if starts.size == 0:
        return None
    ok, counts, values, keys, labels, n_cols, labelled = kernel(buf, starts, lens, _ENTRY_HEAD, _LABEL_HEAD)
    if not ok:
        return None
    return _Parsed(
        counts=counts,
        values=values.view("<f4"),
        keys=keys.view(np.uint64),
        n_cols=None if n_cols < 0 else int(n_cols),
        labels=labels.view("<f4") if labelled else None,
    )


def _parse(source: Source) -> tuple[_Parsed, np.ndarray, str]:
    buf, name = _load(source)
    starts, lens, joined = _frames(buf, name)
    parsed = None
    if not joined:
        kernel = _numba_reader(buf.size)
        if kernel is not None:
            parsed = _parse_compiled(kernel, buf, starts, lens)
        if parsed is None:
            parsed = _parse_fast(buf, starts, lens)
    if parsed is None:
        parsed = _parse_slow(buf, starts, lens, joined, name)
    return parsed, starts, name


def _to_csr(parsed: _Parsed, starts: np.ndarray, name: str) -> sp.csr_matrix:
    indptr = np.zeros(parsed.counts.size + 1, dtype=np.int64)
    np.cumsum(parsed.counts, out=indptr[1:])
    if parsed.keys is None:
        keys = np.arange(parsed.values.size, dtype=np.int64) - np.repeat(indptr[:-1], parsed.counts)
    else:
        keys = parsed.keys.astype(np.int64)
    widest = int(keys.max()) + 1 if keys.size else 0
    n_cols = parsed.n_cols if parsed.n_cols is not None else widest
    if widest > n_cols or (keys.size and keys.min() < 0):
        bad = int(np.flatnonzero((keys >= n_cols) | (keys < 0))[0])
        row = int(np.searchsorted(indptr, bad, side="right")) - 1
        raise RecordIOError(
            f"recordio {name}: record {row} (byte {int(starts[row]) - 8}) has key {int(parsed.keys[bad])} "  # type: ignore[index]
            f"outside its shape [{n_cols}]."
        )
    index_dtype = np.int32 if max(n_cols, parsed.values.size) < 2**31 else np.int64
    return sp.csr_matrix(
        (parsed.values, keys.astype(index_dtype), indptr.astype(index_dtype)),
        shape=(parsed.counts.size, n_cols),
    )


def read_sparse(source: Source) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """Read records into a CSR matrix (one row per record) and the labels (None if unlabelled).

    ``source`` is a path, bytes, or a binary file object; a concatenation of files is fine as long
    as every record has the same shape. Dense records become full rows. The dtype is that of the
    tensors (float32 for SDK/``write_sparse`` files). The column count comes from the records'
    ``shape`` (else the largest key + 1).
    """
    parsed, starts, name = _parse(source)
    return _to_csr(parsed, starts, name), parsed.labels


def read_dense(source: Source) -> tuple[np.ndarray, np.ndarray | None]:
    """Read records into a 2-D array (one row per record) and the labels (None if unlabelled).

    Dense records must all have the same number of values; sparse records are expanded.
    """
    parsed, starts, name = _parse(source)
    n = parsed.counts.size
    if parsed.keys is None:
        width = int(parsed.counts[0]) if n else 0
        if n and np.any(parsed.counts != width):
            row = int(np.flatnonzero(parsed.counts != width)[0])
            raise RecordIOError(
                f"recordio {name}: record {row} (byte {int(starts[row]) - 8}) has {int(parsed.counts[row])} "
                f"values, record 0 has {width}."
            )
        if parsed.n_cols is not None and n and parsed.n_cols != width:
            raise RecordIOError(
                f"recordio {name}: records hold {width} values but declare shape [{parsed.n_cols}]."
            )
        return parsed.values.reshape(n, width), parsed.labels
    return _to_csr(parsed, starts, name).toarray(), parsed.labels


def read_sparse_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """``read_sparse`` over several files, rows in the order given; all must share a column count."""
    mats, labels = [], []
    for path in paths:
        m, y = read_sparse(path)
        mats.append((path, m))
        labels.append(y)
    if not mats:
        return sp.csr_matrix((0, 0), dtype=np.float32), None
    widths = {m.shape[1] for _, m in mats if m.shape[0]}
    if len(widths) > 1:
        raise RecordIOError(
            f"recordio files have different column counts {sorted(widths)}: {[str(p) for p, _ in mats]}."
        )
    n_cols = widths.pop() if widths else 0
    _check_file_labels(labels, [p for p, _ in mats])
    out = sp.vstack([sp.csr_matrix(m, shape=(m.shape[0], n_cols)) for _, m in mats], format="csr")
    return out, None if labels[0] is None else np.concatenate(labels)  # type: ignore[arg-type]


def read_dense_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray | None]:
    """``read_dense`` over several files, rows in the order given; all must have the same width."""
    arrays, labels, names = [], [], []
    for path in paths:
        x, y = read_dense(path)
        arrays.append(x)
        labels.append(y)
        names.append(path)
    if not arrays:
        return np.zeros((0, 0), np.float32), None
    widths = {a.shape[1] for a in arrays if a.shape[0]}
    if len(widths) > 1:
        raise RecordIOError(
            f"recordio files have different widths {sorted(widths)}: {[str(p) for p in names]}."
        )
    width = widths.pop() if widths else 0
    _check_file_labels(labels, names)
    out = np.concatenate([a.reshape(a.shape[0], width) for a in arrays])
    return out, None if labels[0] is None else np.concatenate(labels)  # type: ignore[arg-type]


def _check_file_labels(labels: list[np.ndarray | None], paths: Sequence[Any]) -> None:
    have = [y is not None for y in labels]
    if any(have) and not all(have):
        missing = paths[have.index(False)]
        raise RecordIOError(f"recordio '{missing}' has no labels but other files do.")
