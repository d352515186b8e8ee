"""What the formats' readers accept as a source, and reading it whole (shared by the recordio,
MXNet params and k-NN output readers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


def read_source(source: Source, what: str, error: type[Exception]) -> tuple[bytes, str]:
    """``(bytes, name for messages)``; ``error(...)`` naming ``what`` when it cannot be read."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes(), f"'{path}'"
        except OSError as e:
            raise error(f"Cannot read {what} '{path}': {e}") from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "input"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return source.read(), f"'{name}'" if isinstance(name, str) else "input"
    raise error(f"Expected a path, bytes or a binary file object, got {type(source).__name__}.")
