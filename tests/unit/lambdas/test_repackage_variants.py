"""Which user rows each model variant is repackaged with (sequence context: train part vs all data)."""

from __future__ import annotations

from typing import Any

import pytest

from lambdas.repackage.repackage import user_rows_file

WITH_TRAIN_ROWS = {"files": {"user_rows": "meta/user_rows.npz",
                             "user_rows_train": "meta/user_rows_train.npz"}}
WITHOUT = {"files": {"user_rows": "meta/user_rows.npz"}}
NULL_TRAIN_ROWS = {"files": {"user_rows": "meta/user_rows.npz", "user_rows_train": None}}


@pytest.mark.parametrize(("variant", "manifest", "expected"), [
    ("eval", WITH_TRAIN_ROWS, "user_rows_train"),
    ("serve", WITH_TRAIN_ROWS, "user_rows"),
    ("eval", WITHOUT, "user_rows"),
    ("eval", NULL_TRAIN_ROWS, "user_rows"),
    ("eval", {}, "user_rows"),
])
def test_eval_variant_scores_users_with_the_training_parts_rows(variant: str, manifest: dict[str, Any],
                                                                  expected: str) -> None:
    assert user_rows_file(variant, manifest) == expected
