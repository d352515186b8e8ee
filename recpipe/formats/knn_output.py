"""k-NN batch transform output: ``application/jsonlines; verbose=true``.

One JSON object per input record, in input order::

    {"predicted_label": 42.0, "labels": [42.0, 7.0, ...], "distances": [0.1, 0.25, ...]}

``labels`` are the training labels of the neighbours (here: item indices, written as floats like
the service does) and ``distances`` are sorted from smallest to largest, as the service returns
them (:mod:`recpipe.topn` sorts by score itself and never relies on this order).

Both directions use ``orjson``, a maintained JSON library several times faster than ``json`` here;
the numbers go from its Python lists into numpy with one ``np.fromiter`` per block of lines.

Blank lines are skipped wherever they are: with ``SplitType=RecordIO``, ``MultiRecord`` and
``AssembleWith=Line`` the service appends a newline after each mini-batch response, which already
ends with one. Errors name the file and its 1-based physical line (blank lines counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import chain
from typing import IO, Any

import numpy as np
import orjson

from recpipe.formats._source import Source, read_source
from recpipe.formats.exceptions import KnnOutputError

__all__ = ["read_verbose_jsonlines", "write_verbose_jsonlines"]

_BLOCK_LINES = 4096  # lines per block: bounds the Python objects alive at once (~40 MB at k=220)
_KEYS = ("labels", "distances")


# --------------------------------------------------------------------------------------------------
# writer


def _record_lines(labels: np.ndarray, distances: np.ndarray, predicted: np.ndarray) -> bytes:
    """One block of rows as jsonlines. orjson writes float32 distances in their shortest exact
    spelling and float labels as ``123.0``; it writes NaN and infinities as ``null``, so rows holding
    any go through ``json.dumps``, which spells them as Python's json (and the service) reads them."""
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    finite = np.isfinite(distances).all(axis=1) & np.isfinite(labels).all(axis=1) & np.isfinite(predicted)
    out = []
    for i, pred in enumerate(predicted.tolist()):
        record = {"predicted_label": pred, "labels": labels[i], "distances": distances[i]}
        if finite[i]:
            out.append(orjson.dumps(record, option=option))
        else:
            record = {key: np.asarray(value, np.float64).tolist() for key, value in record.items()}
            out.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return b"".join(out)


