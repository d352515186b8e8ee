"""MXNet NDArray list files (``mx.nd.save`` / ``nd.load``), the ``params`` of built-in algorithms.

Layout (little-endian; MXNet ``src/ndarray/ndarray.cc``, ``NDArray::Save``/``Load``)::

    uint64 0x112 (kMXAPINDArrayListMagic) | uint64 reserved (0)
    uint64 count | count x NDArray
    uint64 count | count x (uint64 length | utf-8 name)     # names may be absent (count 0)

    NDArray (V2, magic 0xF993FAC9; V3 0xF993FACA is the same bytes under numpy shape semantics):
    uint32 magic | int32 storage type | [storage shape] | shape | int32 dev_type | int32 dev_id
    | int32 type flag | [int32 aux type flag | aux shape] | data (C order) | [aux data]
    shape: int32 ndim | ndim x int64

Storage type 0 is dense. Type 1, ``row_sparse``, keeps only some rows (MXNet's sparse FM recipe
stores ``v`` and ``w1_weight`` so): the bracketed parts are then present, the data holds the
stored rows (storage shape) and the one auxiliary array their row indices (int64); rows never
stored are zero. The reader returns every array dense. CSR storage (2), legacy (pre-V2) arrays and
unknown type flags raise ``MXNetFormatError`` naming what was found and its byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from recpipe.formats._source import Source, read_source
from recpipe.formats.exceptions import MXNetFormatError

__all__ = ["LIST_MAGIC", "NDARRAY_V2_MAGIC", "NDARRAY_V3_MAGIC", "load_params", "save_params",
           "storage_types"]

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

# mshadow type flags (``mshadow/base.h``); 12 (bfloat16) has no numpy dtype.
_DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_FLAGS = {dtype: flag for flag, dtype in _DTYPES.items()}
_STORAGE = {0: "default (dense)", 1: "row_sparse", 2: "csr"}
_CPU = (1, 0)  # Context: dev_type kCPU, dev_id 0



class _Stream:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name, self.pos = data, name, 0

    def fail(self, message: str, at: int | None = None) -> MXNetFormatError:
        where = self.pos if at is None else at
        return MXNetFormatError(f"MXNet params {self.name}: {message} at byte {where}.")

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(f"truncated {what}: need {size} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        st = struct.Struct("<" + fmt)
        values = st.unpack(self.take(st.size, what))
        return values[0] if len(values) == 1 else values


def _read_shape(s: _Stream, what: str, v2: bool) -> tuple[int, ...]:
    at = s.pos
    ndim = s.unpack("i", what)
    if ndim < 0 or (ndim == 0 and v2):
        raise s.fail(f"{what} is empty (a none NDArray, ndim {ndim})", at)
    if ndim > 32:
        raise s.fail(f"{what} has an implausible ndim {ndim}", at)
    shape = s.unpack(f"{ndim}q", what) if ndim else ()
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in shape):
        raise s.fail(f"{what} has unknown dimensions {shape}", at)
    return shape


def _read_dtype(s: _Stream, index: int, what: str) -> np.dtype[Any]:
    at = s.pos
    flag = s.unpack("i", f"{what} of array {index}")
    dtype = _DTYPES.get(flag)
    if dtype is None:
        raise s.fail(f"array {index} has unsupported {what} {flag}", at)
    return dtype


def _read_values(s: _Stream, shape: tuple[int, ...], dtype: np.dtype[Any], what: str) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    raw = s.take(count * dtype.itemsize, f"{what} ({shape} {dtype})")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _read_array(s: _Stream, index: int) -> np.ndarray:
    at = s.pos
    magic = s.unpack("I", f"magic of array {index}")
    if magic not in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        legacy = magic == NDARRAY_V1_MAGIC or magic < 64
        kind = "legacy (pre-V2) NDArray magic" if legacy else "unknown NDArray magic"
        expected = f"0x{NDARRAY_V2_MAGIC:08X} or 0x{NDARRAY_V3_MAGIC:08X}"
        raise s.fail(f"array {index} has {kind} 0x{magic:08X} (expected {expected})", at)
    v2 = magic == NDARRAY_V2_MAGIC
    at = s.pos
    stype = s.unpack("i", f"storage type of array {index}")
    if stype not in (0, 1):
        label = _STORAGE.get(stype, "unknown")
        raise s.fail(
            f"array {index} has storage type {stype} ({label}); only dense and row_sparse are supported", at
        )
    stored = _read_shape(s, f"storage shape of array {index}", v2) if stype == 1 else None
    shape = _read_shape(s, f"shape of array {index}", v2)
    s.unpack("ii", f"context of array {index}")  # where it lived (cpu/gpu) does not matter once loaded
    dtype = _read_dtype(s, index, "type flag")
    if stored is None:
        return _read_values(s, shape, dtype, f"data of array {index}").copy()
    at = s.pos
    index_dtype = _read_dtype(s, index, "row index type flag")
    index_shape = _read_shape(s, f"row index shape of row_sparse array {index}", v2)
    if index_dtype.kind not in "iu" or not shape or stored[1:] != shape[1:] or index_shape != stored[:1]:
        raise s.fail(
            f"row_sparse array {index} of shape {shape} stores rows of shape {stored} with {index_shape} "
            f"{index_dtype} row indices; expected ({stored[:1][0] if stored else '?'},) integer indices and "
            "stored rows shaped like the array's",
            at,
        )
    rows = _read_values(s, stored, dtype, f"stored rows of array {index}")
    at = s.pos
    indices = _read_values(s, index_shape, index_dtype, f"row indices of array {index}").astype(np.int64)
    if indices.size and (np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= shape[0]):
        raise s.fail(f"row_sparse array {index} has row indices not increasing within [0, {shape[0]})", at)
    dense = np.zeros(shape, dtype)
    dense[indices] = rows
    return dense


def load_params(source: Source) -> dict[str, np.ndarray]:
    """Read an ``nd.save`` list file into {name: array} in file order (names like ``arg:v``).

    ``source`` is a path, bytes or a binary file object. The whole input must be consumed:
    trailing bytes are an error. A file saved without names gets keys "0", "1", ...
    """
    return _load(source)[0]


def storage_types(source: Source) -> dict[str, str]:
    """{name: MXNet storage type} of an ``nd.save`` list file ("default (dense)", "row_sparse"),
    e.g. to see how a real artifact stores its parameters (the first-run check, tests/aws)."""
    return _load(source)[1]


def _load(source: Source) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data, name = read_source(source, "MXNet params", MXNetFormatError)
    s = _Stream(data, name)
    header = s.unpack("Q", "header")
    if header != LIST_MAGIC:
        raise s.fail(f"wrong magic 0x{header:X} (expected 0x{LIST_MAGIC:X}, an NDArray list)", 0)
    s.unpack("Q", "reserved header word")
    count = s.unpack("Q", "array count")
    if count > len(data) // 24:
        raise s.fail(f"implausible array count {count}", s.pos - 8)
    arrays, stypes = [], []
    for i in range(count):
        # The storage type follows the array's uint32 magic; _read_array validates both.
        stypes.append(int.from_bytes(data[s.pos + 4:s.pos + 8], "little", signed=True))
        arrays.append(_read_array(s, i))
    at = s.pos
    n_names = s.unpack("Q", "name count")
    if n_names not in (0, count):
        raise s.fail(f"{n_names} names for {count} arrays", at)
    names = []
    for i in range(n_names):
        length = s.unpack("Q", f"length of name {i}")
        raw = s.take(length, f"name {i}")
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise s.fail(f"name {i} is not utf-8", s.pos - length) from e
    if s.pos != len(data):
        raise s.fail(f"{len(data) - s.pos} unexpected trailing bytes")
    if not names:
        names = [str(i) for i in range(count)]
    if len(set(names)) != len(names):
        raise MXNetFormatError(f"MXNet params {name}: duplicate array names {names}.")
    return (dict(zip(names, arrays, strict=True)),
            {n: _STORAGE.get(t, str(t)) for n, t in zip(names, stypes, strict=True)})


def save_params(
    arrays: Mapping[str, np.ndarray], *, np_shape: bool = False, row_sparse: Collection[str] = ()
) -> bytes:
    """Serialise {name: array} like ``mx.nd.save`` (cpu(0) context, V2 magic).

    ``np_shape=True`` writes the V3 magic that MXNet uses under numpy shape semantics (it then
    allows 0-d arrays). Arrays are written in C order with their own dtype; those named in
    ``row_sparse`` as MXNet's ``tostype("row_sparse")`` does (rows that are all zero not stored).
    """
    parts = [struct.pack("<QQQ", LIST_MAGIC, 0, len(arrays))]
    magic = NDARRAY_V3_MAGIC if np_shape else NDARRAY_V2_MAGIC
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise MXNetFormatError(f"Array names must be strings, got {key!r}.")
        arr = np.asarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        flag = _FLAGS.get(np.dtype(dtype).newbyteorder("<") if dtype.itemsize > 1 else dtype)
        if flag is None:
            raise MXNetFormatError(f"Array '{key}' has dtype {arr.dtype}, which MXNet cannot store.")
        if arr.ndim == 0 and not np_shape:
            raise MXNetFormatError(f"Array '{key}' is 0-dimensional: MXNet needs np_shape=True for that.")
        data = np.ascontiguousarray(arr, dtype=_DTYPES[flag])
        if key in row_sparse:
            if arr.ndim == 0:
                raise MXNetFormatError(f"Array '{key}' is 0-dimensional: it has no rows to store sparsely.")
            kept = np.flatnonzero(data.reshape(len(data), -1).any(axis=1))
            stored = (kept.size, *arr.shape[1:])
            parts.append(struct.pack(f"<Iii{arr.ndim}q", magic, 1, arr.ndim, *stored))
            parts.append(struct.pack(f"<i{arr.ndim}q", arr.ndim, *arr.shape))
            parts.append(struct.pack("<iiiii1q", *_CPU, flag, _FLAGS[np.dtype("<i8")], 1, kept.size))
            parts.append(data[kept].tobytes() + kept.astype("<i8").tobytes())
            continue
        parts.append(struct.pack(f"<Iii{arr.ndim}q", magic, 0, arr.ndim, *arr.shape))
        parts.append(struct.pack("<iii", *_CPU, flag))
        parts.append(data.tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for key in arrays:
        raw = key.encode("utf-8")
        parts.append(struct.pack("<Q", len(raw)) + raw)
    return b"".join(parts)
