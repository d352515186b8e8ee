"""Benchmark: recpipe's k-NN verbose jsonlines reader/writer (orjson) vs plain json.loads / json.dumps.

``--lines`` records of ``--k`` neighbours (item-index labels, sorted float32 distances): by default
one transform output file, i.e. one user shard (``processing.users_per_shard`` = 25,000) of a
1M-user run, which is what one PublishShard Lambda reads. Baselines, measured in the same run and
interleaved with ours in ``--rounds`` rounds (the machine is shared; only ratios mean anything):

- read: ``json.loads`` per line, then the (n, k) int64 / float32 arrays;
- write: ``json.dumps`` per record (dict of Python floats) joined and encoded;
- ``--old FILE``: also read with another implementation of ``read_verbose_jsonlines`` (e.g. the
  hand-written parser this module replaced: ``git show b1280ad:recpipe/formats/knn_output.py``).

Two texts are read: the one our writer produces and the one ``json.dumps`` produces (Python float
reprs, up to 17 digits, as other writers may emit), this one with a blank line after every record
(as batch transform's AssembleWith=Line may write); both must read back exactly.

    .venv/bin/python bench/knn_output.py [--lines 25000] [--k 220] [--rounds 3] [--old FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recpipe.formats.knn_output import read_verbose_jsonlines, write_verbose_jsonlines


def json_read(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    records = [json.loads(line) for line in data.splitlines() if line.strip()]
    labels = np.array([r["labels"] for r in records], np.float64).astype(np.int64)
    distances = np.array([r["distances"] for r in records], np.float32)
    return labels, distances


def json_write(labels: np.ndarray, distances: np.ndarray, predicted: np.ndarray) -> bytes:
    lines = [
        json.dumps({"predicted_label": p, "labels": lab, "distances": dist})
        for p, lab, dist in zip(
            predicted.astype(np.float64).tolist(),
            labels.astype(np.float64).tolist(),
            distances.astype(np.float64).tolist(),
            strict=True,
        )
    ]
    return ("\n\n".join(lines) + "\n").encode()


def ours_write(labels: np.ndarray, distances: np.ndarray, predicted: np.ndarray) -> bytes:
    out = io.BytesIO()
    write_verbose_jsonlines(out, labels, distances, predicted)
    return out.getvalue()


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


class Meter:
    def __init__(self) -> None:
        self.lines: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def add(self, name: str, lines: int, seconds: float) -> None:
        self.lines[name] = self.lines.get(name, 0) + lines
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rate(self, name: str) -> float:
        return self.lines[name] / self.seconds[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=25_000)
    parser.add_argument("--k", type=int, default=220)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", help="a module file with another read_verbose_jsonlines to time")
    args = parser.parse_args()
    old_read = None
    if args.old:
        spec = importlib.util.spec_from_file_location("old_knn_output", args.old)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        old_read = old.read_verbose_jsonlines

    rng = np.random.default_rng(0)
    n, k = args.lines, args.k
    labels = rng.integers(0, 500_000, (n, k))
    distances = np.sort(rng.gamma(2.0, 0.5, (n, k)).astype(np.float32), axis=1)
    distances[: n // 50, 0] = 0.0  # exact matches and tiny values (exponent notation) occur too
    distances[n // 50 : n // 25, 0] = rng.random(n // 25 - n // 50).astype(np.float32) * 1e-5
    predicted = labels[:, 0].astype(np.float32)

    ours_text = ours_write(labels, distances, predicted)
    dumps_text = json_write(labels, distances, predicted)
    exact = True
    for text in (ours_text, dumps_text):
        got_labels, got_distances = read_verbose_jsonlines(text)
        exact &= np.array_equal(got_labels, labels) and np.array_equal(got_distances, distances)
    base_labels, base_distances = json_read(ours_text)
    exact &= np.array_equal(base_labels, labels) and np.array_equal(base_distances, distances)

    meter = Meter()
    for r in range(args.rounds):
        meter.add("json_read", n, timed(json_read, ours_text)[0])
        meter.add("read", n, timed(read_verbose_jsonlines, ours_text)[0])
        if old_read is not None:
            meter.add("old_read", n, timed(old_read, ours_text)[0])
        meter.add("json_read_dumps", n, timed(json_read, dumps_text)[0])
        meter.add("read_dumps", n, timed(read_verbose_jsonlines, dumps_text)[0])
        meter.add("json_write", n, timed(json_write, labels, distances, predicted)[0])
        meter.add("write", n, timed(ours_write, labels, distances, predicted)[0])
        print(
            f"round {r + 1}/{args.rounds}: read {meter.rate('read'):,.0f} lines/s "
            f"(json.loads {meter.rate('json_read'):,.0f}), write {meter.rate('write'):,.0f} "
            f"(json.dumps {meter.rate('json_write'):,.0f}) (running totals)",
            flush=True,
        )

    read_speedup = meter.rate("read") / meter.rate("json_read")
    dumps_speedup = meter.rate("read_dumps") / meter.rate("json_read_dumps")
    write_speedup = meter.rate("write") / meter.rate("json_write")
    print(
        f"lines={n} k={k}: our text {len(ours_text) / n:,.0f} B/line, "
        f"json.dumps text {len(dumps_text) / n:,.0f}"
    )
    print(
        f"read (our text):        ours {meter.rate('read'):,.0f} lines/s, "
        f"json.loads {meter.rate('json_read'):,.0f}"
    )
    print(
        f"read (json.dumps text): ours {meter.rate('read_dumps'):,.0f} lines/s, "
        f"json.loads {meter.rate('json_read_dumps'):,.0f}"
    )
    print(
        f"write:                  ours {meter.rate('write'):,.0f} lines/s, "
        f"json.dumps {meter.rate('json_write'):,.0f}"
    )
    print(f"both texts read back exactly: {exact}")
    old = ""
    if old_read is not None:
        print(f"read (our text):        {args.old} {meter.rate('old_read'):,.0f} lines/s")
        old = f" old_over_ours={meter.rate('old_read') / meter.rate('read'):.2f}"
    print(
        f"RESULT read_speedup={read_speedup:.1f} write_speedup={write_speedup:.1f} "
        f"read_speedup_dumps_text={dumps_speedup:.1f} read_lines_per_s={meter.rate('read'):.0f} "
        f"write_lines_per_s={meter.rate('write'):.0f} exact={int(exact)}{old}"
    )


if __name__ == "__main__":
    main()
