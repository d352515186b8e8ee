"""The pipeline's configuration schema: one source of truth for every knob and its default.

Keys are dotted (``fm.num_factors``). An execution input may give them flat
(``{"fm.num_factors": 32}``) or nested (``{"fm": {"num_factors": 32}}``); both mean the same.
:func:`resolve` validates overrides (unknown keys, types, ranges, choices: every problem is
reported in one message) and merges them over the defaults.

This module is standard-library only: it ships in the processing step's code tree (which holds
only ``recpipe/config.py`` and ``recpipe/formats/`` of this package) and in the Lambdas, so
nothing here may import numpy, boto3 or the rest of ``recpipe``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

Scalar = int | float | str | bool


class ConfigError(ValueError):
    """An execution input or config file that does not fit the schema; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid pipeline configuration: " + "; ".join(problems))


@dataclass(frozen=True)
class Param:
    key: str
    type: type
    default: Scalar
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    # String values starting with one of these are refused, with ``refuse_reason`` as the why.
    refuse_prefixes: tuple[str, ...] = ()
    refuse_reason: str = ""

    def check(self, value: Any) -> tuple[Scalar | None, str | None]:
        """Return ``(coerced value, None)`` or ``(None, problem)``."""
        expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.type]
        # JSON has no int/float distinction worth enforcing for floats, but bools are not numbers.
        if self.type is bool:
            if not isinstance(value, bool):
                return None, f"'{self.key}' must be {expected}, got {value!r}"
            return value, None
        if self.type is int:
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            ):
                return None, f"'{self.key}' must be {expected}, got {value!r}"
            value = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                return None, f"'{self.key}' must be {expected}, got {value!r}"
            value = float(value)
        elif not isinstance(value, str):
            return None, f"'{self.key}' must be {expected}, got {value!r}"
        if isinstance(value, str) and self.refuse_prefixes and value.startswith(self.refuse_prefixes):
            return None, f"'{self.key}' must not be {value!r}: {self.refuse_reason}"
        if self.choices is not None and value not in self.choices:
            return None, f"'{self.key}' must be one of {', '.join(self.choices)}; got {value!r}"
        if self.min is not None and value < self.min:
            return None, f"'{self.key}' must be in [{self._range()}], got {value!r}"
        if self.max is not None and value > self.max:
            return None, f"'{self.key}' must be in [{self._range()}], got {value!r}"
        return value, None

    def _range(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"{lo}, {hi}"


_P = Param
PARAMS: tuple[Param, ...] = (
    # --- input data ---------------------------------------------------------------------------
    _P("data.prefix", str, "input",
       "Data prefix in the bucket (locally: a directory). It holds interactions/ and, optionally, "
       "users/ and items/ (CSV or Parquet files)."),
    _P("data.user_column", str, "user_id", "Column holding the user id (interactions and user table)."),
    _P("data.item_column", str, "item_id", "Column holding the item id (interactions and item table)."),
    _P("data.rating_column", str, "rating", "Rating column; absent from the data means implicit feedback."),
    _P("data.timestamp_column", str, "timestamp",
       "Timestamp column (epoch seconds or ISO 8601); absent means file order is time order."),
    _P("data.multi_value_separator", str, "|", "Separator inside multi-valued feature cells (e.g. genres)."),
    _P("data.user_features", str, "*",
       "Comma-separated user-table columns used as features; '*' = all, '' = none."),
    _P("data.item_features", str, "*",
       "Comma-separated item-table columns used as features; '*' = all, '' = none."),
    # --- processing ---------------------------------------------------------------------------
    _P("processing.mode", str, "implicit",
       "implicit: binary classifier on positives + sampled negatives; explicit: rating regressor.",
       choices=("implicit", "explicit")),
    _P("processing.positive_threshold", float, 4.0,
       "Implicit mode: ratings >= this are positives (all rows are positives without a rating column)."),
    _P("processing.negatives_per_positive", int, 4,
       "Implicit mode: negatives sampled per positive from items the user has not interacted with.",
       min=0, max=100),
    _P("processing.negative_rounds", int, 4,
       "Implicit mode: the positives are written this many times, each time with freshly sampled "
       "negatives (the built-in FM cannot resample per epoch); fm.epochs passes over all rounds.",
       min=1, max=100),
    _P("processing.context_items", int, 50,
       "Sequence context: every row's user part also holds the user's N interactions just before it "
       "(any rating; the j-th most recent weighted context_decay**j, the block scaled by 1/sqrt(sum "
       "of weights)); a user's scoring row holds the N most recent. 0 = user id and side features only.",
       min=0, max=1000),
    _P("processing.context_decay", float, 0.95, "Weight decay per step back in the sequence context.",
       min=0.0, max=1.0),
    _P("processing.negative_popularity", float, 0.25,
       "Implicit mode: share of negatives drawn in proportion to item popularity (interaction counts) "
       "instead of uniformly; 0 = uniform.", min=0.0, max=1.0),
    _P("processing.max_nonzeros", int, 500_000_000,
       "Bound on the non-zeros of the largest training set (full): when negative_rounds x rows x "
       "(id + side features + context) would exceed it, the step writes fewer rounds (down to 1), then "
       "a shorter context (down to 0); the manifest's volume says what was written. In "
       "recordio-protobuf a non-zero takes about 7 bytes (plus about 50 per row): 500 M is about 6 GB "
       "per set. 0 = no bound.", min=0),
    _P("processing.seed", int, 42, "Seed for negative sampling and training initialisation.", min=0),
    _P("processing.min_user_interactions", int, 1, "Drop users with fewer interactions.", min=1),
    _P("processing.min_item_interactions", int, 1, "Drop items with fewer interactions.", min=1),
    _P("processing.users_per_shard", int, 25_000,
       "Users per shard: the step splits the users into ceil(users / this) contiguous shards and "
       "writes per shard what one worker needs (ids, scoring rows, seen items); each shard is one "
       "Publish child and one batch-transform input file. Smaller shards = more, shorter workers.",
       min=1),
    # --- evaluation and the quality gate -----------------------------------------------------
    _P("evaluation.holdout_fraction", float, 0.2,
       "Per user, the most recent ceil(f * n_u) interactions are held out for evaluation; 0 disables "
       "evaluation and the gate.", min=0.0, max=0.9),
    _P("evaluation.min_ndcg_at_10", float, 0.0, "Quality gate: publish only when NDCG@10 >= this.",
       min=0.0, max=1.0),
    _P("evaluation.max_regression", float, 0.02,
       "Quality gate: refuse to publish when NDCG@10 is more than this below the active version's.",
       min=0.0, max=1.0),
    _P("evaluation.sample_users", int, 50_000,
       "Evaluation scores a seeded random sample (processing.seed) of this many users among those "
       "with a relevant held-out item (all of them when fewer), so its cost stays bounded.", min=1),
    # --- Factorization Machines (names as the built-in algorithm's hyperparameters) ----------
    _P("fm.num_factors", int, 64, "Latent dimension k.", min=1, max=1000),
    _P("fm.epochs", int, 8, "Training epochs (passes over all processing.negative_rounds).", min=1, max=1000),
    _P("fm.mini_batch_size", int, 1000, "Mini-batch size.", min=1, max=100000),
    _P("fm.bias_lr", float, 0.1, "Learning rate of the global bias.", min=0.0),
    _P("fm.linear_lr", float, 0.001, "Learning rate of the linear terms.", min=0.0),
    _P("fm.factors_lr", float, 0.001, "Learning rate of the factors.", min=0.0),
    _P("fm.bias_wd", float, 0.01, "Weight decay of the global bias.", min=0.0),
    _P("fm.linear_wd", float, 0.001, "Weight decay of the linear terms.", min=0.0),
    _P("fm.factors_wd", float, 0.00001, "Weight decay of the factors.", min=0.0),
    _P("fm.bias_init_sigma", float, 0.01, "Std. dev. of the bias initialisation.", min=0.0),
    _P("fm.linear_init_sigma", float, 0.01, "Std. dev. of the linear-term initialisation.", min=0.0),
    _P("fm.factors_init_sigma", float, 0.001, "Std. dev. of the factor initialisation.", min=0.0),
    # --- k-NN -----------------------------------------------------------------------------------
    _P("knn.k_margin", int, 200,
       "Neighbours fetched beyond publish.top_n so that seen items can be removed (k is capped at 1024).",
       min=0, max=1023),
    _P("knn.index_type", str, "faiss.Flat", "k-NN index type.", choices=("faiss.Flat", "faiss.IVFFlat")),
    # --- publishing ------------------------------------------------------------------------------
    _P("publish.top_n", int, 20, "Recommendations kept per user.", min=1, max=1000),
    _P("publish.max_concurrency", int, 8,
       "Publish shards written at the same time (the Distributed Map's MaxConcurrency); bounded in "
       "practice by the table's write capacity.", min=1, max=1000),
    _P("publish.similar_items", int, 20,
       "Similar items published per item (0 = none).", min=0, max=100),
    _P("publish.version_ttl_days", int, 60,
       "Published rows expire this many days after they were written (the active pointer never does).",
       min=1, max=3650),
    # --- resources (AWS only; the local engine ignores them) ------------------------------------
    _P("resources.processing_instance_type", str, "ml.m5.xlarge", "Processing job instance type."),
    _P("resources.fm_instance_type", str, "ml.m5.xlarge",
       "Factorization Machines training instance type (CPU).",
       refuse_prefixes=("ml.p", "ml.g"),
       refuse_reason="FM trains on GPU only for dense data; recpipe's FM data is sparse: use a CPU "
                     "type such as ml.m5.xlarge or ml.c5.2xlarge"),
    _P("resources.fm_instance_count", int, 1,
       "Factorization Machines training instances; with more than one, the train channel is "
       "ShardedByS3Key (each instance reads its own part files).", min=1, max=20),
    _P("resources.knn_instance_type", str, "ml.m5.xlarge",
       "k-NN training instance type; k-NN always trains on one instance (with several, each would "
       "index a sample of its own and items would go missing from the index)."),
    _P("resources.transform_instance_type", str, "ml.m5.xlarge", "Batch transform instance type."),
    _P("resources.transform_instance_count", int, 1, "Batch transform instance count.", min=1, max=20),
    _P("resources.volume_size_gb", int, 30, "EBS volume per job instance.", min=1, max=16384),
    _P("resources.max_runtime_seconds", int, 86400, "Stopping condition of every job.", min=60,
       max=432000),
)

SCHEMA: dict[str, Param] = {p.key: p for p in PARAMS}


def defaults() -> dict[str, Scalar]:
    """Every key with its default, flat and dotted."""
    return {p.key: p.default for p in PARAMS}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"fm": {"epochs": 3}, "publish.top_n": 5}`` -> ``{"fm.epochs": 3, "publish.top_n": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConfigError([f"keys must be strings, got {key!r}"])
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in SCHEMA:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"fm.epochs": 3}`` -> ``{"fm": {"epochs": 3}}`` (the shape Step Functions paths read)."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def validate(overrides: Mapping[str, Any]) -> dict[str, Scalar]:
    """Check overrides (flat or nested) against the schema; return them flat and coerced."""
    flat = flatten(overrides)
    problems: list[str] = []
    clean: dict[str, Scalar] = {}
    for key, value in flat.items():
        param = SCHEMA.get(key)
        if param is None:
            close = difflib.get_close_matches(key, SCHEMA, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{key}'{hint}")
            continue
        coerced, problem = param.check(value)
        if problem:
            problems.append(problem)
        else:
            assert coerced is not None
            clean[key] = coerced
    if problems:
        raise ConfigError(problems)
    return clean


def resolve(*layers: Mapping[str, Any]) -> dict[str, Scalar]:
    """Defaults, then each layer of overrides in order (deploy-time defaults, execution input)."""
    config = defaults()
    for layer in layers:
        config.update(validate(layer))
    return config


def parse_assignment(text: str) -> tuple[str, Scalar]:
    """``"fm.epochs=5"`` -> ``("fm.epochs", 5)``, typed by the schema (for ``--set`` on the CLI)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError([f"expected key=value, got {text!r}"])
    param = SCHEMA.get(key)
    if param is None:
        validate({key: raw})  # raises with the did-you-mean hint
        raise AssertionError("unreachable")
    value: Any = raw
    if param.type is not str:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError([f"'{key}' must be {param.type.__name__}, got {raw!r}"]) from None
    return key, validate({key: value})[key]


def describe() -> list[dict[str, Any]]:
    """The schema as plain data, for docs and the CLI."""
    return [
        {
            "key": p.key,
            "type": p.type.__name__,
            "default": p.default,
            "min": p.min,
            "max": p.max,
            "choices": list(p.choices) if p.choices else None,
            "help": p.help,
        }
        for p in PARAMS
    ]
