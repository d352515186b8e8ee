"""Benchmark: recpipe's k-NN verbose jsonlines reader/writer vs plain json.loads / json.dumps.

``--lines`` records of ``--k`` neighbours (item-index labels, sorted float32 distances), the publish
Lambda's input in miniature (it reads ~1M lines x ~220 neighbours). Baselines, measured in the same
run and interleaved with ours in ``--rounds`` rounds (the machine is shared; only ratios mean
anything):

- read: ``json.loads`` per line, then the (n, k) int64 / float32 arrays;
- write: ``json.dumps`` per record (dict of Python floats) joined and encoded.

Two texts are read: the one our writer produces (9 significant digits) and the one ``json.dumps``
produces (Python float reprs, up to 17 digits, as other writers may emit); both must read back
exactly.

    .venv/bin/python bench/knn_output.py [--lines 20000] [--k 220] [--rounds 3]
"""

from __future__ import annotations

import argparse
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
    return ("\n".join(lines) + "\n").encode()


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
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=220)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

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
    print(
        f"RESULT read_speedup={read_speedup:.1f} write_speedup={write_speedup:.1f} "
        f"read_speedup_dumps_text={dumps_speedup:.1f} read_lines_per_s={meter.rate('read'):.0f} "
        f"write_lines_per_s={meter.rate('write'):.0f} exact={int(exact)}"
    )


if __name__ == "__main__":
    main()
