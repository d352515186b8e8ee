"""Top-N benchmark: exact top-100 inner-product neighbours of every user, MovieLens-25M sized.

    .venv/bin/python bench/topn.py                 # 162,541 users x 62,423 items x 65 dims (~1-2 min)
    .venv/bin/python bench/topn.py --users 20000   # quicker

Data (seeded): FM-like vectors as Repackage produces them, user ``concat(V^T x_u, 1)`` and item
``concat(V^T x_i, b_i)``: 64 latent factors ~ N(0, 1/64) scaled per item by ``0.5 + log10(popularity)``
(Zipf(1.1) popularity: popular items have larger factors, as trained FM models tend to), item bias
``b_i = 0.2 * log(popularity)`` standardised, user factors ~ N(0, 1/64) scaled by a log-normal
activity; items stored in a random order.

Figures, all measured in this run (the machine is shared and its load swings within seconds, so
only ratios measured side by side mean much):

- the float32 matmul peak, measured the way the kernel uses the cores: one single-threaded numpy
  sgemm (2048^2) per thread, side by side, best of two, as a short burst before and after each of
  ``--chunks`` user chunks; each chunk's GFLOP/s (2 * users * items * dims / seconds) is divided by
  the better of its two bursts, and ``peak_share`` is the median over chunks (``cpu_peak_share`` the
  same per CPU-second, which time-slicing by other processes does not distort); one 4096^2 sgemm on
  BLAS's own threads is printed for reference;
- faiss's ``IndexFlatIP.search`` on the same job (``faiss_seconds``), and how many neighbours agree.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recpipe.algorithms.container import available_cores
from recpipe.algorithms.topk import topk_inner_product


def fm_like(n_users: int, n_items: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    factors = dim - 1
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    popularity = 1e6 * ranks**-1.1
    rng.shuffle(popularity)  # catalogue order unrelated to popularity
    scale = 0.5 + np.log10(popularity)
    items = np.empty((n_items, dim), dtype=np.float32)
    items[:, :factors] = rng.standard_normal((n_items, factors), dtype=np.float32) / np.sqrt(factors)
    items[:, :factors] *= (scale / scale.mean())[:, None].astype(np.float32)
    bias = 0.2 * np.log(popularity)
    items[:, factors] = ((bias - bias.mean()) / bias.std()).astype(np.float32)
    users = np.empty((n_users, dim), dtype=np.float32)
    activity = rng.lognormal(0.0, 0.5, n_users).astype(np.float32)
    users[:, :factors] = rng.standard_normal((n_users, factors), dtype=np.float32) / np.sqrt(factors)
    users[:, :factors] *= activity[:, None]
    users[:, factors] = 1.0
    return users, items


def sgemm_burst(threads: int, n: int = 2048, repeats: int = 2) -> tuple[float, float]:
    """A short float32 matmul peak, run the way the kernel uses the cores: ``threads`` Python threads,
    each a single-threaded numpy sgemm on its own matrices, side by side. Returns the best
    aggregate wall rate and the best rate per CPU-second x threads (GFLOP/s)."""
    rng = np.random.default_rng(2)
    mats = [(rng.standard_normal((n, n), dtype=np.float32), np.empty((n, n), dtype=np.float32))
            for _ in range(threads)]

    def work(i: int) -> None:
        a, c = mats[i]
        np.matmul(a, a, out=c)

    flops = threads * 2.0 * n**3
    best_wall = best_cpu = float("inf")
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            list(pool.map(work, range(threads)))
            best_wall = min(best_wall, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
    return flops / best_wall / 1e9, threads * flops / best_cpu / 1e9


def sgemm_peak_blas(n: int = 4096, repeats: int = 2) -> float:
    """One large numpy sgemm on BLAS's own threads (best wall rate, GFLOP/s), for reference."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, a, out=c)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, a, out=c)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--items", type=int, default=62_423)
    parser.add_argument("--dim", type=int, default=65)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=8, help="user chunks, a peak burst around each")
    parser.add_argument("--skip-faiss", action="store_true", help="no faiss baseline (quicker)")
    args = parser.parse_args()

    threads = available_cores()
    users, items = fm_like(args.users, args.items, args.dim)
    flops = 2.0 * args.users * args.items * args.dim
    print(f"top-{args.k}: {args.users:,} users x {args.items:,} items x {args.dim} dims, "
          f"{threads} threads, load average {os.getloadavg()[0]:.2f}")

    topk_inner_product(users[:512], items[:4096], args.k)  # compile / load the numba kernels
    print(f"sgemm peak, one 4096^2 call on BLAS's threads: {sgemm_peak_blas():.1f} GFLOP/s (reference only)")

    # The machine is shared and its load swings within seconds, so the kernel runs in chunks of users
    # with a short peak burst before and after each; each chunk is judged against the better of its
    # two bursts (the strict choice), and the figure reported is the median over chunks.
    bounds = np.linspace(0, args.users, args.chunks + 1).astype(int)
    scores = np.empty((args.users, args.k), np.float32)
    idx = np.empty((args.users, args.k), np.int64)
    burst = sgemm_burst(threads)
    seconds = cpu_seconds = 0.0
    shares, cpu_shares, peaks = [], [], [burst[0]]
    for lo, hi in itertools.pairwise(bounds.tolist()):
        t, c = time.perf_counter(), time.process_time()
        scores[lo:hi], idx[lo:hi] = topk_inner_product(users[lo:hi], items, args.k, threads=threads)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        seconds += dt
        cpu_seconds += dc
        nxt = sgemm_burst(threads)
        chunk_flops = 2.0 * (hi - lo) * args.items * args.dim
        shares.append(chunk_flops / dt / 1e9 / max(burst[0], nxt[0]))
        cpu_shares.append(threads * chunk_flops / dc / 1e9 / max(burst[1], nxt[1]))
        peaks.append(nxt[0])
        burst = nxt
    rate = flops / seconds / 1e9
    share = float(np.median(shares))
    cpu_share = float(np.median(cpu_shares))
    print(f"sgemm peak bursts ({threads} threads x single-threaded 2048^2): "
          f"{min(peaks):.1f} .. {max(peaks):.1f} GFLOP/s (median {np.median(peaks):.1f})")
    print(f"topk_inner_product:       {seconds:8.2f} s   {rate:8.1f} GFLOP/s   "
          f"share of the adjacent peak: median {share:.1%} (chunks {min(shares):.1%} .. {max(shares):.1%}); "
          f"per CPU-second: {cpu_share:.1%}")

    faiss_seconds = float("nan")
    if not args.skip_faiss:
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(args.dim)
        index.add(items)
        before = sgemm_burst(threads)[0]
        t = time.perf_counter()
        f_scores, f_idx = index.search(users, args.k)
        faiss_seconds = time.perf_counter() - t
        f_peak = max(before, sgemm_burst(threads)[0])
        f_rate = flops / faiss_seconds / 1e9
        print(f"faiss IndexFlatIP.search: {faiss_seconds:8.2f} s   {f_rate:8.1f} GFLOP/s   "
              f"{f_rate / f_peak:.1%} of the adjacent peak   (the kernel took {seconds / faiss_seconds:.2f}x "
              f"its time)")
        same = float(np.mean(idx == f_idx))
        same_sets = float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(idx[:5000], f_idx[:5000],
                                                                              strict=True)])) / args.k
        score_diff = float(np.max(np.abs(scores - f_scores)))
        print(f"agreement with faiss: {same:.5%} of slots, {same_sets:.5%} of neighbour sets "
              f"(first 5,000 users), max score difference {score_diff:.2e}")
    print(f"RESULT seconds={seconds:.3f} peak_share={share:.3f} faiss_seconds={faiss_seconds:.3f} "
          f"cpu_peak_share={cpu_share:.3f}")


if __name__ == "__main__":
    main()
