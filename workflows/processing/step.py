"""The step: :func:`run` chains the modules (read, prepare, features, context, negatives, write,
manifest); :func:`main` is the container's entry point (exit status and failure file)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from workflows.processing.context import SequenceContext, Volume, fit_budget
from workflows.processing.exceptions import BadInputError
from workflows.processing.features import Columns, Features, entity_rows, read_features
from workflows.processing.manifest import MANIFEST_SCHEMA_VERSION, write_manifest
from workflows.processing.negatives import implicit_rounds, negatives_per_round
from workflows.processing.paths import Paths, log, opt_ml_root
from workflows.processing.prepare import Prepared, prepare
from workflows.processing.read import load_config, read_interactions
from workflows.processing.shards import write_shards
from workflows.processing.split import eval_sample, seen_matrix
from workflows.processing.write import Round, clear_output, write_meta, write_set

_MAX_MESSAGE_BYTES = 1000  # DescribeProcessingJob shows the first 1 KB
SETS = ("train", "test", "full")
# ShardedByS3Key hands each FM instance whole files: several per instance keep the split even.
MIN_PARTS_PER_INSTANCE = 4


@dataclass
class Rows:
    """Feature rows: x_u (id + side features), x_i, each set's sequence context (None without one)
    and each model's scoring rows (``train``: the eval model, context at the end of the training
    part; ``full``: the serve model, context at the end of all data)."""

    users: sp.csr_matrix
    items: sp.csr_matrix
    contexts: dict[str, SequenceContext | None]
    scoring: dict[str, sp.csr_matrix]


def run(opt_ml: Path) -> dict[str, Any]:
    """The whole step; returns the manifest. Raises BadInputError on bad input."""
    paths = Paths(opt_ml)
    conf = load_config(paths)
    data = read_interactions(paths, conf)
    n_input, inputs = len(data.users), data.inputs
    prep = prepare(data, conf)
    del data
    log(f"{len(prep.users):,} interactions, {prep.n_users:,} users, {prep.n_items:,} items, "
        f"{int(prep.holdout.sum()):,} held out")
    user_feats = read_features(paths, conf, "user", prep.user_ids)
    item_feats = read_features(paths, conf, "item", prep.item_ids)
    positive = (prep.ratings >= float(conf["processing.positive_threshold"]) if prep.ratings is not None
                else np.ones(len(prep.users), dtype=bool))
    budget = _fit_budget(prep, conf, positive, user_feats, item_feats)
    columns = Columns.of(prep.n_users, prep.n_items, user_feats, item_feats, budget.context_items)
    if prep.holdout.all():
        raise BadInputError("interactions/", "no training rows: evaluation.holdout_fraction="
                            f"{conf['evaluation.holdout_fraction']} holds out every interaction")
    has_holdout = bool(prep.holdout.any())
    seen_all = seen_matrix(prep.users, prep.items, prep.n_users, prep.n_items)
    seen_train = seen_matrix(prep.users[~prep.holdout], prep.items[~prep.holdout], prep.n_users,
                             prep.n_items) if has_holdout else seen_all
    rows = _feature_rows(prep, conf, columns, user_feats, item_feats, budget.context_items)

    clear_output(paths.output)
    counts, parts = _write_sets(paths.output, prep, conf, positive, rows,
                                {"train": seen_train, "full": seen_all}, budget.negative_rounds)
    files = write_meta(paths.output / "meta", prep, positive, rows.scoring, rows.items, seen_train, seen_all,
                       {"user_features": user_feats.values, "item_features": item_feats.values},
                       has_holdout=has_holdout, with_context=bool(budget.context_items))
    sample = eval_sample(prep.users, prep.holdout, positive, int(conf["evaluation.sample_users"]),
                         int(conf["processing.seed"])) if has_holdout else None
    shards = write_shards(paths.output, prep, positive, rows.scoring, seen_all, seen_train,
                          int(conf["processing.users_per_shard"]), sample)
    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "counts": {
            "users": prep.n_users, "items": prep.n_items, "interactions": len(prep.users),
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
            "eval_users": 0 if sample is None else len(sample),
        },
        "feature_dim": columns.dim,
        "layout": columns.layout,
        "volume": {"negative_rounds": budget.negative_rounds, "context_items": budget.context_items,
                   "estimated_nonzeros": budget.nonzeros,
                   "max_nonzeros": int(conf["processing.max_nonzeros"])},
        "config": conf,
        "inputs": inputs + user_feats.inputs + item_feats.inputs,
        "files": {"train": "train/", "test": "test/" if has_holdout else None, "full": "full/", **files},
        "parts": parts,
        "shards": shards,
    }
    write_manifest(paths.output, manifest)
    log(f"done: feature_dim {columns.dim:,}, train {counts['train_rows']:,} / test "
        f"{counts.get('test_rows', 0):,} / full {counts['full_rows']:,} rows")
    return manifest


def _fit_budget(prep: Prepared, conf: dict[str, Any], positive: np.ndarray, user_feats: Features,
                item_feats: Features) -> Volume:
    """Rounds and context length within ``processing.max_nonzeros`` (logged when cut)."""
    implicit = conf["processing.mode"] == "implicit"
    rounds = int(conf["processing.negative_rounds"]) if implicit else 1
    context_items = int(conf["processing.context_items"])
    budget = fit_budget(prep.users, prep.items,
                        np.flatnonzero(positive) if implicit else np.arange(len(prep.users)),
                        prep.n_users, 1 + np.bincount(user_feats.rows, minlength=prep.n_users),
                        1 + np.bincount(item_feats.rows, minlength=prep.n_items),
                        int(conf["processing.negatives_per_positive"]) if implicit else 0,
                        rounds, context_items, int(conf["processing.max_nonzeros"]))
    if (budget.context_items, budget.negative_rounds) != (context_items, rounds):
        log(f"processing.max_nonzeros={int(conf['processing.max_nonzeros']):,}: writing "
            f"{budget.negative_rounds} negative round(s) and a context of {budget.context_items} items "
            f"(configured {conf['processing.negative_rounds']} and {conf['processing.context_items']})")
    return budget


def _feature_rows(prep: Prepared, conf: dict[str, Any], columns: Columns, user_feats: Features,
                  item_feats: Features, context_items: int) -> Rows:
    user_rows = entity_rows(prep.n_users, 0, user_feats, columns.user_feature_offset, columns.dim)
    item_rows = entity_rows(prep.n_items, prep.n_users, item_feats, columns.item_feature_offset, columns.dim)
    rows = Rows(user_rows, item_rows, {"train": None, "full": None}, {"train": user_rows, "full": user_rows})
    if context_items:
        assert columns.context_offset is not None
        # Each model's user rows end with the user's most recent interactions of the data that model
        # learns from (train part or everything).
        for name, mask in (("train", ~prep.holdout), ("full", np.ones(len(prep.users), dtype=bool))):
            ctx = SequenceContext.of(prep.users[mask], prep.items[mask], prep.n_users, length=context_items,
                                     decay=float(conf["processing.context_decay"]),
                                     offset=columns.context_offset, dim=columns.dim)
            rows.contexts[name], rows.scoring[name] = ctx, ctx.user_rows(user_rows)
    return rows


def _write_sets(output: Path, prep: Prepared, conf: dict[str, Any], positive: np.ndarray, rows: Rows,
                seen: dict[str, sp.csr_matrix],
                n_rounds_train: int) -> tuple[dict[str, int], dict[str, list[str]]]:
    """train/, test/ (with a holdout) and full/; returns the row, positive and negative counts and
    each set's part files. The FM channels (train/, full/) get at least MIN_PARTS_PER_INSTANCE part
    files per FM instance, so that ShardedByS3Key gives every instance several."""
    min_parts = MIN_PARTS_PER_INSTANCE * int(conf["resources.fm_instance_count"])
    seeds = np.random.SeedSequence(int(conf["processing.seed"])).spawn(6)
    rng_neg = {name: np.random.default_rng(seeds[k]) for k, name in enumerate(SETS)}
    rng_shuffle = {name: np.random.default_rng(seeds[3 + k]) for k, name in enumerate(SETS)}
    masks = {"train": ~prep.holdout, "full": np.ones(len(prep.users), dtype=bool)}
    if prep.holdout.any():
        masks["test"] = prep.holdout
    counts: dict[str, int] = {}
    parts: dict[str, list[str]] = {}
    for name in SETS:
        if name not in masks:
            continue
        mask = masks[name]
        # Test rows are scored as the eval model scores users, with their scoring rows; the test set
        # has no context of its own.
        base = rows.scoring["train"] if name == "test" else rows.users
        context = rows.contexts.get(name)
        rounds, total = _set_rounds(name, mask, prep, conf, positive, context is not None,
                                    seen["train" if name == "train" else "full"],
                                    1 if name == "test" else n_rounds_train, rng_neg[name], counts)
        counts[f"{name}_rows"], names = write_set(
            output / name, base, rows.items, rounds, rng_shuffle[name], context,
            rows_per_part=0 if name == "test" else -(-total // min_parts))
        parts[name] = [f"{name}/{part}" for part in names]
        log(f"wrote {name}/: {counts[f'{name}_rows']:,} rows")
        del rounds
    return counts, parts


def _set_rounds(name: str, mask: np.ndarray, prep: Prepared, conf: dict[str, Any], positive: np.ndarray,
                with_context: bool, exclude: sp.csr_matrix, n_rounds: int, rng: np.random.Generator,
                counts: dict[str, int]) -> tuple[Iterable[Round], int]:
    """The rows of one set and their number: implicit mode, its positives with sampled negatives
    (``exclude`` = the seen items they are drawn outside of); explicit mode, every interaction
    labelled with its rating."""
    position = np.cumsum(mask) - 1  # index of each of the set's interactions in its sequence
    if conf["processing.mode"] == "explicit":
        assert prep.ratings is not None
        counts[f"{name}_positives"], counts[f"{name}_negatives"] = int((mask & positive).sum()), 0
        return [Round(prep.users[mask], prep.items[mask], prep.ratings[mask].astype(np.float32),
                      position[mask] if with_context else None)], int(mask.sum())
    picked = np.flatnonzero(mask & positive)
    # An empty test set would leave the eval variant's test channel (set up by Prepare whenever the
    # holdout fraction is > 0) without files, and nothing to evaluate.
    if not picked.size:
        threshold = float(conf["processing.positive_threshold"])
        raise BadInputError("interactions/", f"no positive interactions in the {name} set "
                            f"(ratings >= processing.positive_threshold={threshold:g})"
                            + ("; lower the threshold or set evaluation.holdout_fraction to 0"
                               if name == "test" else ""))
    share = float(conf["processing.negative_popularity"])
    cdf = None
    if share > 0:
        popularity = np.bincount(prep.items[mask], minlength=prep.n_items).astype(np.float64)
        cdf = np.cumsum(popularity) / popularity.sum()
    per_positive = int(conf["processing.negatives_per_positive"])
    wanted = per_positive * np.bincount(prep.users[picked], minlength=prep.n_users)
    total = n_rounds * (picked.size + negatives_per_round(exclude, wanted))
    return implicit_rounds(prep.users[picked], prep.items[picked], position[picked] if with_context else None,
                           exclude, per_positive, n_rounds, rng, counts, name, cdf, share), total


def write_failure(paths: Paths, message: str) -> None:
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
        write_failure(paths, str(exc))
        return 1
    except MemoryError:
        write_failure(paths, "Internal error: out of memory; use a larger processing instance "
                      "(resources.processing_instance_type)")
        return 2
    except Exception as exc:
        traceback.print_exc()
        write_failure(paths, f"Internal error in the processing step: {type(exc).__name__}: {exc}")
        return 2
    return 0
