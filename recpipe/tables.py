"""The results table's schema: one source of truth for CDK, the Lambdas, the CLI and the local engine.

One DynamoDB table (on-demand) with a string partition key ``pk`` and sort key ``sk``:

===================  ==================  ==============================================================
pk                   sk                  what
===================  ==================  ==============================================================
``user#<user_id>``   ``v#<run_id>``      a user's recommendations of one published version: ``user_id``,
                                         ``items`` (list of ``{item_id, score}``, best first), ``run_id``,
                                         ``generated_at``, ``expires_at`` (TTL)
``item#<item_id>``   ``v#<run_id>``      an item's most similar items of one version (inner product of the
                                         item vectors, itself excluded): ``item_id``, ``items`` (list of
                                         ``{item_id, score}``, best first), ``run_id``, ``generated_at``,
                                         ``expires_at``
``meta#popular``     ``v#<run_id>``      the version's most popular items (fallback for unknown users):
                                         ``items`` (``{item_id, score}``, score = users who interacted),
                                         ``similar_items`` (the M of the item rows), ``run_id``,
                                         ``generated_at``, ``expires_at``
``meta#version``     ``v#<run_id>``      one published version: state (``writing`` -> ``complete``),
                                         user count, metrics, times
``meta#active``      ``pointer``         the version readers serve: ``run_id``, ``ndcg_at_10``,
                                         ``activated_at``, ``previous_run_id``; never expires
``meta#lock``        ``lock``            the run lock: ``owner`` (run id), ``expires_at``
===================  ==================  ==============================================================

Readers get the pointer, then ``GetItem(pk=user#<id>, sk=v#<run_id>)`` (``recpipe.serving`` is
the reader the API and ``recpipe serve`` use): a version becomes visible
only when the pointer flips, after every one of its rows was written.

Standard-library only (packaged into the Lambdas).
"""

from __future__ import annotations

from decimal import Decimal

PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"

USER_PREFIX = "user#"
ITEM_PREFIX = "item#"
VERSION_PREFIX = "v#"

VERSION_PK = "meta#version"
ACTIVE_PK = "meta#active"
ACTIVE_SK = "pointer"
POPULAR_PK = "meta#popular"
LOCK_PK = "meta#lock"
LOCK_SK = "lock"

# Environment variable through which deployed Lambdas (and local handlers) learn the table name.
TABLE_ENV = "RECPIPE_TABLE"
BUCKET_ENV = "RECPIPE_BUCKET"


def user_key(user_id: str, run_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"{USER_PREFIX}{user_id}", SORT_KEY: f"{VERSION_PREFIX}{run_id}"}


def item_key(item_id: str, run_id: str) -> dict[str, str]:
    """An item's similar-items row of version ``run_id``."""
    return {PARTITION_KEY: f"{ITEM_PREFIX}{item_id}", SORT_KEY: f"{VERSION_PREFIX}{run_id}"}


def popular_key(run_id: str) -> dict[str, str]:
    """The most-popular-items row of version ``run_id`` (one per version)."""
    return {PARTITION_KEY: POPULAR_PK, SORT_KEY: f"{VERSION_PREFIX}{run_id}"}


def version_key(run_id: str) -> dict[str, str]:
    return {PARTITION_KEY: VERSION_PK, SORT_KEY: f"{VERSION_PREFIX}{run_id}"}


ACTIVE_KEY: dict[str, str] = {PARTITION_KEY: ACTIVE_PK, SORT_KEY: ACTIVE_SK}
LOCK_KEY: dict[str, str] = {PARTITION_KEY: LOCK_PK, SORT_KEY: LOCK_SK}


def score_number(value: float) -> str:
    """How the table spells a score (a DynamoDB ``N``): float32 precision (7 significant digits),
    exponents as Decimal spells them (``1.5E-7``)."""
    text = f"{value:.7g}"
    return str(Decimal(text)) if "e" in text else text


def create_table_kwargs(table_name: str) -> dict[str, object]:
    """``dynamodb.create_table`` arguments matching the deployed table (used locally and in tests)."""
    return {
        "TableName": table_name,
        "AttributeDefinitions": [
            {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
            {"AttributeName": SORT_KEY, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }
