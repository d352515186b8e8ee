"""MXNet NDArray list files (``mx.nd.save`` / ``nd.load``), the ``params`` of built-in algorithms.

Layout (little-endian; MXNet ``src/ndarray/ndarray.cc``, ``NDArray::Save``/``Load``)::

    uint64 0x112 (kMXAPINDArrayListMagic) | uint64 reserved (0)
    uint64 count | count x NDArray
    uint64 count | count x (uint64 length | utf-8 name)     # names may be absent (count 0)

    NDArray (V2, magic 0xF993FAC9; V3 0xF993FACA is the same bytes under numpy shape semantics):
    uint32 magic | int32 storage type (0 = dense) | shape | int32 dev_type | int32 dev_id
    | int32 type flag | data (C order)
    shape: int32 ndim | ndim x int64

Only dense (default storage) arrays are supported; sparse storage types, legacy (pre-V2) arrays
and unknown type flags raise ``MXNetFormatError`` naming what was found and its byte offset.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from recpipe.formats._source import Source, read_source
from recpipe.formats.exceptions import MXNetFormatError

__all__ = ["LIST_MAGIC", "NDARRAY_V2_MAGIC", "NDARRAY_V3_MAGIC", "load_params", "save_params"]

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


def _read_array(s: _Stream, index: int) -> np.ndarray:
    at = s.pos
    magic = s.unpack("I", f"magic of array {index}")
    if magic not in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        legacy = magic == NDARRAY_V1_MAGIC or magic < 64
        kind = "legacy (pre-V2) NDArray magic" if legacy else "unknown NDArray magic"
        expected = f"0x{NDARRAY_V2_MAGIC:08X} or 0x{NDARRAY_V3_MAGIC:08X}"
        raise s.fail(f"array {index} has {kind} 0x{magic:08X} (expected {expected})", at)
    at = s.pos
    stype = s.unpack("i", f"storage type of array {index}")
    if stype != 0:
        label = _STORAGE.get(stype, "unknown")
        raise s.fail(f"array {index} has storage type {stype} ({label}); only dense arrays are supported", at)
    at = s.pos
    ndim = s.unpack("i", f"shape of array {index}")
    if ndim < 0 or (ndim == 0 and magic == NDARRAY_V2_MAGIC):
        raise s.fail(f"array {index} is an empty (none) NDArray with ndim {ndim}", at)
    if ndim > 32:
        raise s.fail(f"array {index} has an implausible ndim {ndim}", at)
    shape = s.unpack(f"{ndim}q", f"shape of array {index}") if ndim else ()
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(d < 0 for d in shape):
        raise s.fail(f"array {index} has unknown dimensions in shape {shape}", at)
    dev_type, dev_id = s.unpack("ii", f"context of array {index}")
    at = s.pos
    flag = s.unpack("i", f"type flag of array {index}")
    dtype = _DTYPES.get(flag)
    if dtype is None:
        raise s.fail(f"array {index} has unsupported type flag {flag}", at)
    count = int(np.prod(shape, dtype=np.int64))
    raw = s.take(count * dtype.itemsize, f"data of array {index} ({shape} {dtype})")
    del dev_type, dev_id  # where it lived (cpu/gpu) does not matter once loaded
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def load_params(source: Source) -> dict[str, np.ndarray]:
    """Read an ``nd.save`` list file into {name: array} in file order (names like ``arg:v``).

    ``source`` is a path, bytes or a binary file object. The whole input must be consumed:
    trailing bytes are an error. A file saved without names gets keys "0", "1", ...
    """
    data, name = read_source(source, "MXNet params", MXNetFormatError)
    s = _Stream(data, name)
    header = s.unpack("Q", "header")
    if header != LIST_MAGIC:
        raise s.fail(f"wrong magic 0x{header:X} (expected 0x{LIST_MAGIC:X}, an NDArray list)", 0)
    s.unpack("Q", "reserved header word")
    count = s.unpack("Q", "array count")
    if count > len(data) // 24:
        raise s.fail(f"implausible array count {count}", s.pos - 8)
    arrays = [_read_array(s, i) for i in range(count)]
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
    return dict(zip(names, arrays, strict=True))


def save_params(arrays: Mapping[str, np.ndarray], *, np_shape: bool = False) -> bytes:
    """Serialise {name: array} like ``mx.nd.save`` (dense, cpu(0) context, V2 magic).

    ``np_shape=True`` writes the V3 magic that MXNet uses under numpy shape semantics (it then
    allows 0-d arrays). Arrays are written in C order with their own dtype.
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
        parts.append(struct.pack(f"<Iii{arr.ndim}q", magic, 0, arr.ndim, *arr.shape))
        parts.append(struct.pack("<iii", *_CPU, flag))
        parts.append(np.ascontiguousarray(arr, dtype=_DTYPES[flag]).tobytes())
    parts.append(struct.pack("<Q", len(arrays)))
    for key in arrays:
        raw = key.encode("utf-8")
        parts.append(struct.pack("<Q", len(raw)) + raw)
    return b"".join(parts)
