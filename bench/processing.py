"""Speed and memory of the processing step on a synthetic MovieLens-25M-sized input.

The input is generated once and cached under ``.recpipe/bench/``: 162,541 users, 62,423 items,
25,000,095 distinct (user, item) interactions, one CSV ``user_id,item_id,rating,timestamp``.
Item popularity follows a power law (Zipf, exponent 1 over ranks offset by 10), user activity a
Pareto law (at least 20 ratings, as in MovieLens, at most 8,000), ratings the half-star histogram
of ML-25M, timestamps uniform over 1995-2019.

The step then runs as the container runs it (``python3 workflows/processing/__main__.py`` in a
subprocess; default config: implicit, 4 negatives per positive, 20 % holdout) and the bench
prints its wall time, peak
RSS (``getrusage(RUSAGE_CHILDREN)``) and input rows/s. The machine is shared and noisy, so a
baseline is measured in the same run: a bare ``pandas.read_csv`` of the same file in a subprocess,
the floor any CSV-reading step pays.

    .venv/bin/python bench/processing.py [--quick]     # --quick: a 1/10-sized input

Ends with ``RESULT rows_per_s=<n> peak_rss_gb=<x> wall_s=<y> read_csv_s=<z> ratio_vs_read_csv=<r>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflows" / "processing" / "__main__.py"
N_USERS, N_ITEMS, N_ROWS = 162_541, 62_423, 25_000_095
RATINGS = np.arange(1, 11) / 2
RATING_SHARE = np.array([1.6, 3.1, 1.6, 6.6, 5.0, 19.6, 12.6, 26.6, 8.5, 14.4])
T0, T1 = 789_652_009, 1_574_327_703  # 1995-01-09 .. 2019-11-21


def _user_counts(rng: np.random.Generator, n_users: int, n_items: int, n_rows: int) -> np.ndarray:
    cap = min(8000, n_items // 8)
    raw = 20 + rng.pareto(1.2, n_users) * 40
    counts = np.clip(np.floor(raw * (n_rows / raw.sum())), 20, cap).astype(np.int64)
    deficit = n_rows - int(counts.sum())
    while deficit != 0:  # spread the rounding error over random users, within [20, cap]
        pick = rng.integers(0, n_users, abs(deficit))
        np.add.at(counts, pick, 1 if deficit > 0 else -1)
        counts = np.clip(counts, 20, cap)
        deficit = n_rows - int(counts.sum())
    return counts


def generate(path: Path, n_users: int, n_items: int, n_rows: int, seed: int = 0) -> None:
    """Distinct (user, item) pairs with Zipf item popularity, written with pyarrow's CSV writer.

    Users are handled in blocks with a dense "already rated" mask: each round draws the missing
    count per user from the popularity law and keeps the draws that are new."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    counts = _user_counts(rng, n_users, n_items, n_rows)
    popularity = 1.0 / (np.arange(n_items) + 10.0)
    cdf = np.cumsum(popularity / popularity.sum())
    cdf[-1] = 1.0
    item_of_rank = rng.permutation(n_items)  # popular items are not the small ids
    block = max(1, 2**25 // n_items)
    chunks = []
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        need = counts[lo:hi].copy()
        mask = np.zeros((hi - lo, n_items), dtype=bool)
        while need.any():
            r = np.repeat(np.arange(hi - lo), need)
            c = item_of_rank[np.searchsorted(cdf, rng.random(len(r)))]
            fresh = ~mask[r, c]
            keys = np.unique(r[fresh] * n_items + c[fresh])
            mask[keys // n_items, keys % n_items] = True
            need -= np.bincount(keys // n_items, minlength=hi - lo)
        rows, cols = np.nonzero(mask)
        chunks.append((lo + rows.astype(np.int64)) * n_items + cols)
    keys = np.concatenate(chunks)
    assert len(keys) == n_rows, (len(keys), n_rows)
    keys = keys[rng.permutation(n_rows)]  # file order is not sorted by user
    table = pa.table({
        "user_id": (keys // n_items + 1).astype(np.int64),
        "item_id": (keys % n_items + 1).astype(np.int64),
        "rating": rng.choice(RATINGS, size=n_rows, p=RATING_SHARE / RATING_SHARE.sum()),
        "timestamp": rng.integers(T0, T1, n_rows),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pacsv.write_csv(table, tmp)
    tmp.replace(path)


def run_step(csv: Path, work: Path) -> tuple[float, float, dict[str, object]]:
    """Run the script in a subprocess; (wall seconds, peak RSS GB of the child, manifest)."""
    interactions = work / "processing" / "input" / "data" / "interactions"
    interactions.mkdir(parents=True)
    (interactions / "ratings.csv").symlink_to(csv)
    env = {**os.environ, "RECPIPE_OPT_ML": str(work)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, check=False)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"the processing step failed with status {proc.returncode}")
    if peak_kb <= before:
        print("(note: an earlier child had a larger peak RSS; the figure is an upper bound)")
    manifest = json.loads((work / "processing" / "output" / "manifest.json").read_text())
    return wall, peak_kb / 2**20, manifest


def read_csv_seconds(csv: Path) -> float:
    code = ("import sys, time, pandas as pd; t = time.perf_counter(); pd.read_csv(sys.argv[1]); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, str(csv)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 1/10-sized input (smoke run)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    n_users, n_items, n_rows = N_USERS // scale, N_ITEMS // scale, N_ROWS // scale
    csv = ROOT / ".recpipe" / "bench" / f"ml25m-synth-{n_users}-{n_items}-{n_rows}.csv"
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not csv.exists():
        t0 = time.perf_counter()
        generate(csv, n_users, n_items, n_rows)
        size = csv.stat().st_size / 2**20
        print(f"generated {csv.name} ({size:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"using cached {csv.name} ({csv.stat().st_size / 2**20:.0f} MiB)")

    work = Path(tempfile.mkdtemp(prefix="recpipe-bench-processing-"))
    try:
        wall, peak_gb, manifest = run_step(csv, work)
        out_bytes = sum(p.stat().st_size for p in (work / "processing" / "output").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = read_csv_seconds(csv)
    counts = manifest["counts"]
    assert isinstance(counts, dict)
    out_rows = counts["train_rows"] + counts["test_rows"] + counts["full_rows"]
    print(f"input: {n_rows:,} rows; output: {counts['users']:,} users, {counts['items']:,} items, "
          f"train/test/full rows {counts['train_rows']:,} / {counts['test_rows']:,} / "
          f"{counts['full_rows']:,}, {out_bytes / 2**30:.2f} GiB written")
    print(f"processing step: {wall:.1f} s wall, peak RSS {peak_gb:.2f} GB, {n_rows / wall:,.0f} input "
          f"rows/s, {out_rows / wall:,.0f} output rows/s")
    print(f"baseline pandas.read_csv of the same file: {baseline:.1f} s "
          f"(the step takes {wall / baseline:.1f}x)")
    if peak_gb > 16:
        print("WARNING: peak RSS above the 16 GB budget")
    print(f"RESULT rows_per_s={n_rows / wall:.0f} peak_rss_gb={peak_gb:.2f} wall_s={wall:.1f} "
          f"read_csv_s={baseline:.1f} ratio_vs_read_csv={wall / baseline:.2f}")


if __name__ == "__main__":
    main()
