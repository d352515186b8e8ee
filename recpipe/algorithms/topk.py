"""Exact top-k maximum inner product search: blocked float32 GEMM fused with a nearly free selection.

The score matrix of a batch recommendation job (users x items) is far too large to materialise
(162,541 x 62,423 floats is 40 GB), and faiss's flat index spends a good share of its time outside
the matrix product. Here, per block of ``user_block`` users:

1. **Seed.** The first ``seed_items`` items (items are visited by descending norm, so these are the
   likeliest high scorers) are scored in one user-major tile; per user, the values above a pivot
   (drawn from 16 of them so that about k + k/8 are above it) fill the candidate buffer, and the
   pivot becomes the user's threshold.
2. **Scan.** The remaining items come in tiles of ``item_block`` rows, each one BLAS ``sgemm``
   written item-major (``tile[item, user]``), small enough to stay in the core's L2 cache. A numba
   kernel reads the tile while it is hot: for every run of 16 items it takes the element-wise maximum
   over the 16 rows (contiguous, vectorised: a few instructions per 16 scores) and compares it with
   each user's threshold. Only users whose maximum beats their threshold (a few hundred of the
   ~4,000 runs per user, nearly all early on) look at the 16 scores, appending those above the
   threshold to a candidate buffer (branch-free); a full buffer is cut back the same way, around a
   sampled pivot in one branch-free pass, which raises the threshold. (A quickselect, whose
   data-dependent branches mispredict on every other element, cost ~2 us per cut; it remains the
   fallback when the sample misleads.)
3. **Finish.** The best k of each buffer (a cut, then a quickselect on ~k values), sorted with one
   integer sort of (score bits, item index) keys.

Workers are threads (BLAS and the nogil kernels release the GIL), each owning its tiles and taking
user blocks in turn; BLAS is limited to one thread meanwhile, so both cores run sgemm + selection
without oversubscription.

The result is exact: an item is dropped only when at least k held scores are strictly above it.
Only the order among equal scores may differ from faiss's ``IndexFlatIP`` (ties come by ascending
item index here), and scores may differ from faiss's in the last bits (the sgemm blocking differs).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np
import numpy.typing as npt

from recpipe.algorithms.container import available_cores

__all__ = ["topk_inner_product"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

_SIGN = np.uint64(0x80000000)
_LOW = np.uint64(0xFFFFFFFF)
_RUN = 16  # items per maximum test: one AVX-512 register's worth of float32 per user lane

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: object | None = None


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while any top-k search runs; restore it after the last one ends.

    threadpoolctl's limits are process-wide; two searches running at once (the local engine runs the
    eval and serve variants in parallel) must not restore each other's saved state in the wrong
    order, hence the reference count.
    """
    global _blas_users, _blas_limiter
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct, only slower: each BLAS call may spread over every core
        yield
        return

    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()  # type: ignore[attr-defined]
                _blas_limiter = None


# --- compiled kernels ------------------------------------------------------------------------------
# (excluded from coverage: numba compiles them, so the Python bodies never run under the tracer)


@numba.njit(cache=True, nogil=True)
def _partition_top(vals: F32, idx: I32, n: int, k: int) -> None:  # pragma: no cover
    """Reorder ``vals[:n]`` (and ``idx`` alongside) so that its k largest come first (quickselect)."""
    lo = 0
    hi = n - 1
    target = k - 1
    while lo < hi:
        mid = (lo + hi) // 2
        # median of three keeps sorted or constant runs from going quadratic
        a = vals[lo]
        b = vals[mid]
        c = vals[hi]
        if (a >= b) == (b >= c):
            pivot = b
        elif (b >= a) == (a >= c):
            pivot = a
        else:
            pivot = c
        i = lo
        j = hi
        while i <= j:
            while vals[i] > pivot:
                i += 1
            while vals[j] < pivot:
                j -= 1
            if i <= j:
                tv = vals[i]
                vals[i] = vals[j]
                vals[j] = tv
                ti = idx[i]
                idx[i] = idx[j]
                idx[j] = ti
                i += 1
                j -= 1
        # now vals[lo..j] >= pivot >= vals[i..hi], and anything strictly between equals the pivot
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            return


