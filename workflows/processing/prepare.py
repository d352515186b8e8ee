"""Id maps and filters: de-duplication (the latest of a (user, item) pair wins), the minimum-count
filters (a k-core), index maps (index i = the i-th smallest original id) and the (user, time, item)
order every later module relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from workflows.processing.exceptions import BadInputError
from workflows.processing.paths import log
from workflows.processing.read import Interactions
from workflows.processing.split import mark_holdout


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

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def _bits(value: int) -> int:
    return max(int(value), 0).bit_length()


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


def prepare(data: Interactions, conf: dict[str, Any]) -> Prepared:
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
        log(f"{duplicates:,} duplicate (user, item) rows dropped (the latest of each pair is kept)")
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
        log(f"{dropped:,} interactions dropped by the minimum-count filters")

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
    holdout = mark_holdout(users, n_users, float(conf["evaluation.holdout_fraction"]))
    return Prepared(user_ids, item_ids, users, items, ratings, holdout, duplicates, dropped)
