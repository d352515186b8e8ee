"""k-NN batch transform output: ``application/jsonlines; verbose=true``.

One JSON object per input record, in input order::

    {"predicted_label": 42.0, "labels": [42.0, 7.0, ...], "distances": [0.1, 0.25, ...]}

``labels`` are the training labels of the neighbours (here: item indices, written as floats like
the service does) and ``distances`` are sorted from smallest to largest, as the service returns
them (for ``INNER_PRODUCT`` the "distance" is the negated score).

``read_verbose_jsonlines`` returns dense ``(n, k)`` arrays; rows with fewer than ``k`` neighbours
(k = the longest row) are padded with label ``-1`` and distance ``nan``. It parses whole blocks of
lines with numpy's C text parser after stripping the JSON punctuation, and falls back to
``json.loads`` line by line for blocks that are not in the regular layout (which is also where
malformed lines are reported, with their 1-based line number).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import IO

import numpy as np

from recpipe.formats.exceptions import KnnOutputError

__all__ = ["read_verbose_jsonlines", "write_verbose_jsonlines"]

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

_BLOCK_LINES = 4096
_KEYS = (b'"predicted_label"', b'"labels"', b'"distances"')


def _format_floats(values: np.ndarray) -> list[str]:
    """Each row as "a, b, c" (Python float repr: round-trips exactly, and is JSON)."""
    return [", ".join(map(repr, row)) for row in values.astype(np.float64).tolist()]


def _format_ints(values: np.ndarray) -> list[str]:
    """Each row of integers as "1.0, 2.0" (the service writes labels as floats)."""
    if values.shape[1] == 0:
        return [""] * values.shape[0]
    return [".0, ".join(map(str, row)) + ".0" for row in values.tolist()]


def write_verbose_jsonlines(
    fileobj: IO[bytes],
    labels: np.ndarray,
    distances: np.ndarray,
    predicted_label: np.ndarray,
) -> None:
    """Write one verbose k-NN record per row: labels (n, k), distances (n, k), predicted (n,).

    Distances are written as given (sort them ascending first, as the service does).
    """
    labels = np.asarray(labels)
    distances = np.asarray(distances)
    predicted = np.asarray(predicted_label)
    if labels.ndim != 2 or distances.shape != labels.shape:
        raise KnnOutputError(
            f"labels and distances must both be (n, k), got {labels.shape} and {distances.shape}."
        )
    if predicted.shape != (labels.shape[0],):
        raise KnnOutputError(f"predicted_label must have shape ({labels.shape[0]},), got {predicted.shape}.")
    integral = labels.dtype.kind in "iub"
    for start in range(0, labels.shape[0], _BLOCK_LINES):
        stop = start + _BLOCK_LINES
        block = labels[start:stop]
        label_rows = _format_ints(block.astype(np.int64)) if integral else _format_floats(block)
        dist_rows = _format_floats(distances[start:stop])
        pred = list(map(repr, predicted[start:stop].astype(np.float64).tolist()))
        lines = [
            f'{{"predicted_label": {p}, "labels": [{lab}], "distances": [{dist}]}}\n'
            for p, lab, dist in zip(pred, label_rows, dist_rows, strict=True)
        ]
        text = "".join(lines).replace("nan", "NaN").replace("inf", "Infinity")  # json.dumps spelling
        fileobj.write(text.encode())


def _read_bytes(source: Source) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.read_bytes(), f"'{path}'"
        except OSError as e:
            raise KnnOutputError(f"Cannot read k-NN output '{path}': {e}") from e
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "input"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return source.read(), f"'{name}'" if isinstance(name, str) else "input"
    raise KnnOutputError(f"Expected a path, bytes or a binary file object, got {type(source).__name__}.")


def _block_fast(lines: list[bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """All lines in the regular layout with the same k -> (labels, distances), else None."""
    first = lines[0]
    order = [first.find(key) for key in _KEYS]
    if min(order) < 0 or not (order[0] < order[1] < order[2]):
        return None
    k = first.count(b",") // 2
    if b"[]" in first.replace(b" ", b""):
        k = 0
    for line in lines:
        if line.count(b",") != 2 * k or line.count(b"[") != 2 or line.count(b"]") != 2:
            return None
        p, lab, dist = (line.find(key) for key in _KEYS)
        if not (0 <= p < lab < dist):
            return None
        if line.find(b"[", lab) > dist or line.find(b"]", lab) > dist:
            return None  # labels must be closed before "distances" (equal lengths on both sides)
    if k == 0:
        return np.zeros((len(lines), 0), np.int64), np.zeros((len(lines), 0), np.float32)
    text = b"\n".join(lines)
    for key in _KEYS:
        text = text.replace(key, b"")
    text = text.translate(None, b'{}[]:"')
    try:
        numbers = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError:
        return None
    if numbers.shape != (len(lines), 1 + 2 * k):
        return None
    label_values = numbers[:, 1 : 1 + k]
    labels = label_values.astype(np.int64)
    if not np.array_equal(labels, label_values):
        return None  # non-integral labels: let the slow path say where
    return labels, numbers[:, 1 + k :].astype(np.float32)


def _block_slow(lines: list[bytes], first_line: int, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = []
    for i, line in enumerate(lines):
        where = f"k-NN output {name} line {first_line + i}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise KnnOutputError(f"{where} is not valid JSON: {e}.") from e
        if not isinstance(record, dict):
            raise KnnOutputError(f"{where} is not a JSON object.")
        missing = [key for key in ("labels", "distances") if key not in record]
        if missing:
            raise KnnOutputError(f"{where} has no {missing} (keys: {sorted(record)}).")
        try:
            labels = np.asarray(record["labels"], dtype=np.float64)
            distances = np.asarray(record["distances"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise KnnOutputError(f"{where}: 'labels' and 'distances' must be lists of numbers ({e}).") from e
        if labels.ndim != 1 or distances.shape != labels.shape:
            raise KnnOutputError(
                f"{where}: 'labels' ({labels.size}) and 'distances' ({distances.size}) must be lists "
                "of the same length."
            )
        if not np.array_equal(labels, np.round(labels)):
            raise KnnOutputError(f"{where}: 'labels' must be integral (item indices).")
        rows.append((labels.astype(np.int64), distances))
    return rows


def read_verbose_jsonlines(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Read verbose k-NN output -> (labels int64 (n, k), distances float32 (n, k)).

    ``source``: path, bytes or binary file. Blank lines at the end are ignored; rows shorter than
    the longest are padded with -1 / nan. Raises ``KnnOutputError`` naming the line number.
    """
    data, name = _read_bytes(source)
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    label_blocks: list[np.ndarray] = []
    dist_blocks: list[np.ndarray] = []
    ragged: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for start in range(0, len(lines), _BLOCK_LINES):
        block = [line.rstrip(b"\r") for line in lines[start : start + _BLOCK_LINES]]
        fast = _block_fast(block)
        if fast is not None:
            label_blocks.append(fast[0])
            dist_blocks.append(fast[1])
            ragged.append([])
            continue
        rows = _block_slow(block, start + 1, name)
        ragged.append(rows)
        label_blocks.append(np.zeros((0, 0), np.int64))
        dist_blocks.append(np.zeros((0, 0), np.float32))
    widths = [b.shape[1] for b, r in zip(label_blocks, ragged, strict=True) if not r]
    widths += [lab.size for rows in ragged for lab, _ in rows]
    k = max(widths, default=0)
    out_labels = np.full((len(lines), k), -1, dtype=np.int64)
    out_dist = np.full((len(lines), k), np.nan, dtype=np.float32)
    row = 0
    for labels, dists, rows in zip(label_blocks, dist_blocks, ragged, strict=True):
        if rows:
            for lab, dist in rows:
                out_labels[row, : lab.size] = lab
                out_dist[row, : dist.size] = dist
                row += 1
        else:
            out_labels[row : row + labels.shape[0], : labels.shape[1]] = labels
            out_dist[row : row + labels.shape[0], : labels.shape[1]] = dists
            row += labels.shape[0]
    return out_labels, out_dist
