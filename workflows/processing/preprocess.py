"""The pipeline's processing step: raw interactions (+ optional user/item tables) -> FM training data.

Runs in the SageMaker Processing prebuilt scikit-learn container (numpy, scipy, pandas; pyarrow
when present) and locally, unchanged. It imports nothing else than those packages and the two
modules shipped beside it in the container's code directory (``recpipe_config.py`` =
``recpipe/config.py``, ``recpipe_recordio.py`` = ``recpipe/formats/recordio.py``; see
``workflows.processing.code_files``). For the same reason its one exception class lives here
rather than in an ``exceptions.py``: the code input holds exactly those three files.

Container contract (``OPT_ML`` = ``$RECPIPE_OPT_ML`` or ``/opt/ml``)::

    OPT_ML/processing/input/data/interactions/   *.csv, *.csv.gz, *.parquet (one or more files)
    OPT_ML/processing/input/data/users/          optional user table(s)
    OPT_ML/processing/input/data/items/          optional item table(s)
    OPT_ML/processing/input/config/config.json   resolved config, flat dotted keys (defaults if absent)
    OPT_ML/processing/output/                    manifest.json, train/, test/, full/, meta/
    OPT_ML/output/message                        one-line reason on bad input (also OPT_ML/output/failure)

File names starting with ``.`` or ``_`` (``_SUCCESS``, ``.keep``) are ignored; files are read in
sorted path order, which is the "file order" used when there is no timestamp.

Semantics (docs/CONTRACTS.md has the output layout):

* Ids may be integers or strings; index i of users/items = i-th smallest original id.
* Duplicate (user, item) pairs: the latest one is kept (by timestamp, then by file order) and the
  dropped ones are counted in ``counts.duplicates``.
* ``processing.min_user_interactions`` / ``min_item_interactions`` are applied repeatedly until
  both hold (a k-core), on the de-duplicated interactions.
* Holdout: per user the most recent ``ceil(f * n_u)`` interactions (``f`` =
  ``evaluation.holdout_fraction``; a 1e-9 slack keeps ``0.3 * 10`` from becoming 4), ordered by
  (timestamp, item index): of two interactions with the same timestamp the one with the larger item
  index counts as the more recent. Without a timestamp column the file order is the time order.
* Implicit mode: rows are the positive interactions (rating >= ``processing.positive_threshold``;
  every interaction when there is no rating column), label 1, plus ``negatives_per_positive``
  sampled negatives per positive, label 0. Interactions below the threshold are not rows but still
  count as seen, so they are never sampled as negatives. Negatives are drawn uniformly without
  replacement among the items the user has not interacted with: for ``train`` that means not in the
  user's *train* interactions (the holdout is never looked at), for ``test`` and ``full`` not in any
  of the user's interactions. A user with fewer unseen items than needed gets all of them.
  ``test`` holds the held-out positives and their negatives, labelled like ``train``; a train or
  test set without any positive is bad input (the test channel is wired whenever f > 0).
  Explicit mode: rows are all interactions, label = rating; no negatives.
* Shards are ``<set>/part-00000.pbr``, ... each at most MAX_SHARD_BYTES (whole records).
* Rows of every set are shuffled (seeded): SGD mini-batches must not be one user each.
  Everything random derives from ``processing.seed``: same input + config = same bytes.
* Side features: every selected column of a user/item table is categorical, numbers included: an
  age of 24 or a release year of 1995 is one one-hot value (no bucketing: bins would need
  domain-specific edges and a config key, and the FM can already afford one factor per value).
  Each cell is split on ``data.multi_value_separator``; a row with c values of one column gets
  1/c in each (the column's block sums to 1 like a single-valued one, so items with many genres do
  not outweigh the others). Empty cells give no feature. Value vocabularies only hold values of
  users/items present in the interactions, sorted (numerically when all values are numbers).
  Users/items absent from a table get no feature columns; a table none of whose ids matches the
  interactions is an error.
* Column layout: users, items, user feature columns, item feature columns, then (with
  ``processing.context_items`` > 0) a sequence-context block of one column per item
  (:class:`SequenceContext`): a training row is x_u + x_i + the user's recent interactions before
  it; ``meta/user_rows.npz`` holds each user's scoring row with the context at the end of all data
  (the serve model), ``meta/user_rows_train.npz`` at the end of the training part (the eval model);
  ``meta/item_rows.npz`` holds x_i. Without the context every training row is exactly x_u + x_i.
* Implicit mode writes ``processing.negative_rounds`` rounds: the positives again, each time with
  fresh negatives, one round in memory at a time. ``processing.negative_popularity`` of the
  negatives are drawn in proportion to the items' interaction counts in the set (still distinct and
  unseen).
* Volume: ``processing.max_nonzeros`` bounds the non-zeros of the ``full`` set (:func:`fit_budget`:
  fewer rounds first, then a shorter context); ``manifest.volume`` records what was written.

Bad input ends the job with exit status 1 and a one-line reason on stderr and in the failure file.
Locations: CSV rows are named by line as a text editor counts them (the header is line 1, so the
first data row is line 2; records are assumed to span one line each); Parquet rows by 1-based data
row number. Any other failure exits with status 2 and a one-line "Internal error" reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

try:
    from recpipe import config as cfg
    from recpipe.formats import recordio
except ImportError:  # inside the processing container: the modules shipped beside this script
    import recpipe_config as cfg  # type: ignore[no-redef]
    import recpipe_recordio as recordio  # type: ignore[no-redef]

OPT_ML_ENV = "RECPIPE_OPT_ML"
MANIFEST_SCHEMA_VERSION = 1
# A recordio shard never exceeds this many bytes.
MAX_SHARD_BYTES = 64 * 2**20
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Dense seen-item blocks used by negative sampling hold at most this many bytes.
_BLOCK_BYTES = 32 * 2**20
_HOLDOUT_SLACK = 1e-9
_MAX_REJECTION_ROUNDS = 32
_MAX_MESSAGE_BYTES = 1000  # DescribeProcessingJob shows the first 1 KB

_START = time.monotonic()


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


# ------------------------------------------------------------------------------------------------
# Paths and small helpers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    opt_ml: Path

    @property
    def data(self) -> Path:
        return self.opt_ml / "processing" / "input" / "data"

    @property
    def config(self) -> Path:
        return self.opt_ml / "processing" / "input" / "config" / "config.json"

    @property
    def output(self) -> Path:
        return self.opt_ml / "processing" / "output"

    @property
    def failure_files(self) -> tuple[Path, Path]:
        # Processing documents `message` (-> ExitMessage); training's `failure` is written too so
        # that either reader finds the reason.
        return self.opt_ml / "output" / "message", self.opt_ml / "output" / "failure"


def opt_ml_root() -> Path:
    return Path(os.environ.get(OPT_ML_ENV, "/opt/ml"))


def _log(message: str) -> None:
    print(f"[preprocess {time.monotonic() - _START:7.1f}s] {message}", flush=True)


def _show(value: Any, limit: int = 40) -> str:
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _bits(value: int) -> int:
    return max(int(value), 0).bit_length()


@dataclass(frozen=True)
class Source:
    """One input file: its path, the name used in messages (relative to the data dir), its kind."""

    path: Path
    rel: str
    kind: str  # "csv" | "parquet"

    def where(self, index: int) -> str:
        """Location of the 0-based data row ``index`` as a user counts it in the file."""
        return f"line {index + 2}" if self.kind == "csv" else f"row {index + 1}"

    @property
    def header(self) -> str:
        return "line 1 (header)" if self.kind == "csv" else "schema"


def _list_sources(directory: Path, data_root: Path) -> list[Source]:
    if not directory.is_dir():
        return []
    sources = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if any(part.startswith((".", "_")) for part in path.relative_to(directory).parts):
            continue
        rel = path.relative_to(data_root).as_posix()
        name = path.name.lower()
        if name.endswith(CSV_SUFFIXES):
            kind = "csv"
        elif name.endswith(PARQUET_SUFFIXES):
            kind = "parquet"
        else:
            raise BadInputError(
                rel, f"unsupported file format {_show(path.suffix or path.name)}; expected "
                f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
        sources.append(Source(path, rel, kind))
    return sources


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def _columns_of(src: Source) -> list[str]:
    """The column names of a file, without reading its rows."""
    try:
        if src.kind == "csv":
            if src.path.stat().st_size == 0:
                return []
            return [str(c) for c in pd.read_csv(src.path, nrows=0, encoding="utf-8-sig").columns]
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return [str(c) for c in pd.read_parquet(src.path).columns]
        return list(pq.ParquetFile(src.path).schema_arrow.names)
    except BadInputError:
        raise
    except Exception as exc:
        raise _unreadable(src, exc) from exc


def _unreadable(src: Source, exc: BaseException) -> BadInputError:
    if isinstance(exc, UnicodeDecodeError):
        return BadInputError(src.rel, f"not UTF-8 text (byte {exc.start} cannot be decoded)")
    if isinstance(exc, pd.errors.EmptyDataError):
        return BadInputError(src.rel, "the file is empty")
    if isinstance(exc, ImportError):
        return BadInputError(src.rel, f"cannot read {src.kind} files here: {exc}")
    text = " ".join(str(exc).split())
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if match:
        expected, line, saw = match.groups()
        return BadInputError(src.rel, f"expected {expected} fields (as in the header), found {saw}",
                             where=f"line {line}")
    return BadInputError(src.rel, f"cannot read the file as {src.kind.upper()}: {type(exc).__name__}: "
                                  f"{text[:300]}")


def _read_frame(src: Source, columns: Sequence[str], *, as_text: bool) -> pd.DataFrame:
    """Read ``columns`` of a file. CSV cells stay text where not numeric (no NaN guessing:
    an empty cell is ``""``), and blank lines are kept so that row i is line i + 2."""
    try:
        if src.kind == "csv":
            if src.path.stat().st_size == 0:
                return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
            # All columns are parsed (no usecols) so that a row with too many fields is an error
            # rather than silently cut short.
            # Chunks of a column may come out with different dtypes (ints, then strings): the
            # parsers below normalise them, so pandas' warning about it is noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                frame = pd.read_csv(
                    src.path, index_col=False, encoding="utf-8-sig", na_filter=False,
                    skip_blank_lines=False, dtype=str if as_text else None)
            return frame[list(columns)]
        frame = pd.read_parquet(src.path, columns=list(columns))
        if as_text:
            frame = frame.astype(object).where(frame.notna(), "").astype(str)
        return frame
    except Exception as exc:
        raise _unreadable(src, exc) from exc


def _drop_trailing_blank(frame: pd.DataFrame, src: Source) -> pd.DataFrame:
    """Blank lines at the end of a CSV are not rows (blank lines inside it are, and fail)."""
    if src.kind != "csv":
        return frame

    def blank(k: int) -> bool:  # a numeric cell is never blank
        return all(isinstance(v, str) and v == "" for v in frame.iloc[k].tolist())

    keep = len(frame)
    while keep > 0 and blank(keep - 1):
        keep -= 1
    return frame if keep == len(frame) else frame.iloc[:keep]


# ------------------------------------------------------------------------------------------------
# Column parsing with row-precise errors
# ------------------------------------------------------------------------------------------------


def _parse_ids(col: pd.Series, src: Source, name: str, what: str) -> np.ndarray:
    """int64 ids when the column is integral, else an object array of stripped strings."""
    dtype = col.dtype
    if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(dtype):
        values = col.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise BadInputError(src.rel, f"empty or NaN {what} id", where=src.where(i), column=name)
        if np.all(values == np.round(values)) and np.abs(values).max(initial=0) < 2**62:
            return values.astype(np.int64)
        return np.array([repr(v) for v in values.tolist()], dtype=object)
    text = col.astype(str).str.strip()
    # Parquet nulls and literal NaN spellings are as empty as an empty cell.
    bad = (text == "").to_numpy() | col.isna().to_numpy() | text.str.lower().isin(["nan", "null"]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(src.rel, f"empty or NaN {what} id (got {_show(col.iloc[i])})",
                            where=src.where(i), column=name)
    return text.to_numpy(dtype=object)


def _parse_ratings(col: pd.Series, src: Source, name: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(col.astype(str).str.strip(), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raw = col.iloc[i]
        if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
            reason = "empty rating; every row needs a numeric rating"
        else:
            reason = f"the rating must be a finite number, got {_show(raw)}"
        raise BadInputError(src.rel, reason, where=src.where(i), column=name)
    return values


@dataclass
class _Times:
    values: np.ndarray  # int64 or float64
    unit: str  # "number" (as written: epoch seconds or any monotone number) or "ns" (parsed dates)


def _parse_timestamps(col: pd.Series, src: Source, name: str) -> _Times:
    numeric: np.ndarray | None = None
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        numeric = col.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_datetime64_any_dtype(col.dtype):
        dates = col
    else:
        text = col.astype(str).str.strip()
        as_num = pd.to_numeric(text, errors="coerce")
        filled = np.flatnonzero((text != "").to_numpy())
        # The first non-empty cell decides whether the column holds numbers or dates.
        if filled.size == 0 or not math.isnan(float(as_num.iloc[int(filled[0])])):
            numeric = as_num.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    if numeric is not None:
        bad = ~np.isfinite(numeric)
        if bad.any():
            i = int(np.argmax(bad))
            raise BadInputError(src.rel, f"cannot parse the timestamp {_show(col.iloc[i])} (expected epoch "
                                "seconds or ISO 8601)", where=src.where(i), column=name)
        if pd.api.types.is_integer_dtype(col.dtype):
            return _Times(col.to_numpy(dtype=np.int64), "number")
        if np.all(numeric == np.round(numeric)) and np.abs(numeric).max(initial=0) < 2**62:
            return _Times(numeric.astype(np.int64), "number")
        return _Times(numeric, "number")
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(src.rel, f"cannot parse the timestamp {_show(col.iloc[i])} (expected epoch "
                            "seconds or ISO 8601)", where=src.where(i), column=name)
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert(None)
    return _Times(dates.to_numpy(dtype="datetime64[ns]").view(np.int64), "ns")


# ------------------------------------------------------------------------------------------------
# Reading the interactions
# ------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    src: Source
    rows: int
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    times: _Times | None


@dataclass
class Interactions:
    """All interaction rows in file order (before de-duplication)."""

    users: np.ndarray  # raw ids
    items: np.ndarray
    ratings: np.ndarray | None
    times: np.ndarray | None  # int64 or float64, comparable across files
    inputs: list[dict[str, Any]]


def _read_interactions(paths: Paths, conf: dict[str, Any]) -> Interactions:
    directory = paths.data / "interactions"
    sources = _list_sources(directory, paths.data)
    if not sources:
        raise BadInputError("interactions/", "no input files (expected one or more CSV or Parquet files)")
    ucol, icol = str(conf["data.user_column"]), str(conf["data.item_column"])
    rcol, tcol = str(conf["data.rating_column"]), str(conf["data.timestamp_column"])
    explicit = conf["processing.mode"] == "explicit"
    parts: list[_Part] = []
    headers: dict[str, list[str]] = {}
    for src in sources:
        columns = _columns_of(src)
        headers[src.rel] = columns
        if not columns and src.kind == "csv":
            _log(f"{src.rel}: empty file, skipped")
            continue
        for required, why in ((ucol, "data.user_column"), (icol, "data.item_column")) + (
                ((rcol, "data.rating_column; processing.mode is explicit"),) if explicit else ()):
            if required not in columns:
                raise BadInputError(src.rel, f"required column missing ({why}); the columns are "
                                    f"{', '.join(map(repr, columns)) or 'none'}",
                                    where=src.header, column=required)
        wanted = [ucol, icol] + [c for c in (rcol, tcol) if c in columns]
        frame = _drop_trailing_blank(_read_frame(src, wanted, as_text=False), src)
        part = _Part(
            src=src, rows=len(frame),
            users=_parse_ids(frame[ucol], src, ucol, "user"),
            items=_parse_ids(frame[icol], src, icol, "item"),
            ratings=_parse_ratings(frame[rcol], src, rcol) if rcol in columns else None,
            times=_parse_timestamps(frame[tcol], src, tcol) if tcol in columns else None)
        del frame
        parts.append(part)
        _log(f"read {src.rel}: {part.rows:,} rows")
    for optional in (rcol, tcol):
        having = [p.src.rel for p in parts if optional in headers[p.src.rel]]
        if having and len(having) != len(parts):
            missing = next(p.src for p in parts if optional not in headers[p.src.rel])
            raise BadInputError(missing.rel, f"column missing here but present in {having[0]}; all "
                                "interaction files must have the same optional columns",
                                where=missing.header, column=optional)
    total = sum(p.rows for p in parts)
    if total == 0:
        names = ", ".join(s.rel for s in sources[:3]) + (", ..." if len(sources) > 3 else "")
        raise BadInputError("interactions/", f"the input is empty: no data rows in {names}")

    def ids(arrays: list[np.ndarray]) -> np.ndarray:
        if len(arrays) == 1:
            return arrays[0]
        if all(a.dtype == np.int64 for a in arrays):
            return np.concatenate(arrays)
        return np.concatenate([a if a.dtype == object else a.astype(str).astype(object) for a in arrays])

    users = ids([p.users for p in parts])
    items = ids([p.items for p in parts])
    ratings = None if parts[0].ratings is None else np.concatenate([p.ratings for p in parts])  # type: ignore[misc]
    times: np.ndarray | None = None
    if parts[0].times is not None:
        chunks = [p.times for p in parts if p.times is not None]
        if all(t.unit == "number" for t in chunks):
            times = np.concatenate([t.values for t in chunks])
        else:  # dates somewhere: numbers are epoch seconds
            times = np.concatenate([
                t.values if t.unit == "ns" else np.round(t.values.astype(np.float64) * 1e9).astype(np.int64)
                for t in chunks])
    inputs = [{"path": p.src.rel, "sha256": _sha256(p.src.path), "rows": p.rows} for p in parts]
    return Interactions(users, items, ratings, times, inputs)


# ------------------------------------------------------------------------------------------------
# De-duplication, filtering, holdout
# ------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """De-duplicated, filtered interactions sorted by (user, time, item)."""

    user_ids: np.ndarray  # index -> original id
    item_ids: np.ndarray
    users: np.ndarray  # int64 indices
    items: np.ndarray
    ratings: np.ndarray | None
    holdout: np.ndarray  # bool per interaction
    duplicates: int
    dropped_by_filters: int


def _dense_rank(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks_sorted = np.concatenate([[0], np.cumsum(ordered[1:] != ordered[:-1])])
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = ranks_sorted
    return ranks


def _time_order(users: np.ndarray, items: np.ndarray, times: np.ndarray, n_users: int,
                n_items: int) -> np.ndarray:
    """Permutation sorting by (user, time, item); (user, item) pairs are unique here."""
    ub, ib = _bits(n_users - 1), _bits(n_items - 1)
    t: np.ndarray
    if times.dtype.kind in "iu":
        t = times - times.min()
        if ub + _bits(int(t.max(initial=0))) + ib > 64:
            t = _dense_rank(times)
    else:
        t = _dense_rank(times)
    tb = _bits(int(t.max(initial=0)))
    if ub + tb + ib <= 64:
        key = (users.astype(np.uint64) << np.uint64(tb + ib)) | (t.astype(np.uint64) << np.uint64(ib)) \
            | items.astype(np.uint64)
        return np.argsort(key)
    return np.lexsort((items, t, users))


def _prepare(data: Interactions, conf: dict[str, Any]) -> Prepared:
    n_rows = len(data.users)
    ucodes, user_uniques = pd.factorize(data.users, sort=True)
    icodes, item_uniques = pd.factorize(data.items, sort=True)
    users, items = ucodes.astype(np.int64), icodes.astype(np.int64)
    n_users, n_items = len(user_uniques), len(item_uniques)
    # Time stands in for file order when there is no timestamp column.
    times = data.times if data.times is not None else np.arange(n_rows, dtype=np.int64)

    # --- duplicates: keep the latest (time, then file order) ---------------------------------
    key = users * n_items + items
    ordered = np.sort(key)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    alive = np.ones(n_rows, dtype=bool)
    duplicates = 0
    if repeated.size:
        idx = np.flatnonzero(np.isin(key, np.unique(repeated)))
        order = np.lexsort((idx, times[idx], key[idx]))
        group = key[idx][order]
        is_last = np.concatenate([group[1:] != group[:-1], [True]])
        drop = idx[order][~is_last]
        alive[drop] = False
        duplicates = int(drop.size)
        _log(f"{duplicates:,} duplicate (user, item) rows dropped (the latest of each pair is kept)")
    del key, ordered

    # --- minimum counts, repeated until stable ------------------------------------------------
    min_u = int(conf["processing.min_user_interactions"])
    min_i = int(conf["processing.min_item_interactions"])
    before = int(alive.sum())
    if min_u > 1 or min_i > 1:
        while True:
            cu = np.bincount(users[alive], minlength=n_users)
            ci = np.bincount(items[alive], minlength=n_items)
            bad = alive & (((cu < min_u)[users]) | ((ci < min_i)[items]))
            if not bad.any():
                break
            alive &= ~bad
    dropped = before - int(alive.sum())
    if not alive.any():
        raise BadInputError("interactions/", f"no rows left after filtering: none of the {before:,} "
                            f"interactions passes processing.min_user_interactions={min_u} and "
                            f"processing.min_item_interactions={min_i}")
    if dropped:
        _log(f"{dropped:,} interactions dropped by the minimum-count filters")

    # --- re-index the survivors (order-preserving, so index order = sorted original ids) ------
    ratings = data.ratings
    user_ids, item_ids = user_uniques, item_uniques
    if not alive.all():
        rows = np.flatnonzero(alive)
        users, items, times = users[rows], items[rows], times[rows]
        ratings = ratings[rows] if ratings is not None else None
        keep_u = np.bincount(users, minlength=n_users) > 0
        keep_i = np.bincount(items, minlength=n_items) > 0
        users = (np.cumsum(keep_u) - 1)[users]
        items = (np.cumsum(keep_i) - 1)[items]
        user_ids, item_ids = user_uniques[keep_u], item_uniques[keep_i]
        n_users, n_items = len(user_ids), len(item_ids)

    # --- sort by (user, time, item) and mark the holdout --------------------------------------
    order = _time_order(users, items, times, n_users, n_items)
    users, items = users[order], items[order]
    ratings = ratings[order] if ratings is not None else None
    fraction = float(conf["evaluation.holdout_fraction"])
    counts = np.bincount(users, minlength=n_users)
    if fraction > 0:
        n_hold = np.ceil(fraction * counts - _HOLDOUT_SLACK).astype(np.int64)
        start = np.cumsum(counts) - counts
        position = np.arange(len(users)) - start[users]
        holdout = position >= (counts - n_hold)[users]
    else:
        holdout = np.zeros(len(users), dtype=bool)
    return Prepared(user_ids, item_ids, users, items, ratings, holdout, duplicates, dropped)


# ------------------------------------------------------------------------------------------------
# Side features
# ------------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Feature columns of one entity kind, with offsets relative to the start of their block."""

    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # entity index
    cols: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # column within block
    vals: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    layout: dict[str, list[int]] = field(default_factory=dict)  # name -> [relative offset, size]
    values: dict[str, list[str]] = field(default_factory=dict)
    size: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)


