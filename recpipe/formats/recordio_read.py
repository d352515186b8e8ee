"""Reads recordio-protobuf files (see :mod:`recpipe.formats.recordio` for the format) with numpy.

The layout the SDK (and recpipe's writer) produces, for all three tensor types, is parsed field
by field for every record of a chunk at once. A record that departs from it is reported with its
index and byte offset; other valid encodings of the same protobuf (unpacked or reordered fields,
dmlc multi-part records) are rejected by name: neither SageMaker's writers nor ours produce them.

Import these names from :mod:`recpipe.formats.recordio`, which re-exports them with the writer.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recpipe.formats._recordio_layout import DTYPE, F4, I4, MAGIC, TYPE_OF_TAG, VALUES_KEY, WIDTH
from recpipe.formats._source import Source, read_source
from recpipe.formats.exceptions import RecordIOError

__all__ = ["read_dense", "read_dense_files", "read_sparse", "read_sparse_files"]


def _frames(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Payload start and length of each frame. Checked with array operations when the magic words
    chain from the first byte to the last (the usual case); else walked frame by frame, which also
    names the first bad frame (a payload may hold the magic word, so a miss is not yet an error)."""
    words = np.frombuffer(data, "<u4", count=len(data) // 4)
    at = np.flatnonzero(words[:-1] == MAGIC)
    if len(data) % 4 == 0 and at.size and at[0] == 0:
        lens = words[at + 1].astype(np.int64)  # (a continuation flag makes it >= 2**29: walked)
        following = 4 * at + 8 + ((lens + 3) & ~3)
        if np.array_equal(following[:-1], 4 * at[1:]) and following[-1] == len(data) and lens.max() < 1 << 29:
            return 4 * at + 8, lens
    starts_list, lens_list = [], []
    pos, size = 0, len(data)
    while pos < size:
        magic, word = struct.unpack_from("<II", data, pos) if size - pos >= 8 else (None, 0)
        problem = (
            f"truncated record header ({size - pos} bytes left, need 8)" if magic is None
            else f"wrong magic 0x{magic:08X} (expected 0x{MAGIC:08X})" if magic != MAGIC
            else f"multi-part record (dmlc continuation flag {word >> 29}), which the SDK never writes"
            if word >> 29
            else f"truncated record ({word} bytes declared, {size - pos - 8} left)" if pos + 8 + word > size
            else None
        )  # fmt: skip
        if problem:
            raise RecordIOError(f"recordio {name}: {problem}, at byte {pos}.")
        starts_list.append(pos + 8)
        lens_list.append(word)
        pos += 8 + min((word + 3) & ~3, size - pos - 8)  # (the last frame may lack its padding)
    return np.array(starts_list, np.int64), np.array(lens_list, np.int64)


@dataclass
class _Parsed:
    counts: np.ndarray  # values per record
    values: np.ndarray  # all values, record after record
    keys: np.ndarray | None  # column of each value (None when every record is dense)
    n_cols: Any  # from the records' shape when they carry one (a chunk's: the distinct shapes)
    labels: np.ndarray | None


_PAD = 16  # zero bytes after the data: fixed-width windows and word loads stay in bounds


class _Fields:
    """Reads the same field of every record of a chunk at once (``pos``: one cursor per record).

    A record that departs from the expected layout is marked with the first thing that was wrong
    and where; ``raise_first`` then reports the earliest such record.
    """

    def __init__(self, buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf, self.pos, self.end = buf, pos.copy(), end
        self.win = np.lib.stride_tricks.sliding_window_view(buf, 10)
        self.limit = buf.size - _PAD
        self.problem = np.full(pos.size, -1)  # index into self.problems
        self.problem_at = np.zeros(pos.size, np.int64)
        self.problems: list[str] = []

    def check(self, ok: np.ndarray, what: str, at: np.ndarray | None = None) -> None:
        new = ~ok & (self.problem < 0)
        if new.any():
            self.problem[new] = len(self.problems)
            self.problem_at[new] = (self.pos if at is None else at)[new]
            self.problems.append(what)

    def byte(self) -> np.ndarray:
        return self.buf[np.minimum(self.pos, self.limit)]

    def byte_is(self, value: int) -> np.ndarray:
        """Whether the next byte (before ``end``) is ``value``; steps over it where it is."""
        hit = (self.pos < self.end) & (self.byte() == value)
        self.pos += hit
        return hit

    def expect(self, data: bytes, what: str) -> None:
        at = np.minimum(self.pos, self.limit)
        same = (np.lib.stride_tricks.sliding_window_view(self.buf, len(data))[at] == list(data)).all(axis=1)
        self.check(same & (self.pos + len(data) <= self.end), what)
        self.pos += len(data)

    def varint(self, what: str, where: np.ndarray | None = None) -> np.ndarray:
        """A varint at each cursor (only ``where``; 0 elsewhere), stepped over; int64 (a 10-byte
        varint, a negative Int32, wraps to its value)."""
        window = self.win[np.minimum(self.pos, self.limit)]
        stop = window < 0x80
        length = np.argmax(stop, axis=1) + 1
        value = (window[:, 0] & 0x7F).astype(np.uint64)
        for j in range(1, int(length.max(initial=0))):
            value |= np.where(length > j, (window[:, j] & 0x7F).astype(np.uint64) << np.uint64(7 * j), 0)
        ok = stop.any(axis=1) & (self.pos + length <= self.end)
        where = np.ones(self.pos.size, bool) if where is None else where
        self.check(ok | ~where, f"a valid {what} varint")
        self.pos += np.where(where, length, 0)
        return np.where(where & ok, value, np.uint64(0)).view(np.int64)

    def length(self, what: str, where: np.ndarray | None = None) -> np.ndarray:
        """A length prefix: returns where its field ends."""
        size = self.varint(f"{what} length", where)
        self.check((size >= 0) & (self.pos + size <= self.end), f"{what} within its message")
        return self.pos + size

    def raise_first(self, name: str, first_record: int, frame_start: np.ndarray) -> None:
        bad = np.flatnonzero(self.problem >= 0)
        if bad.size:
            i = int(bad[0])
            raise RecordIOError(
                f"recordio {name}: record {first_record + i} (frame at byte {int(frame_start[i])}): expected "
                f"{self.problems[self.problem[i]]} at byte {int(self.problem_at[i])}."
            )


def _varint_stream(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint64 values of a concatenation of complete varints and where each one ends (exclusive)."""
    ends = np.flatnonzero(stream < 0x80) + 1
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    lens = ends - starts
    values = np.zeros(ends.size, np.uint64)
    for j in range(int(lens.max(initial=0))):
        byte = stream[np.minimum(starts + j, stream.size - 1)] & np.uint8(0x7F)
        values |= np.where(lens > j, byte.astype(np.uint64) << np.uint64(7 * j), np.uint64(0))
    return values, ends


def _packed(buf: np.ndarray, starts: np.ndarray, sizes: np.ndarray, kind: str) -> tuple[np.ndarray, ...]:
    """Values, count per record and bad records of packed fields: scalars of a fixed width (bad: a
    partial one), or varints (Int32 values and keys; bad: a varint running past its field)."""
    if kind in WIDTH:
        width = WIDTH[kind]
        counts = sizes // width
        index = np.repeat(starts - width * (np.cumsum(counts) - counts), counts)
        index += width * np.arange(int(counts.sum()), dtype=np.int64)
        words = np.ndarray((buf.size - 7,), f"<u{width}", buf, strides=(1,))  # overlapping word loads
        return words[index].view(DTYPE[kind]), counts, sizes % width != 0
    stream = buf[np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))]
    values, ends = _varint_stream(stream)
    segment_ends = np.cumsum(sizes)
    counts = np.diff(np.searchsorted(ends, segment_ends, side="right"), prepend=0)
    bad = (sizes > 0) & (stream[np.maximum(segment_ends - 1, 0)] >= 0x80) if stream.size else sizes > 0
    return values, counts, bad


_READ_CHUNK = 1 << 15  # records parsed at once: bounds the index arrays (8 bytes per key byte)


def _parse_chunk(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, first: int, name: str) -> _Parsed:
    f = _Fields(buf, starts, starts + lens)
    f.expect(b"\x0a", "the features field (tag 0x0a)")
    entry_end = f.length("features entry")
    f.expect(VALUES_KEY, "the feature name 'values'")
    value_end = f.length("feature value")
    tag = f.byte()
    f.check(np.isin(tag, list(TYPE_OF_TAG)), "a Float32, Float64 or Int32 tensor (tag 0x12, 0x1a or 0x3a)")
    f.check(tag == tag[0], f"the tensor type of record {first} (tag 0x{tag[0]:02x})")
    f.pos += 1
    tensor_end = f.length("tensor")
    f.check((tensor_end == value_end) & (value_end == entry_end), "one tensor in the features entry")
    kind = TYPE_OF_TAG.get(int(tag[0]), F4)
    record_end, f.end = f.end, tensor_end
    fields = {}
    for field_tag in (0x0A, 0x12):  # packed values, then packed keys: (present, start, size)
        present = f.byte_is(field_tag)
        end = f.length("values" if field_tag == 0x0A else "keys", present)
        fields[field_tag] = (present, f.pos.copy(), np.where(present, end - f.pos, 0))
        f.pos = np.where(present, end, f.pos)
    has_shape = f.byte_is(0x1A)
    shape_end = f.length("shape", has_shape)
    shape = f.varint("shape", has_shape)
    f.check(~has_shape | (f.pos == shape_end), "a one-dimensional shape")
    f.check(f.pos == tensor_end, "packed values (1), keys (2), shape (3) in this order, then the tensor end")
    f.end = record_end
    labelled = f.pos < record_end
    f.check(labelled == labelled[0], f"{'a' if labelled[0] else 'no'} label, as record {first}")
    labels = None
    if labelled[0]:
        f.expect(b"\x12", "the label field (tag 0x12)")
        f.length("label entry")
        f.expect(VALUES_KEY, "the label name 'values'")
        f.length("label value")
        label_tag = f.byte()
        f.check(np.isin(label_tag, list(TYPE_OF_TAG)) & (label_tag == label_tag[0]), "one label type")
        f.pos += 1
        f.length("label tensor")
        f.expect(b"\x0a", "the label's values (tag 0x0a)")
        label_kind = TYPE_OF_TAG.get(int(label_tag[0]), F4)
        label_end = f.length("label values")
        if label_kind in WIDTH:
            at = np.minimum(f.pos, f.limit)  # (records found wrong above may point anywhere)
            labels = _packed(buf, at, np.full(at.size, WIDTH[label_kind]), label_kind)[0]
            f.check(label_end - f.pos == WIDTH[label_kind], f"one {label_kind} label")
            f.pos = label_end
        else:
            labels = f.varint("label").astype(np.int32)
            f.check(f.pos == label_end, "one Int32 label")
    f.check(f.pos == record_end, "the end of the record")
    f.raise_first(name, first, starts - 8)
    _, values_start, values_size = fields[0x0A]
    values, counts, bad = _packed(buf, values_start, values_size, kind)
    f.check(~bad, f"whole packed {kind} values", values_start)
    keys = None
    has_keys, keys_start, keys_size = fields[0x12]
    if has_keys.any():
        key_values, key_counts, bad = _packed(buf, keys_start, keys_size, "keys")
        f.check(~bad, "whole packed key varints", keys_start)
        f.check(~has_keys | (key_counts == counts), "as many keys as values", keys_start)
        f.raise_first(name, first, starts - 8)
        keys = _local_columns(counts)
        keys[np.repeat(has_keys, counts)] = key_values
    f.raise_first(name, first, starts - 8)
    if kind == I4:
        values = values.view(np.int64).astype(np.int32)  # (negative: 10-byte sign-extended varints)
    return _Parsed(counts.astype(np.int64), values, keys, np.unique(shape[has_shape]), labels)


def _local_columns(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., counts[i] - 1 for each record (the columns of dense records)."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return (np.arange(starts.size, dtype=np.int64) - starts).astype(np.uint64)


def _parse(source: Source) -> tuple[_Parsed, np.ndarray, str]:
    data, name = read_source(source, "recordio file", RecordIOError)
    starts, lens = _frames(data, name)
    buf = np.concatenate([np.frombuffer(data, np.uint8), np.zeros(_PAD, np.uint8)])
    parts = [
        _parse_chunk(buf, starts[lo : lo + _READ_CHUNK], lens[lo : lo + _READ_CHUNK], lo, name)
        for lo in range(0, starts.size, _READ_CHUNK)
    ]
    if not parts:
        return _Parsed(np.zeros(0, np.int64), np.zeros(0, np.float32), None, None, None), starts, name
    shapes = np.unique(np.concatenate([p.n_cols for p in parts]))
    types = {_types(p) for p in parts}
    if shapes.size > 1:
        raise RecordIOError(f"recordio {name}: records differ in feature shape {shapes.tolist()}.")
    if len(types) > 1:  # (within a piece, _parse_chunk names the record; this is across pieces)
        raise RecordIOError(f"recordio {name}: records differ in tensor types: {'; '.join(sorted(types))}.")
    keys = None
    if any(p.keys is not None for p in parts):
        keys = np.concatenate([_local_columns(p.counts) if p.keys is None else p.keys for p in parts])
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])  # type: ignore[misc]
    counts, values = (np.concatenate([getattr(p, k) for p in parts]) for k in ("counts", "values"))
    return _Parsed(counts, values, keys, int(shapes[0]) if shapes.size else None, labels), starts, name


def _types(parsed: _Parsed) -> str:
    labels = "no labels" if parsed.labels is None else f"{parsed.labels.dtype.name} labels"
    return f"{parsed.values.dtype.name} values, {labels}"


def _to_csr(parsed: _Parsed, starts: np.ndarray, name: str) -> sp.csr_matrix:
    indptr = np.zeros(parsed.counts.size + 1, dtype=np.int64)
    np.cumsum(parsed.counts, out=indptr[1:])
    keys = _local_columns(parsed.counts) if parsed.keys is None else parsed.keys
    widest = int(keys.max()) + 1 if keys.size else 0
    n_cols = parsed.n_cols if parsed.n_cols is not None else widest
    if widest > n_cols:
        bad = int(np.flatnonzero(keys >= n_cols)[0])
        row = int(np.searchsorted(indptr, bad, side="right")) - 1
        raise RecordIOError(
            f"recordio {name}: record {row} (frame at byte {int(starts[row]) - 8}) has key {int(keys[bad])} "
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
    if parsed.keys is not None:
        return _to_csr(parsed, starts, name).toarray(), parsed.labels
    width = int(parsed.counts[0]) if n else 0
    if n and np.any(parsed.counts != width):
        row = int(np.flatnonzero(parsed.counts != width)[0])
        raise RecordIOError(
            f"recordio {name}: record {row} (frame at byte {int(starts[row]) - 8}) has "
            f"{int(parsed.counts[row])} values, record 0 has {width}."
        )
    return parsed.values.reshape(n, width), parsed.labels


def _read_files(read: Any, paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Any], np.ndarray | None]:
    """Each file's rows (by ``read``) and all labels; every file must have labels, or none."""
    names = list(paths)
    results = [read(path) for path in names]
    have = [y is not None for _, y in results]
    if any(have) and not all(have):
        raise RecordIOError(f"recordio '{names[have.index(False)]}' has no labels but other files do.")
    widths = {x.shape[1] for x, _ in results if x.shape[0]}
    if len(widths) > 1:
        raise RecordIOError(f"recordio files have different widths {sorted(widths)}: {list(map(str, names))}")
    labels = np.concatenate([y for _, y in results]) if results and all(have) else None
    return [x for x, _ in results], labels


def read_sparse_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """``read_sparse`` over several files, rows in the order given; all must share a column count."""
    mats, labels = _read_files(read_sparse, paths)
    n_cols = max((m.shape[1] for m in mats if m.shape[0]), default=0)
    rows = [sp.csr_matrix(m, shape=(m.shape[0], n_cols)) for m in mats]
    return (sp.vstack(rows, format="csr") if rows else sp.csr_matrix((0, 0), dtype=np.float32)), labels


def read_dense_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray | None]:
    """``read_dense`` over several files, rows in the order given; all must have the same width."""
    arrays, labels = _read_files(read_dense, paths)
    width = max((a.shape[1] for a in arrays if a.shape[0]), default=0)
    rows = [a.reshape(a.shape[0], width) for a in arrays]
    return (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)), labels