@numba.njit(cache=True, nogil=True)
def _min_of_first(vals: F32, k: int) -> np.float32:  # pragma: no cover
    m = vals[0]
    for t in range(1, k):
        if vals[t] < m:
            m = vals[t]
    return m


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _mx(a: np.float32, b: np.float32) -> np.float32:  # pragma: no cover
    return a if a > b else b


@numba.njit(cache=True, nogil=True, fastmath=True)
def _run_max(tile: F32, j0: int, n_users: int, acc: F32) -> None:  # pragma: no cover
    """``acc[u] = max(tile[j0:j0 + 16, u])``, four rows per pass to spare loads and stores of acc."""
    r0 = tile[j0]
    r1 = tile[j0 + 1]
    r2 = tile[j0 + 2]
    r3 = tile[j0 + 3]
    for u in range(n_users):
        acc[u] = _mx(_mx(r0[u], r1[u]), _mx(r2[u], r3[u]))
    for j in range(j0 + 4, j0 + _RUN, 4):
        r0 = tile[j]
        r1 = tile[j + 1]
        r2 = tile[j + 2]
        r3 = tile[j + 3]
        for u in range(n_users):
            acc[u] = _mx(acc[u], _mx(_mx(r0[u], r1[u]), _mx(r2[u], r3[u])))


@numba.njit(cache=True, nogil=True)
def _seed(
    tile: F32, n_cols: int, buf_val: F32, buf_idx: I32, buf_n: I64, thresh: F32, k: int, sv: F32, si: I32,
    sv2: F32, si2: I32,
) -> None:  # pragma: no cover
    """From a user-major tile of the first items: a little over each user's best k into its buffer,
    and a threshold below which no item can make that user's top k."""
    room = buf_val.shape[1] - _RUN
    for u in range(tile.shape[0]):
        row = tile[u]
        for j in range(n_cols):
            sv[j] = row[j]
            si[j] = j
        n = n_cols
        t = np.float32(-np.inf)
        if n > k:
            n, t = _cut_back(sv, si, n, k, sv2, si2)
            if n > room:
                _partition_top(sv, si, n, k)
                n = k
                t = _min_of_first(sv, k)
        thresh[u] = t
        for j in range(n):
            buf_val[u, j] = sv[j]
            buf_idx[u, j] = si[j]
        buf_n[u] = n