def _sorted_values(values: np.ndarray) -> list[str]:
    as_num = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    if not as_num.isna().any():
        order = np.lexsort((values.astype(str), as_num.to_numpy(dtype=np.float64)))
        return [str(v) for v in values[order]]
    return sorted(str(v) for v in values)


def _read_features(paths: Paths, conf: dict[str, Any], kind: str, ids: np.ndarray) -> Features:
    """kind = "user" or "item"; ``ids`` = index -> original id of the interactions."""
    directory = paths.data / f"{kind}s"
    sources = _list_sources(directory, paths.data)
    spec = str(conf[f"data.{kind}_features"]).strip()
    id_col = str(conf[f"data.{kind}_column"])
    features = Features()
    if not sources:
        return features
    sep = str(conf["data.multi_value_separator"])
    frames: list[tuple[Source, pd.DataFrame, list[str]]] = []
    for src in sources:
        columns = _columns_of(src)
        if not columns and src.kind == "csv":
            continue
        if id_col not in columns:
            raise BadInputError(src.rel, f"the {kind} table has no id column (data.{kind}_column); its "
                                f"columns are {', '.join(map(repr, columns)) or 'none'}",
                                where=src.header, column=id_col)
        if spec == "*":
            selected = [c for c in columns if c != id_col]
        elif spec == "":
            selected = []
        else:
            selected = [c.strip() for c in spec.split(",") if c.strip()]
            for name in selected:
                if name not in columns:
                    raise BadInputError(src.rel, f"column named in data.{kind}_features is missing; the "
                                        f"columns are {', '.join(map(repr, columns))}",
                                        where=src.header, column=name)
        frame = _drop_trailing_blank(_read_frame(src, [id_col, *selected], as_text=True), src)
        text_ids = frame[id_col].astype(str).str.strip()
        empty = (text_ids == "").to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise BadInputError(src.rel, f"empty {kind} id", where=src.where(i), column=id_col)
        frame = frame.assign(**{id_col: text_ids})
        frame["__src"], frame["__row"] = len(frames), np.arange(len(frame))
        frames.append((src, frame, selected))
        features.inputs.append({"path": src.rel, "sha256": _sha256(src.path), "rows": len(frame)})
    if not frames:
        return features
    selected_all = list(dict.fromkeys(c for _, _, sel in frames for c in sel))
    table = pd.concat([f for _, f, _ in frames], ignore_index=True).fillna("")

    # Match table ids to interaction ids: as integers when the interaction ids are integers.
    if ids.dtype.kind in "iu":
        as_num = pd.to_numeric(table[id_col], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(as_num) & (as_num == np.round(as_num))
        keys = np.where(ok, as_num, -1).astype(np.int64)
        position = pd.Index(ids).get_indexer(keys)
        position[~ok] = -1
    else:
        position = pd.Index(ids).get_indexer(table[id_col].to_numpy(dtype=object))
    if not (position >= 0).any():
        src0, frame0, _ = frames[0]
        raise BadInputError(
            src0.rel, f"none of the {len(table):,} {kind} ids matches a {kind} id of the interactions "
            f"(the table has {_show(frame0[id_col].iloc[0]) if len(frame0) else 'no rows'}, the "
            f"interactions have {_show(ids[0])}, ...)", where=src0.where(0) if len(frame0) else src0.header,
            column=id_col)
    table["__entity"] = position
    table = table[table["__entity"] >= 0]
    # A repeated id: the last row wins (files in order, rows in order).
    table = table.drop_duplicates("__entity", keep="last")
    matched = len(table)
    _log(f"{kind} table: {matched:,} of {len(ids):,} {kind}s have a row; feature columns: "
         f"{', '.join(selected_all) or 'none'}")

    entity = table["__entity"].to_numpy(dtype=np.int64)
    rows_parts, cols_parts, vals_parts = [], [], []
    offset = 0
    for name in selected_all:
        cells = table[name].astype(str).reset_index(drop=True)
        pieces = cells.str.split(sep, regex=False) if sep else cells.map(lambda v: [v])
        exploded = pieces.explode()
        values = exploded.astype(str).str.strip()
        pairs = pd.DataFrame({"row": exploded.index.to_numpy(dtype=np.int64), "value": values.to_numpy()})
        pairs = pairs[pairs["value"] != ""].drop_duplicates()
        if pairs.empty:
            features.layout[name], features.values[name] = [offset, 0], []
            continue
        vocab = _sorted_values(pairs["value"].unique())
        code = pd.Index(vocab).get_indexer(pd.Index(pairs["value"].to_numpy()))
        row = pairs["row"].to_numpy(dtype=np.int64)
        per_row = np.bincount(row, minlength=len(cells))
        rows_parts.append(entity[row])
        cols_parts.append(offset + code.astype(np.int64))
        vals_parts.append((1.0 / per_row[row]).astype(np.float32))
        features.layout[name], features.values[name] = [offset, len(vocab)], vocab
        offset += len(vocab)
    if rows_parts:
        features.rows = np.concatenate(rows_parts)
        features.cols = np.concatenate(cols_parts)
        features.vals = np.concatenate(vals_parts)
    features.size = offset
    return features


def _entity_rows(n: int, id_offset: int, feats: Features, feat_offset: int, dim: int) -> sp.csr_matrix:
    rows = np.concatenate([np.arange(n, dtype=np.int64), feats.rows])
    cols = np.concatenate([id_offset + np.arange(n, dtype=np.int64), feat_offset + feats.cols])
    vals = np.concatenate([np.ones(n, dtype=np.float32), feats.vals])
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n, dim), dtype=np.float32)
    matrix.sort_indices()
    return matrix