def write_verbose_jsonlines(
    fileobj: IO[bytes],
    labels: np.ndarray,
    distances: np.ndarray,
    predicted_label: np.ndarray,
) -> None:
    """Write one verbose k-NN record per row: labels (n, k), distances (n, k), predicted (n,).

    Distances are written as given (sort them ascending first, as the service does); float32
    distances read back exactly. Labels are written as floats (``123.0``), as the service does.
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
    if distances.dtype != np.float32:  # float32 keeps its short spelling; others are written in full
        distances = distances.astype(np.float64)
    for start in range(0, labels.shape[0], _BLOCK_LINES):
        stop = start + _BLOCK_LINES
        fileobj.write(
            _record_lines(
                np.ascontiguousarray(labels[start:stop], np.float64),  # orjson needs C order
                np.ascontiguousarray(distances[start:stop]),
                predicted[start:stop].astype(np.float64),
            )
        )


# --------------------------------------------------------------------------------------------------
# reader


def _load(line: bytes, where: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:  # json also reads NaN and Infinity, as Python writers (and the service) spell them
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KnnOutputError(f"{where} is not valid JSON: {e}.") from e


def _check(record: Any, where: str) -> None:
    """Raise the error that says what is wrong with a record the fast path could not take."""
    if not isinstance(record, dict):
        raise KnnOutputError(f"{where} is not a JSON object.")
    missing = [key for key in _KEYS if key not in record]
    if missing:
        raise KnnOutputError(f"{where} has no {missing} (keys: {sorted(record)}).")
    labels, distances = record["labels"], record["distances"]
    for value in (labels, distances):
        if not isinstance(value, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
        ):
            raise KnnOutputError(f"{where}: 'labels' and 'distances' must be lists of numbers.")
    if len(labels) != len(distances):
        raise KnnOutputError(
            f"{where}: 'labels' ({len(labels)}) and 'distances' ({len(distances)}) must be lists of the "
            "same length."
        )


def _records(lines: list[bytes], first_line: int, name: str) -> Iterator[tuple[int, list[Any], list[Any]]]:
    """(line number, labels, distances) of the non-blank lines. An object with two quotes per key
    holds no string values, so ``np.fromiter`` will see numbers only (or fail on ``null`` and
    nesting); any other record is checked here, value by value."""
    for number, line in enumerate(lines, first_line):
        if not line or line.isspace():
            continue
        where = f"k-NN output {name} line {number}"
        record = _load(line, where)
        if type(record) is not dict or line.count(b'"') != 2 * len(record):
            _check(record, where)
        labels, distances = record.get("labels"), record.get("distances")
        if type(labels) is not list or type(distances) is not list:
            _check(record, where)
        yield number, labels, distances


def _read_block(lines: list[bytes], first_line: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(neighbours per record, labels int64, distances float32) of a block, records concatenated.

    ``np.fromiter`` reads ``null`` as NaN: the records holding a NaN (rare in real output) and every
    record of a block that does not read at all are checked one by one. (``true``/``false`` read as
    1/0, as numpy reads json.loads' lists; looking for them would cost more than the parse.)"""
    records = list(_records(lines, first_line, name))
    counts = np.fromiter((len(r[1]) for r in records), np.int64, len(records))
    ends = np.cumsum(counts)
    suspects: Any = range(len(records))
    try:
        labels = np.fromiter(chain.from_iterable(r[1] for r in records), np.float64, int(ends[-1:].sum()))
        distances = np.fromiter(chain.from_iterable(r[2] for r in records), np.float64, labels.size)
        if all(len(r[2]) == len(r[1]) for r in records):
            nan = np.flatnonzero(np.isnan(labels) | np.isnan(distances))
            suspects = np.unique(np.searchsorted(ends, nan, "right")).tolist()
    except (TypeError, ValueError):  # a nested list, a distance list of another length
        pass
    for i in suspects:
        number, label_list, distance_list = records[i]
        _check({"labels": label_list, "distances": distance_list}, f"k-NN output {name} line {number}")
    if isinstance(suspects, range) and suspects:
        raise KnnOutputError(
            f"k-NN output {name} lines {first_line}-{first_line + len(lines) - 1}: "
            "'labels' and 'distances' must be lists of numbers."
        )
    bad = np.flatnonzero((labels != np.round(labels)) | (np.abs(labels) >= 2.0**63))
    if bad.size:
        number = records[int(np.searchsorted(ends, bad[0], "right"))][0]
        raise KnnOutputError(f"k-NN output {name} line {number}: 'labels' must be integral (item indices).")
    return counts, labels.astype(np.int64), distances.astype(np.float32)


def read_verbose_jsonlines(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Read verbose k-NN output -> (labels int64 (n, k), distances float32 (n, k)).

    ``source``: path, bytes or binary file. Blank lines (anywhere) are skipped; rows shorter than
    the longest are padded with -1 / nan. Raises ``KnnOutputError`` naming the file and line.
    """
    data, name = read_source(source, "k-NN output", KnnOutputError)
    lines = data.split(b"\n")  # (a CR before the newline is JSON whitespace)
    parts = [
        _read_block(lines[start : start + _BLOCK_LINES], start + 1, name)
        for start in range(0, len(lines), _BLOCK_LINES)
    ]
    counts = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    distances = np.concatenate([p[2] for p in parts])
    n = counts.size
    k = int(counts.max()) if n else 0
    if np.all(counts == k):
        return labels.reshape(n, k), distances.reshape(n, k)
    out_labels = np.full((n, k), -1, dtype=np.int64)
    out_distances = np.full((n, k), np.nan, dtype=np.float32)
    rows = np.repeat(np.arange(n), counts)
    cols = np.arange(labels.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out_labels[rows, cols] = labels
    out_distances[rows, cols] = distances
    return out_labels, out_distances
