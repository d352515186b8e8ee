"""The sequence context (processing.context_items) and negative rounds (processing.negative_rounds)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tests.unit.processing.conftest import Job
from workflows.processing.context import SequenceContext, fit_budget
from workflows.processing.negatives import sample_negatives

# 2 users, 8 items; user 1 rates items 10..15 in time order, user 2 items 10..14 (ratings >= 4 but one).
INTERACTIONS = "user_id,item_id,rating,timestamp\n" + "".join(
    f"{u},{i},{r},{t}\n" for u, i, r, t in [
        (1, 10, 5, 1), (1, 11, 4, 2), (1, 12, 2, 3), (1, 13, 5, 4), (1, 14, 4, 5), (1, 15, 5, 6),
        (2, 14, 4, 1), (2, 13, 5, 2), (2, 12, 4, 3), (2, 11, 4, 4), (2, 10, 5, 5),
    ]) + "3,16,5,1\n3,17,4,2\n"


def reference_context(history: list[int], length: int, decay: float, n_items: int) -> np.ndarray:
    """The context block of a row after ``history`` (item indices, oldest first), as the docs define it."""
    block = np.zeros(n_items)
    recent = history[::-1][:length]
    weights = decay ** np.arange(len(recent))
    for item, weight in zip(recent, weights, strict=True):
        block[item] = weight / np.sqrt(weights.sum())
    return block


def test_sequence_context_rows_match_the_definition() -> None:
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([3, 1, 4, 0, 2, 5])
    ctx = SequenceContext.of(users, items, 2, length=3, decay=0.5, offset=10, dim=16)
    rows = ctx.rows(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 4, 4, 6])).toarray()
    assert rows.shape == (5, 16) and not rows[:, :10].any()
    expected = [[], [3], [3, 1, 4, 0], [], [2, 5]]
    for row, history in zip(rows, expected, strict=True):
        np.testing.assert_allclose(row[10:], reference_context(history, 3, 0.5, 6), rtol=1e-6)


def test_training_rows_carry_the_context_before_them_and_users_the_latest(job: Job) -> None:
    job.write("interactions/i.csv", INTERACTIONS)
    job.config(**{"evaluation.holdout_fraction": 0.2, "processing.negatives_per_positive": 1,
                  "processing.negative_rounds": 3, "processing.context_items": 2,
                  "processing.context_decay": 0.5})
    manifest = job.run()
    n_users, n_items = 3, 8
    offset, size = manifest["layout"]["context"]
    assert size == n_items and manifest["feature_dim"] == offset + n_items
    counts = manifest["counts"]
    assert counts["train_rows"] == 3 * counts["train_positives"] + counts["train_negatives"]
    assert counts["train_negatives"] == 3 * counts["train_positives"]

    # ceil(0.2 n_u) held out: user 1 keeps items 10..13, user 2 items 14, 13, 12, 11, user 3 item 16
    train_history = {0: [0, 1, 2, 3], 1: [4, 3, 2, 1], 2: [6]}
    all_history = {0: [0, 1, 2, 3, 4, 5], 1: [4, 3, 2, 1, 0], 2: [6, 7]}
    for name, history in (("user_rows_train", train_history), ("user_rows", all_history)):
        rows = job.npz(name).toarray()
        for u in range(n_users):
            np.testing.assert_allclose(rows[u, offset:], reference_context(history[u], 2, 0.5, n_items),
                                       rtol=1e-6)
            assert rows[u, u] == 1
    assert manifest["files"]["user_rows_train"] == "meta/user_rows_train.npz"

    x, labels = job.read_set("train")
    x = x.toarray()
    users = x[:, :n_users].argmax(axis=1)
    items = x[:, n_users:n_users + n_items].argmax(axis=1)
    contexts = x[:, offset:]
    for r in np.flatnonzero(labels == 1):
        u, i = users[r], items[r]
        before = train_history[u][:train_history[u].index(i)]
        np.testing.assert_allclose(contexts[r], reference_context(before, 2, 0.5, n_items), rtol=1e-6)
    positive_contexts = {(users[r], contexts[r].round(6).tobytes()) for r in np.flatnonzero(labels == 1)}
    for r in np.flatnonzero(labels == 0):  # a negative shares the context of one of its user's positives
        assert (users[r], contexts[r].round(6).tobytes()) in positive_contexts
        assert items[r] not in train_history[users[r]]


def test_context_off_keeps_plain_rows_and_one_user_row_file(job: Job) -> None:
    job.write("interactions/i.csv", INTERACTIONS)
    job.config(**{"evaluation.holdout_fraction": 0.2, "processing.context_items": 0})
    manifest = job.run()
    assert "context" not in manifest["layout"]
    assert manifest["files"]["user_rows_train"] == manifest["files"]["user_rows"]
    x, _ = job.read_set("train")
    assert (np.diff(x.indptr) == 2).all()
    assert sp.issparse(job.npz("user_rows"))


def test_fit_budget_lowers_rounds_first_then_the_context() -> None:
    # one user, 6 interactions (all rows), 1 non-zero per id part: rows = 1 + 4 negatives per positive
    users, items = np.zeros(6, np.int64), np.arange(6)
    rows = np.ones(6, dtype=bool)
    ones = np.ones(6, np.int64)
    # before = 0..5; with length L the context adds sum(min(before, L)) per positive, 5x with negatives
    def nnz(rounds: int, length: int) -> int:
        return rounds * 5 * (6 * 2 + sum(min(b, length) for b in range(6)))

    args = (users, items, rows, 1, ones[:1], ones, 4)
    unbounded = fit_budget(*args, 4, 3, 0)
    assert (unbounded.negative_rounds, unbounded.context_items, unbounded.nonzeros) == (4, 3, nnz(4, 3))
    assert fit_budget(*args, 4, 3, nnz(4, 3)) == unbounded
    two = fit_budget(*args, 4, 3, nnz(3, 3) - 1)
    assert (two.negative_rounds, two.context_items) == (2, 3)
    short = fit_budget(*args, 4, 3, nnz(1, 2))
    assert (short.negative_rounds, short.context_items, short.nonzeros) == (1, 2, nnz(1, 2))
    none = fit_budget(*args, 4, 3, 1)
    assert (none.negative_rounds, none.context_items) == (1, 0)


def test_budget_shortens_what_is_written_and_the_manifest_says_so(job: Job) -> None:
    job.write("interactions/i.csv", INTERACTIONS)
    job.config(**{"evaluation.holdout_fraction": 0.2, "processing.negatives_per_positive": 1,
                  "processing.negative_rounds": 3, "processing.context_items": 2,
                  "processing.max_nonzeros": 70})
    manifest = job.run()
    volume = manifest["volume"]
    assert volume["negative_rounds"] == 1 and volume["context_items"] == 1
    assert 48 < volume["estimated_nonzeros"] <= 70  # 24 rows of 2 ids + some context
    x, _ = job.read_set("full")
    assert x.nnz <= volume["estimated_nonzeros"]
    counts = manifest["counts"]
    assert counts["train_rows"] == counts["train_positives"] + counts["train_negatives"]


def test_popularity_negatives_favour_popular_items() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 50
    seen = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    popularity = np.zeros(n_items)
    popularity[:5] = 1.0  # all popularity on items 0..4
    cdf = np.cumsum(popularity) / popularity.sum()
    wanted = np.full(n_users, 2)
    _, uniform = sample_negatives(seen, wanted, rng)
    _, popular = sample_negatives(seen, wanted, rng, cdf, 1.0)
    _, mixed = sample_negatives(seen, wanted, rng, cdf, 0.5)
    assert np.mean(uniform < 5) < 0.25
    assert (popular < 5).all()
    assert 0.6 < np.mean(mixed < 5) < 0.9  # half by popularity + 10 % of the uniform half