# ------------------------------------------------------------------------------------------------
# Negative sampling
# ------------------------------------------------------------------------------------------------


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy's hash-based unique is several times slower on int64 keys)."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def _seen_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    order = np.argsort(users, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
    idx_dtype = np.int32 if n_items < 2**31 and len(users) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), items[order].astype(idx_dtype), indptr.astype(idx_dtype)),
        shape=(n_users, n_items))
    matrix.sort_indices()
    return matrix


def sample_negatives(seen: sp.csr_matrix, wanted: np.ndarray, rng: np.random.Generator,
                     popularity_cdf: np.ndarray | None = None,
                     popularity_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per user u, ``min(wanted[u], unseen_u)`` distinct items outside row u of ``seen``, uniformly.

    Users are processed in blocks whose seen rows fit a dense byte matrix; most users are served by
    vectorised rejection sampling, users who need at least half of their unseen items (or are left
    after a few rounds) by an exact draw from their complement.
    """
    n_users, n_items = seen.shape
    out_users: list[np.ndarray] = []
    out_items: list[np.ndarray] = []
    block = max(1, _BLOCK_BYTES // max(n_items, 1))
    seen_count = np.diff(seen.indptr)
    need_all = np.minimum(np.asarray(wanted, dtype=np.int64), n_items - seen_count)
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        need = need_all[lo:hi].copy()
        if not need.any():
            continue
        sub = seen[lo:hi]
        mask = np.zeros((hi - lo, n_items), dtype=np.uint8)
        mask[np.repeat(np.arange(hi - lo), np.diff(sub.indptr)), sub.indices] = 1
        available = n_items - seen_count[lo:hi]
        exact = np.flatnonzero((need > 0) & (2 * need > available))
        pending = need.copy()
        pending[exact] = 0
        for _ in range(_MAX_REJECTION_ROUNDS):
            total = int(pending.sum())
            if total == 0:
                break
            r = np.repeat(np.arange(hi - lo), pending)
            c = rng.integers(0, n_items, size=total)
            if popularity_cdf is not None and popularity_share > 0:
                by_pop = np.flatnonzero(rng.random(total) < popularity_share)
                c[by_pop] = np.minimum(np.searchsorted(popularity_cdf, rng.random(len(by_pop)), side="right"),
                                       n_items - 1)
            fresh = mask[r, c] == 0
            keys = _sorted_unique(r[fresh] * n_items + c[fresh])
            r_ok, c_ok = keys // n_items, keys % n_items
            mask[r_ok, c_ok] = 2
            pending -= np.bincount(r_ok, minlength=hi - lo)
            out_users.append(lo + r_ok)
            out_items.append(c_ok)
        leftover = np.flatnonzero(pending > 0)
        for r0 in np.concatenate([exact, leftover]).tolist():
            count = int(need[r0] if pending[r0] == 0 else pending[r0])
            complement = np.flatnonzero(mask[r0] == 0)
            chosen = rng.choice(complement, size=count, replace=False)
            out_users.append(np.full(count, lo + r0, dtype=np.int64))
            out_items.append(chosen.astype(np.int64))
    if not out_users:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_users).astype(np.int64), np.concatenate(out_items).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceContext:
    """The recent-interactions block of a user's feature row (``processing.context_items``).

    ``items`` holds one set's interactions in (user, time, item) order, ``indptr`` each user's
    range in it. The context of position ``a`` (exclusive: what the user did *before* interaction
    ``a``) is the ``length`` interactions just before it, the j-th most recent (j = 0, 1, ...)
    weighted ``decay**j``, the row scaled by ``1 / sqrt(sum of its weights)``, in the columns
    ``offset + item``. Training rows take the context before their own interaction (a sequence
    model in FM form, as FPMC); a user's inference row takes the context at the end of the set
    (``anchor = indptr[u + 1]``), i.e. the most recent interactions.
    """

    items: np.ndarray
    indptr: np.ndarray
    length: int
    decay: float
    offset: int
    dim: int

    @classmethod
    def of(cls, users: np.ndarray, items: np.ndarray, n_users: int, *, length: int, decay: float,
           offset: int, dim: int) -> SequenceContext:
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))]).astype(np.int64)
        return cls(items.astype(np.int64), indptr, length, decay, offset, dim)

    def rows(self, users: np.ndarray, anchors: np.ndarray) -> sp.csr_matrix:
        """CSR ``(len(users), dim)``: the context of each (user, anchor position)."""
        users = np.asarray(users, dtype=np.int64)
        anchors = np.asarray(anchors, dtype=np.int64)
        count = np.minimum(anchors - self.indptr[users], self.length)
        indptr = np.concatenate([[0], np.cumsum(count)])
        # One (row, width) key block, key = item << bits | age, padded with the largest key: a
        # row-wise np.sort (SIMD) puts each row's entries in column order (ties, impossible for
        # distinct items, by age) and the padding last. 5-10x cheaper than csr sort_indices.
        width = max(self.length, 1)
        bits = max((width - 1).bit_length(), 1)
        small = len(self.items) == 0 or int(self.items.max()) < 1 << (31 - bits)
        key_type = np.int32 if small else np.int64
        ages = np.arange(width, dtype=np.int64)
        valid = ages < count[:, None]
        pos = anchors[:, None] - 1 - ages
        np.maximum(pos, 0, out=pos)
        source = self.items if len(self.items) else np.zeros(1, dtype=np.int64)  # no row then has a context
        keys = source.astype(key_type)[pos]
        del pos
        np.left_shift(keys, bits, out=keys)
        np.bitwise_or(keys, ages.astype(key_type), out=keys)
        keys[~valid] = np.iinfo(key_type).max
        keys.sort(axis=1)
        # Value of (count c, age j) = weights[j] / sqrt(norm[c]), as one table lookup (same floats).
        weights = self.decay ** np.arange(width, dtype=np.float64)
        norm = np.concatenate([[1.0], np.cumsum(weights)])  # norm[c] = sum of the first c weights
        table = np.zeros((width + 1, 1 << bits), dtype=np.float32)
        table[:, :width] = (weights[None, :] / np.sqrt(norm[:, None])).astype(np.float32)
        flat = keys[valid]
        del keys
        cols = self.offset + (flat >> bits)
        vals = table[np.repeat(count, count), flat & ((1 << bits) - 1)]
        dtype = np.int32 if self.dim < 2**31 else np.int64
        matrix = sp.csr_matrix((vals, cols.astype(dtype), indptr), shape=(len(users), self.dim))
        matrix.has_sorted_indices = True
        if self.decay == 0.0:
            matrix.eliminate_zeros()
        return matrix

    def user_rows(self, base: sp.csr_matrix) -> sp.csr_matrix:
        """Inference rows: ``base`` (id + side features) plus each user's most recent context."""
        n_users = base.shape[0]
        matrix = (base + self.rows(np.arange(n_users), self.indptr[1:])).tocsr().astype(np.float32)
        matrix.sort_indices()
        return matrix


def _training_rows(user_rows: sp.csr_matrix, item_rows: sp.csr_matrix, users: np.ndarray,
                   items: np.ndarray, context: SequenceContext | None = None,
                   anchors: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows x_u + x_i (+ the context before each anchor) for the given (user, item) pairs."""
    n_users, dim = user_rows.shape
    n = len(users)
    if context is None and user_rows.nnz == n_users and item_rows.nnz == item_rows.shape[0]:
        indices = np.empty(2 * n, dtype=np.int32 if dim < 2**31 else np.int64)  # ids only: 2 ones per row
        indices[0::2] = users
        indices[1::2] = n_users + items
        indptr = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
        return sp.csr_matrix((np.ones(2 * n, dtype=np.float32), indices, indptr), shape=(n, dim))
    matrix = user_rows[users] + item_rows[items]
    if context is not None:
        assert anchors is not None
        matrix = matrix + context.rows(users, anchors)
    matrix = matrix.tocsr()
    matrix.sort_indices()
    return matrix.astype(np.float32)


@dataclass
class Round:
    """One pass of training rows: (user, item, label) and, with a sequence context, each row's anchor."""

    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    anchors: np.ndarray | None = None


def _write_set(directory: Path, user_rows: sp.csr_matrix, item_rows: sp.csr_matrix,
               rounds: Iterable[Round], rng: np.random.Generator,
               context: SequenceContext | None = None) -> int:
    """Write the rounds one after the other, each shuffled, as recordio-protobuf shards
    ``part-00000.pbr``, ... of at most MAX_SHARD_BYTES each (whole records; chunks are encoded in
    memory, then appended or rotated). Only one round is in memory at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    shard, size, written = 0, 0, 0
    fh: Any = None
    chunk = 4096
    try:
        for batch in rounds:
            n = len(batch.users)
            perm = rng.permutation(n)
            users, items = batch.users[perm], batch.items[perm]
            labels = batch.labels[perm].astype(np.float32)
            anchors = batch.anchors[perm] if batch.anchors is not None else None
            del perm, batch
            start = 0
            while start < n:
                stop = min(start + chunk, n)
                buffer = io.BytesIO()
                rows = _training_rows(user_rows, item_rows, users[start:stop], items[start:stop], context,
                                      anchors[start:stop] if anchors is not None else None)
                recordio.write_sparse(buffer, rows, labels[start:stop])
                del rows
                encoded = buffer.getbuffer()
                if len(encoded) > MAX_SHARD_BYTES and stop - start > 1:  # too big for a shard: smaller chunk
                    chunk = max(1, (stop - start) // 4)
                    del encoded, buffer
                    continue
                if fh is not None and size + len(encoded) > MAX_SHARD_BYTES:
                    fh.close()
                    fh = None
                if fh is None:
                    fh = (directory / f"part-{shard:05d}.pbr").open("wb")
                    shard, size = shard + 1, 0
                fh.write(encoded)
                size += len(encoded)
                # Chunks of about 1/16 of a shard: shards end close to the bound, writes stay efficient.
                per_row = max(len(encoded) / (stop - start), 1.0)
                chunk = max(1, min(1_000_000, int(MAX_SHARD_BYTES / 16 / per_row)))
                del encoded, buffer
                start = stop
            written += n
    finally:
        if fh is not None:
            fh.close()
    return written


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        pd.DataFrame(columns).to_csv(path, index=False)
        return
    with path.open("wb") as fh:  # pyarrow would quote the header names
        fh.write((",".join(columns) + "\n").encode())
        pacsv.write_csv(pa.table(columns), fh, pacsv.WriteOptions(include_header=False))


def _write_ids(path: Path, ids: np.ndarray) -> None:
    text = [str(v) for v in ids.tolist()]
    bad = next((t for t in text if "\n" in t or "\r" in t), None)
    if bad is not None:
        raise BadInputError("interactions/", f"the id {_show(bad)} contains a line break")
    path.write_text("".join(t + "\n" for t in text), encoding="utf-8")


def _clear_output(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test", "full", "meta"):
        shutil.rmtree(output / name, ignore_errors=True)
    (output / "manifest.json").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------


def _load_config(paths: Paths) -> dict[str, Any]:
    rel = "config/config.json"
    if not paths.config.exists():
        _log(f"{rel} not found: using the defaults")
        return dict(cfg.resolve())
    try:
        raw = json.loads(paths.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(rel, f"not a readable JSON document: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadInputError(rel, f"expected a JSON object, got {type(raw).__name__}")
    try:
        return dict(cfg.resolve(raw))
    except cfg.ConfigError as exc:
        raise BadInputError(rel, str(exc)) from exc


@dataclass(frozen=True)
class Volume:
    """What the step writes under ``processing.max_nonzeros``: rounds, context length and the
    estimated non-zeros of the largest set (``full``) with them."""

    negative_rounds: int
    context_items: int
    nonzeros: int


def fit_budget(users: np.ndarray, items: np.ndarray, rows: np.ndarray, n_users: int, user_nnz: np.ndarray,
               item_nnz: np.ndarray, per_positive: int, rounds: int, context_items: int,
               max_nonzeros: int) -> Volume:
    """Largest (rounds, context length) whose ``full`` set stays within ``max_nonzeros`` non-zeros
    (0 = no bound): rounds go down first (to 1), then the context length (to 0).

    ``users``/``items`` are all interactions in (user, time, item) order, ``rows`` the indices (or
    mask) of those that become training rows (the positives in implicit mode),
    ``user_nnz``/``item_nnz`` the non-zeros of each user's and item's id + side-feature
    part. The estimate counts ``per_positive`` negatives per
    row (fewer when a user runs out of unseen items) and each negative with its positive's context
    length; it is exact for the positives."""
    u, i = users[rows], items[rows]
    n_neg = per_positive * len(u)
    base = float(user_nnz[u].sum()) * (1 + per_positive) + float(item_nnz[i].sum()) \
        + n_neg * float(item_nnz.mean())
    counts = np.bincount(users, minlength=n_users)
    start = np.cumsum(counts) - counts
    before = (np.arange(len(users)) - start[users])[rows]  # interactions before each row
    # context[L] = sum over rows of min(before, L), for L = 0 .. context_items
    hist = np.bincount(np.minimum(before, context_items), minlength=context_items + 1)
    at_least = len(before) - np.concatenate([[0], np.cumsum(hist)[:-1]])  # rows with before >= L
    context = np.concatenate([[0], np.cumsum(at_least[1:])]).astype(np.float64) * (1 + per_positive)

    def total(r: int, length: int) -> int:
        return int(r * (base + context[length]))

    if max_nonzeros <= 0:
        return Volume(rounds, context_items, total(rounds, context_items))
    while rounds > 1 and total(rounds, context_items) > max_nonzeros:
        rounds -= 1
    fits = np.flatnonzero(base + context <= max_nonzeros)
    length = int(fits[-1]) if fits.size else 0
    return Volume(rounds, min(length, context_items), total(rounds, min(length, context_items)))


def _negative_anchors(pos_users: np.ndarray, pos_anchors: np.ndarray, neg_users: np.ndarray,
                      n_users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spread each user's negatives over that user's positives at random, evenly: ``(order,
    anchors)`` where ``order`` groups the negatives by user and ``anchors[k]`` is the anchor of
    negative ``order[k]`` (the position of the positive whose context it shares). The negatives
    come out of the sampler sorted by item: without the shuffle, early positives would always get
    low item indices, a pattern the model would learn."""
    shuffled = rng.permutation(len(neg_users))
    order = shuffled[np.argsort(neg_users[shuffled], kind="stable")]
    by_user = neg_users[order]
    n_pos = np.bincount(pos_users, minlength=n_users)
    n_neg = np.bincount(by_user, minlength=n_users)
    pos_start = np.cumsum(n_pos) - n_pos
    k = np.arange(len(by_user)) - (np.cumsum(n_neg) - n_neg)[by_user]
    return order, pos_anchors[pos_start[by_user] + k % n_pos[by_user]]


def _implicit_rounds(pos_users: np.ndarray, pos_items: np.ndarray, pos_anchors: np.ndarray | None,
                     exclude: sp.csr_matrix, per_positive: int, n_rounds: int, rng: np.random.Generator,
                     counts: dict[str, int], name: str, popularity_cdf: np.ndarray | None = None,
                     popularity_share: float = 0.0) -> Iterator[Round]:
    """``n_rounds`` times the positives, each time with freshly sampled negatives (the built-in FM
    cannot resample per epoch; several rounds in one file come close). Positives are ordered by
    user (the prepared order), which :func:`_negative_anchors` relies on."""
    n_users = exclude.shape[0]
    wanted = per_positive * np.bincount(pos_users, minlength=n_users)
    counts[f"{name}_positives"], counts[f"{name}_negatives"] = len(pos_users), 0
    for _ in range(n_rounds):
        neg_users, neg_items = sample_negatives(exclude, wanted, rng, popularity_cdf, popularity_share)
        anchors = None
        if pos_anchors is not None:
            order, neg_anchors = _negative_anchors(pos_users, pos_anchors, neg_users, n_users, rng)
            neg_users, neg_items = neg_users[order], neg_items[order]
            anchors = np.concatenate([pos_anchors, neg_anchors])
        counts[f"{name}_negatives"] += len(neg_users)
        labels = np.concatenate([np.ones(len(pos_users), np.float32), np.zeros(len(neg_users), np.float32)])
        yield Round(np.concatenate([pos_users, neg_users]), np.concatenate([pos_items, neg_items]), labels,
                    anchors)


def run(opt_ml: Path) -> dict[str, Any]:
    """The whole step; returns the manifest. Raises BadInputError on bad input."""
    paths = Paths(opt_ml)
    conf = _load_config(paths)
    implicit = conf["processing.mode"] == "implicit"
    threshold = float(conf["processing.positive_threshold"])
    per_positive = int(conf["processing.negatives_per_positive"])
    seeds = np.random.SeedSequence(int(conf["processing.seed"])).spawn(6)
    rng_neg = {"train": np.random.default_rng(seeds[0]), "test": np.random.default_rng(seeds[1]),
               "full": np.random.default_rng(seeds[2])}
    rng_shuffle = {"train": np.random.default_rng(seeds[3]), "test": np.random.default_rng(seeds[4]),
                   "full": np.random.default_rng(seeds[5])}

    data = _read_interactions(paths, conf)
    n_input = len(data.users)
    prep = _prepare(data, conf)
    inputs = data.inputs
    del data
    n_users, n_items = len(prep.user_ids), len(prep.item_ids)
    n_inter = len(prep.users)
    _log(f"{n_inter:,} interactions, {n_users:,} users, {n_items:,} items, "
         f"{int(prep.holdout.sum()):,} held out")

    user_feats = _read_features(paths, conf, "user", prep.user_ids)
    item_feats = _read_features(paths, conf, "item", prep.item_ids)
    user_feat_offset = n_users + n_items
    item_feat_offset = user_feat_offset + user_feats.size
    dim = item_feat_offset + item_feats.size
    ratings = prep.ratings
    positive = ratings >= threshold if ratings is not None else np.ones(n_inter, dtype=bool)
    budget = fit_budget(prep.users, prep.items,
                        np.flatnonzero(positive) if implicit else np.arange(n_inter),
                        n_users, 1 + np.bincount(user_feats.rows, minlength=n_users),
                        1 + np.bincount(item_feats.rows, minlength=n_items),
                        per_positive if implicit else 0,
                        int(conf["processing.negative_rounds"]) if implicit else 1,
                        int(conf["processing.context_items"]), int(conf["processing.max_nonzeros"]))
    context_items, n_rounds_train = budget.context_items, budget.negative_rounds
    if (context_items, n_rounds_train) != (int(conf["processing.context_items"]),
                                           int(conf["processing.negative_rounds"]) if implicit else 1):
        _log(f"processing.max_nonzeros={int(conf['processing.max_nonzeros']):,}: writing "
             f"{n_rounds_train} negative round(s) and a context of {context_items} items "
             f"(configured {conf['processing.negative_rounds']} and {conf['processing.context_items']})")
    context_offset = dim
    if context_items:
        dim += n_items
    user_rows = _entity_rows(n_users, 0, user_feats, user_feat_offset, dim)
    item_rows = _entity_rows(n_items, n_users, item_feats, item_feat_offset, dim)
    layout: dict[str, Any] = {
        "users": [0, n_users], "items": [n_users, n_items],
        "user_features": {k: [user_feat_offset + o, s] for k, (o, s) in user_feats.layout.items()},
        "item_features": {k: [item_feat_offset + o, s] for k, (o, s) in item_feats.layout.items()},
    }
    if context_items:
        layout["context"] = [context_offset, n_items]

    has_holdout = bool(prep.holdout.any())
    train_mask = ~prep.holdout
    if not train_mask.any():
        raise BadInputError("interactions/", "no training rows: evaluation.holdout_fraction="
                            f"{conf['evaluation.holdout_fraction']} holds out every interaction")
    seen_all = _seen_matrix(prep.users, prep.items, n_users, n_items)
    seen_train = _seen_matrix(prep.users[train_mask], prep.items[train_mask], n_users, n_items) \
        if has_holdout else seen_all

    sets = {"train": train_mask, "full": np.ones(n_inter, dtype=bool)}
    # Each model's user rows: with a sequence context they end with the user's most recent
    # interactions of the data that model learns from (train part or everything).
    contexts: dict[str, SequenceContext | None] = {"train": None, "test": None, "full": None}
    inference = {"train": user_rows, "full": user_rows}
    if context_items:
        for name in ("train", "full"):
            mask = sets[name]
            ctx = SequenceContext.of(prep.users[mask], prep.items[mask], n_users, length=context_items,
                                     decay=float(conf["processing.context_decay"]), offset=context_offset,
                                     dim=dim)
            contexts[name], inference[name] = ctx, ctx.user_rows(user_rows)
    if has_holdout:
        sets["test"] = prep.holdout

    output = paths.output
    _clear_output(output)
    counts: dict[str, int] = {}
    for name in ("train", "test", "full"):
        if name not in sets:
            continue
        mask = sets[name]
        context = contexts[name]
        # Test rows are scored as the eval model scores users: with their inference rows.
        base = inference["train"] if name == "test" else user_rows
        position = np.cumsum(mask) - 1  # index of each of the set's interactions in its sequence
        rounds: Iterable[Round]
        if implicit:
            rows_mask = mask & positive
            # An empty test set would leave the eval variant's test channel (set up by Prepare
            # whenever the holdout fraction is > 0) without files, and nothing to evaluate.
            if not rows_mask.any():
                raise BadInputError("interactions/", f"no positive interactions in the {name} set "
                                    f"(ratings >= processing.positive_threshold={threshold:g})"
                                    + ("; lower the threshold or set evaluation.holdout_fraction to 0"
                                       if name == "test" else ""))
            n_rounds = 1 if name == "test" else n_rounds_train
            picked = np.flatnonzero(rows_mask)
            share = float(conf["processing.negative_popularity"])
            cdf = None
            if share > 0:
                popularity = np.bincount(prep.items[mask], minlength=n_items).astype(np.float64)
                cdf = np.cumsum(popularity) / popularity.sum()
            rounds = _implicit_rounds(
                prep.users[picked], prep.items[picked], position[picked] if context else None,
                seen_train if name == "train" else seen_all, per_positive, n_rounds, rng_neg[name],
                counts, name, cdf, share)
        else:
            assert ratings is not None
            rounds = [Round(prep.users[mask], prep.items[mask], ratings[mask].astype(np.float32),
                            position[mask] if context else None)]
            counts[f"{name}_positives"], counts[f"{name}_negatives"] = int((mask & positive).sum()), 0
        counts[f"{name}_rows"] = _write_set(output / name, base, item_rows, rounds, rng_shuffle[name],
                                            context)
        _log(f"wrote {name}/: {counts[f'{name}_rows']:,} rows")
        del rounds

    meta = output / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    _write_ids(meta / "user_ids.txt", prep.user_ids)
    _write_ids(meta / "item_ids.txt", prep.item_ids)
    sp.save_npz(meta / "user_rows.npz", inference["full"])
    user_rows_train = "meta/user_rows.npz"
    if context_items and has_holdout:
        user_rows_train = "meta/user_rows_train.npz"
        sp.save_npz(meta / "user_rows_train.npz", inference["train"])
    sp.save_npz(meta / "item_rows.npz", item_rows)
    # Uncompressed: zlib would cost seconds per million interactions; load_npz reads both kinds.
    sp.save_npz(meta / "seen_train.npz", seen_train, compressed=False)
    sp.save_npz(meta / "seen_all.npz", seen_all, compressed=False)
    (meta / "features.json").write_text(json.dumps(
        {"user_features": user_feats.values, "item_features": item_feats.values}, indent=1), encoding="utf-8")
    if has_holdout:
        hold = prep.holdout
        _write_csv(meta / "holdout.csv", {
            "user_index": prep.users[hold], "item_index": prep.items[hold],
            "rating": ratings[hold] if ratings is not None else np.ones(int(hold.sum())),
            "relevant": positive[hold].astype(np.int8),
        })

    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "counts": {
            "users": n_users, "items": n_items, "interactions": n_inter,
            "positives": int(positive.sum()),
            "negatives": counts.get("full_negatives", 0),
            "duplicates": prep.duplicates,
            "holdout": int(prep.holdout.sum()),
            "train_rows": counts["train_rows"], "test_rows": counts.get("test_rows", 0),
            "full_rows": counts["full_rows"],
            "input_rows": n_input, "filtered": prep.dropped_by_filters,
            "train_positives": counts["train_positives"], "train_negatives": counts["train_negatives"],
            "test_positives": counts.get("test_positives", 0),
            "test_negatives": counts.get("test_negatives", 0),
        },
        "feature_dim": dim,
        "layout": layout,
        "volume": {"negative_rounds": n_rounds_train, "context_items": context_items,
                   "estimated_nonzeros": budget.nonzeros,
                   "max_nonzeros": int(conf["processing.max_nonzeros"])},
        "config": conf,
        "inputs": inputs + user_feats.inputs + item_feats.inputs,
        "files": {
            "train": "train/", "test": "test/" if has_holdout else None, "full": "full/",
            "user_ids": "meta/user_ids.txt", "item_ids": "meta/item_ids.txt",
            "user_rows": "meta/user_rows.npz", "user_rows_train": user_rows_train,
            "item_rows": "meta/item_rows.npz",
            "seen_train": "meta/seen_train.npz", "seen_all": "meta/seen_all.npz",
            "holdout": "meta/holdout.csv" if has_holdout else None,
            "feature_values": "meta/features.json",
        },
    }
    # Written last: its presence means the output is complete.
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n",
                                          encoding="utf-8")
    _log(f"done: feature_dim {dim:,}, train {counts['train_rows']:,} / test {counts.get('test_rows', 0):,} / "
         f"full {counts['full_rows']:,} rows")
    return manifest


def _write_failure(paths: Paths, message: str) -> None:
    line = " ".join(message.split())
    encoded = line.encode("utf-8")[:_MAX_MESSAGE_BYTES]
    line = encoded.decode("utf-8", errors="ignore")
    print(line, file=sys.stderr, flush=True)
    for target in paths.failure_files:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(line + "\n", encoding="utf-8")
        except OSError as exc:  # still exit non-zero with the reason on stderr
            print(f"(could not write {target}: {exc})", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 = done, 1 = bad input, 2 = internal error. Never raises."""
    del argv  # the container contract passes everything through files
    paths = Paths(opt_ml_root())
    try:
        run(paths.opt_ml)
    except BadInputError as exc:
        _write_failure(paths, str(exc))
        return 1
    except MemoryError:
        _write_failure(paths, "Internal error: out of memory; use a larger processing instance "
                       "(resources.processing_instance_type)")
        return 2
    except Exception as exc:
        traceback.print_exc()
        _write_failure(paths, f"Internal error in preprocess.py: {type(exc).__name__}: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
