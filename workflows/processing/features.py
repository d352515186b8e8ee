"""Side features: every selected column of the user/item tables as categorical one-hot values
(multi-valued cells split on ``data.multi_value_separator``, 1/c each), and the entity rows
x_u / x_i (one-hot id + side features) every training row is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from workflows.processing.exceptions import BadInputError, show
from workflows.processing.paths import Paths, log
from workflows.processing.read import (
    Source,
    columns_of,
    drop_trailing_blank,
    list_sources,
    read_frame,
    sha256,
)


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


def read_features(paths: Paths, conf: dict[str, Any], kind: str, ids: np.ndarray) -> Features:
    """kind = "user" or "item"; ``ids`` = index -> original id of the interactions."""
    directory = paths.data / f"{kind}s"
    sources = list_sources(directory, paths.data)
    spec = str(conf[f"data.{kind}_features"]).strip()
    id_col = str(conf[f"data.{kind}_column"])
    features = Features()
    if not sources:
        return features
    sep = str(conf["data.multi_value_separator"])
    frames: list[tuple[Source, pd.DataFrame, list[str]]] = []
    for src in sources:
        columns = columns_of(src)
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
        frame = drop_trailing_blank(read_frame(src, [id_col, *selected], as_text=True), src)
        text_ids = frame[id_col].astype(str).str.strip()
        empty = (text_ids == "").to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise BadInputError(src.rel, f"empty {kind} id", where=src.where(i), column=id_col)
        frame = frame.assign(**{id_col: text_ids})
        frame["__src"], frame["__row"] = len(frames), np.arange(len(frame))
        frames.append((src, frame, selected))
        features.inputs.append({"path": src.rel, "sha256": sha256(src.path), "rows": len(frame)})
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
            f"(the table has {show(frame0[id_col].iloc[0]) if len(frame0) else 'no rows'}, the "
            f"interactions have {show(ids[0])}, ...)", where=src0.where(0) if len(frame0) else src0.header,
            column=id_col)
    table["__entity"] = position
    table = table[table["__entity"] >= 0]
    # A repeated id: the last row wins (files in order, rows in order).
    table = table.drop_duplicates("__entity", keep="last")
    matched = len(table)
    log(f"{kind} table: {matched:,} of {len(ids):,} {kind}s have a row; feature columns: "
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


def entity_rows(n: int, id_offset: int, feats: Features, feat_offset: int, dim: int) -> sp.csr_matrix:
    rows = np.concatenate([np.arange(n, dtype=np.int64), feats.rows])
    cols = np.concatenate([id_offset + np.arange(n, dtype=np.int64), feat_offset + feats.cols])
    vals = np.concatenate([np.ones(n, dtype=np.float32), feats.vals])
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(n, dim), dtype=np.float32)
    matrix.sort_indices()
    return matrix


@dataclass(frozen=True)
class Columns:
    """The feature columns: users, items, user features, item features, then (with a sequence
    context) one context column per item; ``layout`` is the manifest's map of them."""

    dim: int
    user_feature_offset: int
    item_feature_offset: int
    context_offset: int | None
    layout: dict[str, Any]

    @classmethod
    def of(cls, n_users: int, n_items: int, user_feats: Features, item_feats: Features,
           context_items: int) -> Columns:
        user_offset = n_users + n_items
        item_offset = user_offset + user_feats.size
        dim = item_offset + item_feats.size
        layout: dict[str, Any] = {
            "users": [0, n_users], "items": [n_users, n_items],
            "user_features": {k: [user_offset + o, s] for k, (o, s) in user_feats.layout.items()},
            "item_features": {k: [item_offset + o, s] for k, (o, s) in item_feats.layout.items()},
        }
        context_offset = None
        if context_items:
            context_offset = dim
            layout["context"] = [context_offset, n_items]
            dim += n_items
        return cls(dim, user_offset, item_offset, context_offset, layout)