@numba.njit(cache=True, nogil=True)
def _cut_back(
    bv: F32, bi: I32, n: int, k: int, sv: F32, si: I32
) -> tuple[int, np.float32]:  # pragma: no cover
    """Shrink a full buffer to a little over its best k; return the new count and threshold.

    One branch-free pass around a pivot drawn from 16 of the values (aiming to keep ~k + k/8) costs
    a fraction of a quickselect, whose data-dependent branches mispredict on every other element.
    The threshold returned is the pivot: at least k values are above it, so it is a valid lower
    bound of the k-th best. Should the sample mislead (fewer than k kept, or too little dropped),
    an exact quickselect does the job.
    """
    m = min(16, n)
    step = n // m
    for t in range(m):
        sv[t] = bv[t * step]
    # insertion sort of the sample, descending
    for t in range(1, m):
        v = sv[t]
        s = t
        while s > 0 and sv[s - 1] < v:
            sv[s] = sv[s - 1]
            s -= 1
        sv[s] = v
    rank = min(m - 1, (m * (k + k // 8)) // n)
    pivot = sv[rank]
    kept = 0
    for t in range(n):
        v = bv[t]
        sv[kept] = v
        si[kept] = bi[t]
        kept += v > pivot
    if k <= kept <= n - n // 4:
        for t in range(kept):
            bv[t] = sv[t]
            bi[t] = si[t]
        return kept, pivot
    _partition_top(bv, bi, n, k)
    return k, _min_of_first(bv, k)


@numba.njit(cache=True, nogil=True, inline="always")
def _append(
    tile: F32, j0: int, j1: int, u: int, col_offset: int, buf_val: F32, buf_idx: I32, buf_n: I64,
    thresh: F32, k: int, cap: int, sv: F32, si: I32,
) -> None:  # pragma: no cover
    t = thresh[u]
    n = buf_n[u]
    if n > cap:
        n, t = _cut_back(buf_val[u], buf_idx[u], n, k, sv, si)
        thresh[u] = t
    for j in range(j0, j1):
        v = tile[j, u]
        buf_val[u, n] = v
        buf_idx[u, n] = col_offset + j
        n += v > t
    buf_n[u] = n


@numba.njit(cache=True, nogil=True)
def _scan(
    tile: F32, col_offset: int, buf_val: F32, buf_idx: I32, buf_n: I64, thresh: F32, k: int, acc: F32,
    hits: I64, sv: F32, si: I32,
) -> None:  # pragma: no cover
    """Feed an item-major tile (``tile[j, u]`` = score of item ``col_offset + j`` for user u)."""
    n_items, n_users = tile.shape
    cap = buf_val.shape[1] - _RUN  # room for one whole run past the cut-back point
    n_full = n_items - n_items % _RUN
    for j0 in range(0, n_full, _RUN):
        _run_max(tile, j0, n_users, acc)
        # the users to look at, gathered without a branch per user
        n_hits = 0
        for u in range(n_users):
            hits[n_hits] = u
            n_hits += acc[u] > thresh[u]
        # Inlined by hand on purpose: as a call (even numba-inlined) this loop runs 20% slower,
        # and the constant 16-step inner loop matters too.
        for h in range(n_hits):
            u = hits[h]
            t = thresh[u]
            n = buf_n[u]
            if n > cap:
                n, t = _cut_back(buf_val[u], buf_idx[u], n, k, sv, si)
                thresh[u] = t
            # branch-free append: always write, advance only past the survivors
            for j in range(j0, j0 + _RUN):
                v = tile[j, u]
                buf_val[u, n] = v
                buf_idx[u, n] = col_offset + j
                n += v > t
            buf_n[u] = n
    if n_full < n_items:  # the short last run: every user looks
        for u in range(n_users):
            _append(tile, n_full, n_items, u, col_offset, buf_val, buf_idx, buf_n, thresh, k, cap, sv, si)


@numba.njit(cache=True, nogil=True)
def _finish(
    buf_val: F32, buf_idx: I32, buf_n: I64, k: int, order: I64, out_val: F32, out_idx: I64, row0: int,
    sv: F32, si: I32,
) -> None:  # pragma: no cover
    """Best k of each buffer, by descending score (equal scores by ascending original item index)."""
    keys = np.empty(buf_val.shape[1], dtype=np.uint64)
    for u in range(buf_n.shape[0]):
        n = buf_n[u]
        bv = buf_val[u]
        bi = buf_idx[u]
        if n > k + k // 2:  # a cheap cut first: the exact quickselect then sees ~k values
            n, _ = _cut_back(bv, bi, n, k, sv, si)
        if n > k:
            _partition_top(bv, bi, n, k)
            n = k
        # one integer sort: high word = the score's bits flipped so that larger floats sort first,
        # low word = the original item index (ties by ascending index)
        bits = bv[:n].view(np.uint32)
        for t in range(n):
            b = np.uint64(bits[t])
            desc = b if b >= _SIGN else _SIGN - np.uint64(1) - b
            keys[t] = (desc << np.uint64(32)) | np.uint64(order[bi[t]])
        kk = np.sort(keys[:n])
        r = row0 + u
        ob = out_val[r].view(np.uint32)
        for t in range(n):
            out_idx[r, t] = np.int64(kk[t] & _LOW)
            hi = kk[t] >> np.uint64(32)
            ob[t] = np.uint32(hi if hi >= _SIGN else _SIGN - np.uint64(1) - hi)


# --- driver ----------------------------------------------------------------------------------------


def topk_inner_product(
    queries: npt.ArrayLike,
    items: npt.ArrayLike,
    k: int,
    *,
    threads: int | None = None,
    user_block: int = 256,
    item_block: int = 512,
    seed_items: int = 512,
) -> tuple[F32, I64]:
    """The k items of largest inner product with each query, exactly.

    Returns ``(scores, indices)``, both ``(n_queries, k)``, each row by descending score (the order
    of faiss's ``IndexFlatIP.search``). With fewer than k items the remaining slots hold ``-inf``
    and ``-1``, as faiss's do.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    x = np.asarray(items, dtype=np.float32)
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(
            f"queries and items must be 2-d with the same number of columns, got {q.shape} and {x.shape}."
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    n_q, n_items = q.shape[0], x.shape[0]
    if n_items >= 2**31:
        raise ValueError(f"At most 2**31 - 1 items are supported, got {n_items}.")
    out_val = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_idx = np.full((n_q, k), -1, dtype=np.int64)
    if n_q == 0 or n_items == 0:
        return out_val, out_idx

    # Visit items by descending norm: high-norm items tend to score high, so thresholds rise early
    # and later runs are rejected wholesale, whatever order the catalogue is stored in.
    order = np.argsort(-np.einsum("ij,ij->i", x, x), kind="stable").astype(np.int64)
    xp = np.ascontiguousarray(x[order])
    qt = np.ascontiguousarray(q.T)
    user_block = max(1, min(user_block, n_q))
    n_seed = min(max(seed_items, k), n_items)
    item_block = max(_RUN, item_block)
    seed_t = np.ascontiguousarray(xp[:n_seed].T)
    cap = 2 * k + _RUN
    starts = range(0, n_q, user_block)
    n_threads = max(1, min(threads or available_cores(), len(starts)))
    local = threading.local()

    def run_block(u0: int) -> None:
        u1 = min(u0 + user_block, n_q)
        nb = u1 - u0
        st = getattr(local, "state", None)
        if st is None:
            st = (
                np.empty(user_block * max(n_seed, item_block), dtype=np.float32),
                np.empty((user_block, cap), dtype=np.float32),
                np.empty((user_block, cap), dtype=np.int32),
                np.empty(user_block, dtype=np.float32),
                np.empty(max(n_seed, cap), dtype=np.float32),
                np.empty(max(n_seed, cap), dtype=np.int32),
                np.empty(user_block, dtype=np.int64),
                np.empty(max(n_seed, cap), dtype=np.float32),
                np.empty(max(n_seed, cap), dtype=np.int32),
            )
            local.state = st
        flat, buf_val, buf_idx, acc, sv, si, hits, sv2, si2 = st
        buf_n = np.zeros(nb, dtype=np.int64)
        thresh = np.empty(nb, dtype=np.float32)
        seed_tile = flat[: nb * n_seed].reshape(nb, n_seed)
        np.matmul(q[u0:u1], seed_t, out=seed_tile)
        _seed(seed_tile, n_seed, buf_val, buf_idx, buf_n, thresh, k, sv, si, sv2, si2)
        qb_t = qt[:, u0:u1]
        for i0 in range(n_seed, n_items, item_block):
            i1 = min(i0 + item_block, n_items)
            tile = flat[: (i1 - i0) * nb].reshape(i1 - i0, nb)
            np.matmul(xp[i0:i1], qb_t, out=tile)
            _scan(tile, i0, buf_val, buf_idx, buf_n, thresh, k, acc, hits, sv, si)
        _finish(buf_val, buf_idx, buf_n, k, order, out_val, out_idx, u0, sv, si)

    with _single_threaded_blas():
        if n_threads == 1:
            for u0 in starts:
                run_block(u0)
        else:
            with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="topk") as pool:
                for _ in pool.map(run_block, starts):
                    pass
    return out_val, out_idx
