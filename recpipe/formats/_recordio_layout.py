"""The recordio-protobuf layout both directions share: the frame magic word and the tensor types.

:mod:`recpipe.formats.recordio` writes it and :mod:`recpipe.formats.recordio_read` parses it; the
constants live here once so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DTYPE", "F4", "F8", "I4", "MAGIC", "TAG", "TYPE_OF_TAG", "VALUES_KEY", "WIDTH"]

MAGIC = 0xCED7230A

# Tensor types (the SDK's ``_resolve_type``): their field in ``Value`` (as the tag byte of a
# length-delimited field), the bytes of one packed value (Int32 values are varints) and dtype.
F4, F8, I4 = "Float32", "Float64", "Int32"
TAG = {F4: 0x12, F8: 0x1A, I4: 0x3A}
TYPE_OF_TAG = {tag: kind for kind, tag in TAG.items()}
WIDTH = {F4: 4, F8: 8}
DTYPE: dict[str, np.dtype[Any]] = {F4: np.dtype("<f4"), F8: np.dtype("<f8"), I4: np.dtype(np.int32)}
VALUES_KEY = b"\x0a\x06values\x12"  # map entry: key "values", then the Value field
