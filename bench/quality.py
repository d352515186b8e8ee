"""Recommendation quality on MovieLens-100k: recpipe's default pipeline against its baselines.

The evaluation protocol is the one of issue 6 and of the Evaluate state (``recpipe.metrics``):
per user, ratings ordered by (timestamp, item id), the most recent ``ceil(0.2 * n_u)`` held out; a
held-out item is relevant when rated >= 4; candidates are all items minus the user's training
items; P, R, NDCG, MAP, HR and catalogue coverage at 10 over the users with a relevant held-out item.

In one run, on the same split, it trains and scores:

- **most popular**: items ranked by their number of training interactions;
- **implicit ALS** (factors 128, regularization 10, alpha 1, 15 iterations) on ratings >= 4 binarised;
- **FM regressor**, the AWS blog's set-up: the FM stand-in (the built-in's minibatch Adam) trained on
  the ratings with one-hot user + item rows, items ranked by predicted rating;
- **recpipe**: the default configuration through the local engine (``recpipe.local``: processing,
  both model variants, k-NN, Evaluate, the gate); its figures are the eval variant's holdout
  metrics from ``runs/<run_id>/metrics.json``. The processing step's holdout is compared with the
  split computed here, pair by pair, so the rows really compare. ``--in-process`` runs the same
  steps without the engine (processing script, Plan, FM stand-in, exact inner-product top-k).

Training seconds: wall time of each model's fit (for recpipe, the eval variant's Train FM state;
the pipeline's total wall time is printed too). Benchmarks on the shared machine are noisy; the
ratio to ALS measured in the same run is the figure to compare.

    .venv/bin/python bench/quality.py [--in-process] [--set key=value ...] [--validation]

``--validation`` scores every model on a validation split made the same way inside the training
part (tuning happens there, never on the test holdout); it implies ``--in-process``.
``--validation-fraction 0.1`` makes a second validation-like split (the most recent 10 % of the
training part held out): a choice worth keeping should win on both, not peak on one.

Ends with ``RESULT ndcg_recpipe=<x> ndcg_als=<y> ratio=<x/y> coverage_recpipe=<c> coverage_als=<d>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice: its own threads, not BLAS's

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recpipe import config as cfg  # noqa: E402
from recpipe import datasets  # noqa: E402
from recpipe.metrics import RankingMetrics, ranking_metrics  # noqa: E402

K = 10
HOLDOUT_FRACTION = 0.2
RELEVANT_RATING = 4.0
ALS_PARAMS: dict[str, Any] = {"factors": 128, "regularization": 10.0, "alpha": 1.0, "iterations": 15}
BLOG_FM: dict[str, Any] = {
    "num_factors": 64,
    "epochs": 20,
    "mini_batch_size": 1000,
    "predictor_type": "regressor",
    "factors_lr": 0.001,
    "linear_lr": 0.001,
    "bias_lr": 0.1,
}


@dataclass(frozen=True)
class Split:
    """Index-coded interactions: the training part and the relevant held-out pairs."""

    n_users: int
    n_items: int
    train: pd.DataFrame  # columns u, i, rating, timestamp (time-ordered per user)
    holdout: pd.DataFrame
    seen: sp.csr_matrix  # (n_users, n_items), 1 = a training interaction (any rating)
    relevant: sp.csr_matrix  # (n_users, n_items), 1 = a relevant held-out item
    scope: pd.DataFrame  # what the pipeline is given (original ids): all data, or the training part


@dataclass
class Row:
    name: str
    metrics: RankingMetrics
    train_s: float


def holdout_mask(frame: pd.DataFrame, fraction: float) -> np.ndarray:
    """Per user, the most recent ceil(fraction * n_u) rows by (timestamp, item id); ``frame`` is
    sorted by (u, timestamp, i)."""
    n_u = frame.groupby("u")["i"].transform("size").to_numpy()
    from_end = frame.groupby("u").cumcount(ascending=False).to_numpy()
    return from_end < np.ceil(fraction * n_u - 1e-9)


def load_movielens(workdir: Path) -> tuple[Path, pd.DataFrame]:
    dest = datasets.movielens_100k(workdir / "datasets" / "ml-100k", workdir / "cache")
    frame = pd.read_csv(dest / "interactions" / "interactions.csv")
    return dest, frame


def make_split(frame: pd.DataFrame, *, validation: bool, inner_fraction: float = HOLDOUT_FRACTION) -> Split:
    uids, iids = np.sort(frame.user_id.unique()), np.sort(frame.item_id.unique())
    data = frame.assign(u=np.searchsorted(uids, frame.user_id), i=np.searchsorted(iids, frame.item_id))
    data = data.sort_values(["u", "timestamp", "i"]).reset_index(drop=True)
    held = holdout_mask(data, HOLDOUT_FRACTION)
    train, holdout = data[~held], data[held]
    scope = frame
    if validation:
        train = train.reset_index(drop=True)
        scope = train[["user_id", "item_id", "rating", "timestamp"]]
        held = holdout_mask(train, inner_fraction)
        train, holdout = train[~held], train[held]
    n_users, n_items = len(uids), len(iids)
    seen = sp.csr_matrix((np.ones(len(train), np.float32), (train.u, train.i)), shape=(n_users, n_items))
    rel = holdout[holdout.rating >= RELEVANT_RATING]
    relevant = sp.csr_matrix((np.ones(len(rel), np.float32), (rel.u, rel.i)), shape=(n_users, n_items))
    return Split(
        n_users, n_items, train.reset_index(drop=True), holdout.reset_index(drop=True), seen, relevant, scope
    )


def top_k(scores: np.ndarray, seen: sp.csr_matrix, k: int = K) -> np.ndarray:
    """Best k unseen items per row of a dense score matrix, best first."""
    scores = np.array(scores, dtype=np.float64)
    rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
    scores[rows, seen.indices] = -np.inf
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------


def most_popular(split: Split) -> Row:
    started = time.perf_counter()
    popularity = np.asarray(split.seen.sum(axis=0)).ravel()
    elapsed = time.perf_counter() - started
    scores = np.broadcast_to(popularity, (split.n_users, split.n_items))
    return Row(
        "most popular", ranking_metrics(top_k(scores, split.seen), split.relevant, split.n_items), elapsed
    )


def implicit_als(split: Split) -> Row:
    from implicit.cpu.als import AlternatingLeastSquares

    pos = split.train[split.train.rating >= RELEVANT_RATING]
    liked = sp.csr_matrix(
        (np.ones(len(pos), np.float32), (pos.u, pos.i)), shape=(split.n_users, split.n_items)
    )
    model = AlternatingLeastSquares(**ALS_PARAMS, random_state=0)
    started = time.perf_counter()
    model.fit(liked, show_progress=False)
    elapsed = time.perf_counter() - started
    ids, _ = model.recommend(np.arange(split.n_users), split.seen, N=K, filter_already_liked_items=True)
    return Row("implicit ALS", ranking_metrics(ids, split.relevant, split.n_items), elapsed)


def fm_regressor(split: Split) -> Row:
    """The blog's set-up: a rating regressor on one-hot (user, item) rows, items ranked by the
    predicted rating (user-only terms do not change one user's ranking)."""
    from recpipe.algorithms.fm import FactorizationMachines

    n_users, n_items = split.n_users, split.n_items
    tr = split.train
    n = len(tr)
    indices = np.empty(2 * n, np.int32)
    indices[0::2], indices[1::2] = tr.u.to_numpy(), n_users + tr.i.to_numpy()
    X = sp.csr_matrix(
        (np.ones(2 * n, np.float32), indices, np.arange(0, 2 * n + 1, 2)), shape=(n, n_users + n_items)
    )
    model = FactorizationMachines(**BLOG_FM, seed=0)
    started = time.perf_counter()
    model.fit(X, tr.rating.to_numpy(np.float32))
    elapsed = time.perf_counter() - started
    Vu, Vi = model.V_[:n_users], model.V_[n_users:]
    scores = Vu @ Vi.T + model.w_[n_users:][None, :]
    return Row(
        "FM regressor (blog)", ranking_metrics(top_k(scores, split.seen), split.relevant, n_items), elapsed
    )


# ------------------------------------------------------------------------------------------------
# recpipe
# ------------------------------------------------------------------------------------------------


def _stage_input(data_dir: Path, frame: pd.DataFrame, dest: Path) -> None:
    """The processing container's input: interactions (possibly a subset) plus the side tables."""
    (dest / "interactions").mkdir(parents=True)
    frame[["user_id", "item_id", "rating", "timestamp"]].to_csv(
        dest / "interactions" / "interactions.csv", index=False
    )
    for table in ("users", "items"):
        if (data_dir / table).is_dir():
            shutil.copytree(data_dir / table, dest / table)


def recpipe_in_process(
    data_dir: Path, frame: pd.DataFrame, overrides: Mapping[str, Any]
) -> tuple[Row, pd.DataFrame]:
    """Processing script, Plan, the FM stand-in, the repackaged vectors, exact top-k: the pipeline's
    steps without the engine. Returns the row and the processing step's holdout (original ids)."""
    from lambdas.plan.plan import plan
    from recpipe import vectors
    from recpipe.algorithms.fm import FactorizationMachines
    from recpipe.formats import read_sparse_files
    from workflows.processing import step

    config = cfg.resolve(overrides)
    with tempfile.TemporaryDirectory(prefix="recpipe-quality-") as tmp:
        opt_ml = Path(tmp)
        _stage_input(data_dir, frame, opt_ml / "processing" / "input" / "data")
        (opt_ml / "processing" / "input" / "config").mkdir(parents=True)
        (opt_ml / "processing" / "input" / "config" / "config.json").write_text(json.dumps(config))
        manifest = step.run(opt_ml)
        out = opt_ml / "processing" / "output"
        files = manifest["files"]
        hp = plan(config, manifest)["fm_hyperparameters"]
        X, y = read_sparse_files(sorted((out / files["train"]).glob("*.pbr")))
        assert y is not None
        started = time.perf_counter()
        fm = FactorizationMachines.from_hyperparameters(hp, seed=int(config["processing.seed"])).fit(X, y)
        elapsed = time.perf_counter() - started
        user_rows = sp.load_npz(out / files.get("user_rows_train", files["user_rows"]))
        item_rows = sp.load_npz(out / files["item_rows"])
        seen = sp.load_npz(out / files["seen_train"]).tocsr()
        holdout = pd.read_csv(out / files["holdout"])
        user_ids = np.loadtxt(out / files["user_ids"], dtype=np.int64)
        item_ids = np.loadtxt(out / files["item_ids"], dtype=np.int64)
    U = vectors.user_vectors(user_rows, fm.V_)
    items = vectors.item_vectors(item_rows, fm.V_, fm.w_)
    top = top_k(U @ items.T, seen)
    rel = holdout[holdout.relevant == 1]
    relevant = sp.csr_matrix(
        (np.ones(len(rel), np.float32), (rel.user_index, rel.item_index)), shape=seen.shape
    )
    holdout_ids = pd.DataFrame(
        {"user_id": user_ids[holdout.user_index], "item_id": item_ids[holdout.item_index]}
    )
    return Row(
        "recpipe (in-process)", ranking_metrics(top, relevant, item_rows.shape[0]), elapsed
    ), holdout_ids


def recpipe_engine(data_dir: Path, overrides: Mapping[str, Any]) -> tuple[Row, pd.DataFrame, float]:
    """The default pipeline through the local engine; the eval variant's metrics from metrics.json."""
    from recpipe.executions.history import run_id_of
    from recpipe.local.engine import EngineOptions, LocalEngine

    with tempfile.TemporaryDirectory(prefix="recpipe-quality-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        with LocalEngine(EngineOptions(workdir=workdir)) as engine:
            engine.put_data(
                str(cfg.resolve(overrides)["data.prefix"]),
                interactions=data_dir / "interactions",
                users=data_dir / "users",
                items=data_dir / "items",
            )
            _, outcome = engine.run(dict(overrides))
        wall = time.perf_counter() - started
        run_id = run_id_of(outcome)
        if outcome.status != "SUCCEEDED" or not run_id:
            raise SystemExit(f"the local run failed: {outcome.status} {outcome.error}: {outcome.cause}")
        found = sorted(workdir.glob(f"s3/*/runs/{run_id}/metrics.json"))
        if not found:
            raise SystemExit(f"no runs/{run_id}/metrics.json under {workdir / 's3'}")
        doc = json.loads(found[0].read_text())
        metrics = RankingMetrics(
            **{f: doc.get("metrics", doc)[f] for f in RankingMetrics.__dataclass_fields__}
        )
        processed = found[0].parent / "processed"
        holdout = pd.read_csv(processed / "meta" / "holdout.csv")
        user_ids = np.loadtxt(processed / "meta" / "user_ids.txt", dtype=np.int64)
        item_ids = np.loadtxt(processed / "meta" / "item_ids.txt", dtype=np.int64)
        train_s = _state_seconds(outcome, "Train FM", "eval")
    holdout_ids = pd.DataFrame(
        {"user_id": user_ids[holdout.user_index], "item_id": item_ids[holdout.item_index]}
    )
    return Row("recpipe (local engine)", metrics, train_s), holdout_ids, wall


def _state_seconds(outcome: Any, name: str, variant: str) -> float:
    """Duration of a state of one model variant (``StateRun.seconds``), NaN when absent."""
    for state in outcome.states:
        if state.name == name and state.variant == variant and state.seconds is not None:
            return float(state.seconds)
    return math.nan


def check_split(split: Split, frame: pd.DataFrame, processed_holdout: pd.DataFrame) -> str:
    uids, iids = np.sort(frame.user_id.unique()), np.sort(frame.item_id.unique())
    mine = set(zip(uids[split.holdout.u], iids[split.holdout.i], strict=True))
    theirs = set(zip(processed_holdout.user_id, processed_holdout.item_id, strict=True))
    same = mine == theirs
    return (
        f"split check: processing holdout {len(theirs):,} pairs, bench holdout {len(mine):,} pairs, "
        f"{'identical' if same else f'{len(mine ^ theirs):,} pairs differ'}"
    )


# ------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], als: Row) -> None:
    header = (
        f"{'model':<26}{'P@10':>8}{'R@10':>8}{'NDCG@10':>9}{'MAP@10':>8}{'HR@10':>8}{'cov@10':>8}"
        f"{'train s':>9}{'NDCG/ALS':>10}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        m = row.metrics
        print(
            f"{row.name:<26}{m.precision_at_10:>8.4f}{m.recall_at_10:>8.4f}{m.ndcg_at_10:>9.4f}"
            f"{m.map_at_10:>8.4f}{m.hit_rate_at_10:>8.4f}{m.coverage_at_10:>8.3f}{row.train_s:>9.1f}"
            f"{m.ndcg_at_10 / als.metrics.ndcg_at_10:>10.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", action="store_true", help="recpipe without the local engine")
    parser.add_argument("--validation", action="store_true", help="score on the validation split")
    parser.add_argument("--validation-fraction", type=float, default=HOLDOUT_FRACTION, metavar="F",
                        help="with --validation: hold out the most recent ceil(F * n_u) of the training "
                        "part (a second validation-like split, e.g. 0.1, to check a choice is robust)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".recpipe", help="data set cache")
    args = parser.parse_args(argv)
    overrides = dict(cfg.parse_assignment(a) for a in args.set)
    data_dir, frame = load_movielens(args.workdir)
    if args.validation:
        overrides.setdefault("evaluation.holdout_fraction", args.validation_fraction)
    split = make_split(frame, validation=args.validation, inner_fraction=args.validation_fraction)
    which = "validation" if args.validation else "test"
    print(
        f"MovieLens-100k: {split.n_users} users, {split.n_items} items, {len(split.train):,} training "
        f"interactions, {split.relevant.nnz:,} relevant held-out ({which})"
    )

    rows = [most_popular(split)]
    als = implicit_als(split)
    rows += [als, fm_regressor(split)]
    wall = math.nan
    if args.validation or args.in_process:
        # On the validation split the pipeline sees only the training part: its own holdout is then
        # the validation holdout.
        started = time.perf_counter()
        ours, processed_holdout = recpipe_in_process(data_dir, split.scope, overrides)
        wall = time.perf_counter() - started
    else:
        ours, processed_holdout, wall = recpipe_engine(data_dir, overrides)
    rows.append(ours)
    print(check_split(split, frame, processed_holdout))
    print()
    print_table(rows, als)
    print(f"\nrecpipe pipeline wall time {wall:.1f} s; config overrides: {json.dumps(overrides) or '{}'}")
    m, a = ours.metrics, als.metrics
    print(
        f"RESULT ndcg_recpipe={m.ndcg_at_10:.4f} ndcg_als={a.ndcg_at_10:.4f} "
        f"ratio={m.ndcg_at_10 / a.ndcg_at_10:.3f} coverage_recpipe={m.coverage_at_10:.4f} "
        f"coverage_als={a.coverage_at_10:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
