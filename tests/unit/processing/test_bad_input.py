"""Every kind of bad input ends with exit status 1 and one line naming file, row and column."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.unit.processing.conftest import Job
from workflows.processing import step

HEADER = "user_id,item_id,rating,timestamp\n"
GOOD = HEADER + "1,10,5,100\n2,11,4,200\n"

# (files under data/, config, expected message)
CASES: list[tuple[str, dict[str, str | bytes], dict[str, object], str]] = [
    ("missing user column", {"interactions/r.csv": "uid,item_id,rating\n1,10,5\n"}, {},
     "Bad input: interactions/r.csv, line 1 (header), column 'user_id': required column missing "
     "(data.user_column); the columns are 'uid', 'item_id', 'rating'"),
    ("missing item column, renamed user column", {"interactions/r.csv": "u,rating\n1,5\n"},
     {"data.user_column": "u"},
     "Bad input: interactions/r.csv, line 1 (header), column 'item_id': required column missing"),
    ("explicit mode needs ratings", {"interactions/r.csv": "user_id,item_id\n1,10\n"},
     {"processing.mode": "explicit"},
     "Bad input: interactions/r.csv, line 1 (header), column 'rating': required column missing "
     "(data.rating_column; processing.mode is explicit)"),
    ("non-numeric rating", {"interactions/r.csv": HEADER + "1,10,5,1\n1,11,five,2\n"}, {},
     "Bad input: interactions/r.csv, line 3, column 'rating': the rating must be a finite number, "
     "got 'five'"),
    ("NaN rating", {"interactions/r.csv": HEADER + "1,10,5,1\n1,11,4,2\n2,12,NaN,3\n"}, {},
     "Bad input: interactions/r.csv, line 4, column 'rating': the rating must be a finite number, "
     "got 'NaN'"),
    ("empty rating", {"interactions/r.csv": HEADER + "1,10,,1\n"}, {},
     "Bad input: interactions/r.csv, line 2, column 'rating': empty rating; every row needs a numeric "
     "rating"),
    ("header only", {"interactions/r.csv": HEADER}, {},
     "Bad input: interactions/: the input is empty: no data rows in interactions/r.csv"),
    ("zero-byte files only", {"interactions/a.csv": "", "interactions/b.csv": ""}, {},
     "Bad input: interactions/: the input is empty: no data rows in interactions/a.csv, interactions/b.csv"),
    ("no interaction files", {"users/u.csv": "user_id\n1\n"}, {},
     "Bad input: interactions/: no input files (expected one or more CSV or Parquet files)"),
    ("nothing left after filtering", {"interactions/r.csv": GOOD}, {"processing.min_user_interactions": 3},
     "Bad input: interactions/: no rows left after filtering: none of the 2 interactions passes "
     "processing.min_user_interactions=3 and processing.min_item_interactions=1"),
    ("no positives", {"interactions/r.csv": HEADER + "1,10,1,1\n2,10,2,2\n"},
     {"evaluation.holdout_fraction": 0.0},
     "Bad input: interactions/: no positive interactions in the train set "
     "(ratings >= processing.positive_threshold=4)"),
    ("no positive held out", {"interactions/r.csv": HEADER + "1,10,5,1\n1,11,2,2\n2,10,4,1\n2,12,1,2\n"},
     {"evaluation.holdout_fraction": 0.5},
     "Bad input: interactions/: no positive interactions in the test set (ratings >= "
     "processing.positive_threshold=4); lower the threshold or set evaluation.holdout_fraction to 0"),
    ("empty user id", {"interactions/r.csv": HEADER + "1,10,5,1\n,11,4,2\n"}, {},
     "Bad input: interactions/r.csv, line 3, column 'user_id': empty or NaN user id (got '')"),
    ("NaN item id", {"interactions/r.csv": HEADER + "1,10,5,1\n2,11,4,2\n3,nan,4,2\n"}, {},
     "Bad input: interactions/r.csv, line 4, column 'item_id': empty or NaN item id (got 'nan')"),
    ("blank line inside the file", {"interactions/r.csv": HEADER + "1,10,5,1\n\n2,11,4,2\n"}, {},
     "Bad input: interactions/r.csv, line 3, column 'user_id': empty or NaN user id (got '')"),
    ("second file is the bad one",
     {"interactions/a.csv": GOOD, "interactions/b.csv": HEADER + "3,12,4,1\n4,,4,1\n"}, {},
     "Bad input: interactions/b.csv, line 3, column 'item_id': empty or NaN item id (got '')"),
    ("not UTF-8", {"interactions/r.csv": b"user_id,item_id\n1,\xff\xfe\x00\x01\n"}, {},
     "Bad input: interactions/r.csv: not UTF-8 text"),
    ("unsupported format", {"interactions/r.json": '[{"user_id": 1}]'}, {},
     "Bad input: interactions/r.json: unsupported file format '.json'; expected .csv, .csv.gz, .parquet, "
     ".pq"),
    ("ragged CSV", {"interactions/r.csv": HEADER + "1,10,5,1\n1,11,4,2,9\n"}, {},
     "Bad input: interactions/r.csv, line 3: expected 4 fields (as in the header), found 5"),
    ("corrupt Parquet", {"interactions/r.parquet": b"PAR1 definitely not parquet"}, {},
     "Bad input: interactions/r.parquet: cannot read the file as PARQUET"),
    ("unparseable timestamp",
     {"interactions/r.csv": HEADER + "1,10,5,2024-01-01T00:00:00Z\n1,11,4,yesterday\n"}, {},
     "Bad input: interactions/r.csv, line 3, column 'timestamp': cannot parse the timestamp 'yesterday' "
     "(expected epoch seconds or ISO 8601)"),
    ("empty timestamp", {"interactions/r.csv": HEADER + "1,10,5,100\n1,11,4,\n"}, {},
     "Bad input: interactions/r.csv, line 3, column 'timestamp': cannot parse the timestamp ''"),
    ("timestamp in one file only",
     {"interactions/a.csv": GOOD, "interactions/b.csv": "user_id,item_id,rating\n3,1,5\n"}, {},
     "Bad input: interactions/b.csv, line 1 (header), column 'timestamp': column missing here but "
     "present in interactions/a.csv"),
    ("user table ids do not match",
     {"interactions/r.csv": GOOD, "users/u.csv": "user_id,age\nu1,20\nu2,30\n"}, {},
     "Bad input: users/u.csv, line 2, column 'user_id': none of the 2 user ids matches a user id of the "
     "interactions (the table has 'u1', the interactions have '1', ...)"),
    ("item table without id column",
     {"interactions/r.csv": GOOD, "items/i.csv": "movie,genre\n10,Drama\n"}, {},
     "Bad input: items/i.csv, line 1 (header), column 'item_id': the item table has no id column "
     "(data.item_column); its columns are 'movie', 'genre'"),
    ("selected feature column missing", {"interactions/r.csv": GOOD, "users/u.csv": "user_id,age\n1,20\n"},
     {"data.user_features": "age,zip"},
     "Bad input: users/u.csv, line 1 (header), column 'zip': column named in data.user_features is missing"),
    ("empty id in the item table",
     {"interactions/r.csv": GOOD, "items/i.csv": "item_id,genre\n10,Drama\n,Comedy\n"}, {},
     "Bad input: items/i.csv, line 3, column 'item_id': empty item id"),
    ("invalid config", {"interactions/r.csv": GOOD}, {"processing.mode": "implicitly", "fm.epoch": 3},
     "Bad input: config/config.json: Invalid pipeline configuration: 'processing.mode' must be one of "
     "implicit, explicit; got 'implicitly'; unknown key 'fm.epoch' (did you mean 'fm.epochs'?)"),
]


@pytest.mark.parametrize(("files", "config", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_reason(job: Job, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], files: dict[str, str | bytes],
                                         config: dict[str, object], expected: str) -> None:
    for rel, content in files.items():
        job.write(rel, content)
    job.config(**config)
    assert job.main(monkeypatch) == 1
    message = job.failure()
    assert message.endswith("\n") and message.count("\n") == 1, "the reason must be one line"
    assert message.startswith(expected), message
    assert (job.opt_ml / "output" / "failure").read_text() == message
    err = capsys.readouterr().err
    assert err == message, "stderr carries the same single line, no traceback"
    assert not (job.out / "manifest.json").exists()


def test_parquet_rows_are_counted_from_one(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    job.write("interactions/r.parquet", pd.DataFrame({"user_id": ["a", "b", ""], "item_id": ["x", "y", "z"]}))
    assert job.main(monkeypatch) == 1
    assert job.failure() == ("Bad input: interactions/r.parquet, row 3, column 'user_id': empty or NaN "
                             "user id (got '')\n")


def test_duplicates_and_trailing_blank_lines_are_not_errors(job: Job,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    job.write("interactions/r.csv", GOOD + "1,10,3,300\n\n\n")
    job.config(**{"evaluation.holdout_fraction": 0.0})
    assert job.main(monkeypatch) == 0
    assert job.manifest["counts"]["duplicates"] == 1
    assert not (job.opt_ml / "output" / "message").exists()


def test_internal_errors_still_give_one_line(job: Job, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    job.write("interactions/r.csv", GOOD)
    job.config(**{"evaluation.holdout_fraction": 0.0})

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(step, "write_set", boom)
    assert job.main(monkeypatch) == 2
    assert job.failure() == "Internal error in the processing step: RuntimeError: disk on fire second line\n"
    assert "Traceback" in capsys.readouterr().err  # the details stay in the log


def test_long_reasons_fit_the_1kb_exit_message(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    columns = ",".join(f"column_with_a_long_name_{i}" for i in range(100))
    job.write("interactions/r.csv", columns + "\n" + ",".join("1" * 100) + "\n")
    assert job.main(monkeypatch) == 1
    assert len(job.failure().encode()) <= 1024
