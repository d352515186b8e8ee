"""Data sets: MovieLens-100k, obtained at set-up from the ``recbole`` wheel on PyPI.

MovieLens' licence forbids redistribution, so nothing here is committed: the wheel is downloaded
once into a cache directory and converted to the pipeline's input layout::

    <dest>/interactions/interactions.csv   user_id,item_id,rating,timestamp
    <dest>/users/users.csv                 user_id,age,gender,occupation
    <dest>/items/items.csv                 item_id,release_year,genres   (genres '|'-separated)

The zip code and the movie title are left out: both are near-unique per row, so as one-hot
features they add parameters without adding anything the id does not already carry.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

RECBOLE_VERSION = "1.2.1"
_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


class DatasetError(RuntimeError):
    """The data set could not be obtained or converted."""


def _download_wheel(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = cache_dir / f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
    if wheel.exists():
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           f"recbole=={RECBOLE_VERSION}", "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not wheel.exists():
        raise DatasetError(f"could not download the recbole wheel ({' '.join(cmd)}): {proc.stderr.strip()}")
    return wheel


def _read_atomic(zf: zipfile.ZipFile, ext: str) -> list[list[str]]:
    """RecBole's atomic files: tab-separated, header cells ``name:type``."""
    with zf.open(_MEMBER.format(ext)) as fh:
        rows = list(csv.reader(io.TextIOWrapper(fh, encoding="latin-1"), delimiter="\t"))
    rows[0] = [cell.split(":", 1)[0] for cell in rows[0]]
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


def movielens_100k(dest: Path, cache_dir: Path) -> Path:
    """Make sure MovieLens-100k is at ``dest`` in the input layout; return ``dest``. Cached."""
    done = dest / ".complete"
    if done.exists():
        return dest
    wheel = _download_wheel(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter = _read_atomic(zf, "inter")
            users = _read_atomic(zf, "user")
            items = _read_atomic(zf, "item")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{wheel}: not a recbole wheel with ML-100k inside ({exc})") from exc

    _write_csv(dest / "interactions" / "interactions.csv", ["user_id", "item_id", "rating", "timestamp"],
               [[r[0], r[1], r[2], str(int(float(r[3])))] for r in inter[1:]])
    uh = users[0]
    ucols = [uh.index(c) for c in ("user_id", "age", "gender", "occupation")]
    _write_csv(dest / "users" / "users.csv", ["user_id", "age", "gender", "occupation"],
               [[r[i] for i in ucols] for r in users[1:]])
    ih = items[0]
    i_id, i_year, i_class = ih.index("item_id"), ih.index("release_year"), ih.index("class")
    _write_csv(dest / "items" / "items.csv", ["item_id", "release_year", "genres"],
               [[r[i_id], r[i_year], "|".join(r[i_class].split())] for r in items[1:]])
    done.write_text("ok\n")
    return dest
