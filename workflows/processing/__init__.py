"""The pipeline's processing step: raw interactions (+ optional user/item tables) -> FM training data.

Runs in the SageMaker Processing prebuilt scikit-learn container (numpy, scipy, pandas; pyarrow
when present) and locally, unchanged. It imports nothing else than those packages, the standard
library and the parts of this repository it ships with (:func:`code_files`: this package,
``recpipe/config.py`` and ``recpipe/formats/recordio.py`` with the modules it imports and their
package files), staged as a tree under ``code/processing/`` and run as
``python3 <code>/workflows/processing/__main__.py``.

Modules, one job each: ``read`` (config, files, columns: read and validate), ``prepare`` (id maps,
de-duplication, filters), ``split`` (holdout, seen items), ``features`` (side features, column
layout), ``context`` (sequence context, volume budget), ``negatives`` (sampling, rounds),
``write`` (recordio part files, meta files), ``shards`` (per-shard files for the workers),
``manifest``; ``step`` chains them.

Which image: the step needs Python >= 3.10 and pandas >= 2.0 (``format="ISO8601"``), i.e. the
scikit-learn framework image ``1.4-2`` or later.

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
* Part files are ``<set>/part-00000.pbr``, ... each at most ``write.MAX_SHARD_BYTES`` (whole records);
  ``train/`` and ``full/`` hold at least 4 per FM instance (``resources.fm_instance_count``).
* Shards (``shards``): ``shards/serve.json`` and ``shards/eval.json`` list ranges of at most
  ``processing.users_per_shard`` users, each with the files its worker needs; evaluation scores a
  seeded sample of ``evaluation.sample_users`` users with a relevant held-out item.
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
  (``context.SequenceContext``): a training row is x_u + x_i + the user's recent interactions before
  it; ``meta/user_rows.npz`` holds each user's scoring row with the context at the end of all data
  (the serve model), ``meta/user_rows_train.npz`` at the end of the training part (the eval model);
  ``meta/item_rows.npz`` holds x_i. Without the context every training row is exactly x_u + x_i.
* Implicit mode writes ``processing.negative_rounds`` rounds: the positives again, each time with
  fresh negatives, one round in memory at a time. ``processing.negative_popularity`` of the
  negatives are drawn in proportion to the items' interaction counts in the set (still distinct and
  unseen).
* Volume: ``processing.max_nonzeros`` bounds the non-zeros of the ``full`` set (``context.fit_budget``:
  fewer rounds first, then a shorter context); ``manifest.volume`` records what was written.

Bad input ends the job with exit status 1 and a one-line reason on stderr and in the failure file.
Locations: CSV rows are named by line as a text editor counts them (the header is line 1, so the
first data row is line 2; records are assumed to span one line each); Parquet rows by 1-based data
row number. Any other failure exits with status 2 and a one-line "Internal error" reason.
"""

from __future__ import annotations

from pathlib import Path

# Importing this package stays cheap (no numpy): the definition and the CDK app read code_files().
CODE_DIR = "/opt/ml/processing/input/code"
ENTRYPOINT = ["python3", f"{CODE_DIR}/workflows/processing/__main__.py"]
_ROOT = Path(__file__).resolve().parents[2]
# The repository files the step imports, relative to the repository root (and to the code dir).
_SHIPPED = (
    "recpipe/__init__.py",
    "recpipe/config.py",
    "recpipe/formats/__init__.py",
    "recpipe/formats/_recordio_layout.py",
    "recpipe/formats/_source.py",
    "recpipe/formats/exceptions.py",
    "recpipe/formats/recordio.py",
    "recpipe/formats/recordio_read.py",
    "workflows/__init__.py",
)


def code_files() -> dict[str, Path]:
    """Path in the container's code directory -> source file in this repository: this package's
    modules and the library modules they import, as the same tree (no renamed copies)."""
    package = Path(__file__).resolve().parent
    names = [*_SHIPPED, *(p.relative_to(_ROOT).as_posix() for p in sorted(package.glob("*.py")))]
    return {name: _ROOT / name for name in names}
