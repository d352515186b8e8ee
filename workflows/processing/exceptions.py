"""The processing step's one error: input it cannot process, with a one-line reason."""

from __future__ import annotations

from typing import Any


class BadInputError(Exception):
    """Input the job cannot process; ``str()`` is the one-line reason (file, row, column)."""

    def __init__(self, file: str, reason: str, *, where: str | None = None,
                 column: str | None = None) -> None:
        parts = [file]
        if where:
            parts.append(where)
        if column is not None:
            parts.append(f"column '{column}'")
        self.file, self.where, self.column, self.reason = file, where, column, reason
        super().__init__(f"Bad input: {', '.join(parts)}: {reason}")


def show(value: Any, limit: int = 40) -> str:
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)
