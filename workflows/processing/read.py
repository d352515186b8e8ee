"""Read and validate: the config, the input files and the interaction columns, with errors that
name the file, the line (CSV, as a text editor counts: the header is line 1) or the 1-based row
(Parquet), and the column."""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recpipe import config as cfg
from workflows.processing.exceptions import BadInputError, show
from workflows.processing.paths import Paths, log

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def load_config(paths: Paths) -> dict[str, Any]:
    rel = "config/config.json"
    if not paths.config.exists():
        log(f"{rel} not found: using the defaults")
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


def list_sources(directory: Path, data_root: Path) -> list[Source]:
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
                rel, f"unsupported file format {show(path.suffix or path.name)}; expected "
                f"{', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
        sources.append(Source(path, rel, kind))
    return sources


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def columns_of(src: Source) -> list[str]:
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


def read_frame(src: Source, columns: Sequence[str], *, as_text: bool) -> pd.DataFrame:
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


def drop_trailing_blank(frame: pd.DataFrame, src: Source) -> pd.DataFrame:
    """Blank lines at the end of a CSV are not rows (blank lines inside it are, and fail)."""
    if src.kind != "csv":
        return frame

    def blank(k: int) -> bool:  # a numeric cell is never blank
        return all(isinstance(v, str) and v == "" for v in frame.iloc[k].tolist())

    keep = len(frame)
    while keep > 0 and blank(keep - 1):
        keep -= 1
    return frame if keep == len(frame) else frame.iloc[:keep]


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
        raise BadInputError(src.rel, f"empty or NaN {what} id (got {show(col.iloc[i])})",
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
            reason = f"the rating must be a finite number, got {show(raw)}"
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
            raise BadInputError(src.rel, f"cannot parse the timestamp {show(col.iloc[i])} (expected epoch "
                                "seconds or ISO 8601)", where=src.where(i), column=name)
        if pd.api.types.is_integer_dtype(col.dtype):
            return _Times(col.to_numpy(dtype=np.int64), "number")
        if np.all(numeric == np.round(numeric)) and np.abs(numeric).max(initial=0) < 2**62:
            return _Times(numeric.astype(np.int64), "number")
        return _Times(numeric, "number")
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise BadInputError(src.rel, f"cannot parse the timestamp {show(col.iloc[i])} (expected epoch "
                            "seconds or ISO 8601)", where=src.where(i), column=name)
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert(None)
    return _Times(dates.to_numpy(dtype="datetime64[ns]").view(np.int64), "ns")


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


def read_interactions(paths: Paths, conf: dict[str, Any]) -> Interactions:
    directory = paths.data / "interactions"
    sources = list_sources(directory, paths.data)
    if not sources:
        raise BadInputError("interactions/", "no input files (expected one or more CSV or Parquet files)")
    ucol, icol = str(conf["data.user_column"]), str(conf["data.item_column"])
    rcol, tcol = str(conf["data.rating_column"]), str(conf["data.timestamp_column"])
    explicit = conf["processing.mode"] == "explicit"
    parts: list[_Part] = []
    headers: dict[str, list[str]] = {}
    for src in sources:
        columns = columns_of(src)
        headers[src.rel] = columns
        if not columns and src.kind == "csv":
            log(f"{src.rel}: empty file, skipped")
            continue
        for required, why in ((ucol, "data.user_column"), (icol, "data.item_column")) + (
                ((rcol, "data.rating_column; processing.mode is explicit"),) if explicit else ()):
            if required not in columns:
                raise BadInputError(src.rel, f"required column missing ({why}); the columns are "
                                    f"{', '.join(map(repr, columns)) or 'none'}",
                                    where=src.header, column=required)
        wanted = [ucol, icol] + [c for c in (rcol, tcol) if c in columns]
        frame = drop_trailing_blank(read_frame(src, wanted, as_text=False), src)
        part = _Part(
            src=src, rows=len(frame),
            users=_parse_ids(frame[ucol], src, ucol, "user"),
            items=_parse_ids(frame[icol], src, icol, "item"),
            ratings=_parse_ratings(frame[rcol], src, rcol) if rcol in columns else None,
            times=_parse_timestamps(frame[tcol], src, tcol) if tcol in columns else None)
        del frame
        parts.append(part)
        log(f"read {src.rel}: {part.rows:,} rows")
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
    inputs = [{"path": p.src.rel, "sha256": sha256(p.src.path), "rows": p.rows} for p in parts]
    return Interactions(users, items, ratings, times, inputs)
