"""The sequence context (processing.context_items) and negative rounds (processing.negative_rounds)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tests.unit.processing.conftest import Job
from workflows.processing.preprocess import SequenceContext

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
