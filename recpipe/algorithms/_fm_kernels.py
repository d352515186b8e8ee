"""Numba kernels of the Factorization Machines stand-in: minibatch Adam, Hogwild across threads.

The update is the one the built-in algorithm performs (an MXNet module trained with Adam and
per-parameter-group learning rates and weight decays, sparse "lazy" updates): for each minibatch

    g      = rescale_grad * dloss/dparam + wd * param        (only rows the batch touches)
    g      = clip(g, -clip_gradient, clip_gradient)          (when clip_gradient >= 0)
    m      = beta1 * m + (1 - beta1) * g
    v      = beta2 * v + (1 - beta2) * g^2
    param -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)

where t is the global step (minibatches so far) and dloss/dscore is ``score - y`` for the regressor
(squared loss / 2) and ``sigmoid(score) - y`` for the binary classifier (log loss).

Every thread runs :func:`train_batches` on its own share of the epoch's minibatches at the same
time as the others (``nogil``): each minibatch's gradient is computed from the parameters as they
are, then applied; updates of two threads that touch the same row may interleave (Hogwild). Single
threaded, the result is exactly sequential minibatch Adam and deterministic.

Layout: ``P`` is ``(n_features, 3, k)`` float32 holding, per feature row, the factors ``V``, Adam's
first moment and second moment side by side, so one feature's update touches one contiguous
``3 * k * 4``-byte block (one cache-miss burst instead of three on models larger than the cache).
``W`` is ``(n_features, 3)`` (linear weight, moments), ``B`` is ``(3,)`` (bias, moments).

Cost (rows of ~44 non-zeros, k=64: the pipeline's rows with the sequence context): per row the
forward pass reads every non-zero's factor row (four features per pass over ``q``, so that the
stores to ``q`` do not serialise the loop), the backward pass adds ``g x_j q`` to the feature's
gradient row (the ``- g x_j^2 V_j`` part is summed as one scalar per feature and applied in the
update, so the backward pass reads no factors), and each minibatch ends with one Adam update per
touched feature, which also zeroes the gradient rows it consumed (no separate clearing pass).
Gradient rows are numbered in order of first touch, so the buffers stay as small as a minibatch's
features, whatever the model's size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

REGRESSOR = 0
BINARY_CLASSIFIER = 1

# Indices into the float64 hyperparameter vector passed to the kernel.
HP_BIAS_LR, HP_LINEAR_LR, HP_FACTORS_LR = 0, 1, 2
HP_BIAS_WD, HP_LINEAR_WD, HP_FACTORS_WD = 3, 4, 5
HP_BETA1, HP_BETA2, HP_EPS, HP_RESCALE, HP_CLIP = 6, 7, 8, 9, 10
N_HP = 11

# Rows ahead whose parameters are prefetched: on models larger than the cache the kernel is bound
# by the latency of random row reads, which prefetching a few samples ahead overlaps.
_PREFETCH_AHEAD = 6
_FLOATS_PER_LINE = 16
_GATHER_AHEAD = 16


@intrinsic
def _prefetch_intrinsic(typingctx, arr, offset):  # type: ignore[no-untyped-def]
    """Hint the CPU to fetch the cache line holding flat element ``offset`` of contiguous ``arr``."""
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None
    sig = types.void(arr, offset)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], signature.args[1], types.intp)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, rw=1 write, locality=3 keep in all levels, cache type=1 data)
        builder.call(fn, [builder.bitcast(builder.gep(ary.data, [off]), i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


_prefetch: Any = _prefetch_intrinsic  # called from kernels as _prefetch(array, flat_offset)


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def train_batches(
    indptr: np.ndarray,  # int64 (n_rows + 1)
    indices: np.ndarray,  # int32 (nnz)
    data: np.ndarray,  # float32 (nnz)
    y: np.ndarray,  # float32 (n_rows)
    batch_order: np.ndarray,  # int64: the epoch's minibatch numbers, in the order they are visited
    batch_size: int,
    first: int,  # this thread visits batch_order[first::stride]
    stride: int,
    step0: int,  # global Adam steps taken before this epoch
    P: np.ndarray,  # float32 (n_features, 3, k)
    W: np.ndarray,  # float32 (n_features, 3)
    B: np.ndarray,  # float32 (3,)
    hp: np.ndarray,  # float64 (N_HP,)
    task: int,
    prefetch: bool,  # hint the rows ahead into the cache (worth it once the model outgrows it)
    mark: np.ndarray,  # int64 (n_features): last step that touched the feature (thread-private)
    slot: np.ndarray,  # int32 (n_features): its row in the gradient buffers (thread-private)
    touched: np.ndarray,  # int32 (max touched per batch): the features the batch touches, by slot
    G: np.ndarray,  # float32 (max touched per batch, k): sum of g*x*q, zero between batches
    gw: np.ndarray,  # float32 (max touched per batch): sum of g*x, zero between batches
    gx2: np.ndarray,  # float32 (max touched per batch): sum of g*x^2, zero between batches
    q: np.ndarray,  # float32 (k): the row's sum of V_j x_j
    sq: np.ndarray,  # float32 (k): the row's sum of (V_j x_j)^2
    stats: np.ndarray,  # float64 (2,): sum of training loss, rows seen (accumulated)
) -> None:
    n_rows = y.shape[0]
    k = P.shape[2]
    row = 3 * k
    lr_b, lr_w, lr_v = hp[HP_BIAS_LR], hp[HP_LINEAR_LR], hp[HP_FACTORS_LR]
    wd_b, wd_w, wd_v = hp[HP_BIAS_WD], hp[HP_LINEAR_WD], hp[HP_FACTORS_WD]
    beta1, beta2, eps = hp[HP_BETA1], hp[HP_BETA2], hp[HP_EPS]
    rescale, clip = hp[HP_RESCALE], hp[HP_CLIP]
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    ob1 = np.float32(1.0 - beta1)
    ob2 = np.float32(1.0 - beta2)
    eps32 = np.float32(eps)
    wdv32 = np.float32(wd_v)
    resc32 = np.float32(rescale)
    do_clip = clip >= 0.0
    clip32 = np.float32(clip)
    loss_sum = 0.0
    seen = 0
    n_batches = batch_order.shape[0]
    for pos in range(first, n_batches, stride):
        t = step0 + pos + 1
        start = batch_order[pos] * batch_size
        end = min(start + batch_size, n_rows)
        nu = 0
        gb = np.float32(0.0)
        for r in range(start, end):
            if prefetch and r + _PREFETCH_AHEAD < end:
                ahead = r + _PREFETCH_AHEAD
                for jj in range(indptr[ahead], indptr[ahead + 1]):
                    j = indices[jj]
                    _prefetch(W, j * 3)
                    for f in range(0, k, _FLOATS_PER_LINE):
                        _prefetch(P, j * row + f)
            a = indptr[r]
            e = indptr[r + 1]
            # Forward. q and sq live in memory (numba keeps no array in registers), so each
            # feature's pass would wait on the previous one's stores: four features per pass
            # quarter that chain.
            score = B[0]
            for f in range(k):
                q[f] = 0.0
                sq[f] = 0.0
            for jj in range(a, e):
                score += W[indices[jj], 0] * data[jj]
            jj = a
            while jj + 3 < e:
                j1, j2, j3, j4 = indices[jj], indices[jj + 1], indices[jj + 2], indices[jj + 3]
                x1, x2, x3, x4 = data[jj], data[jj + 1], data[jj + 2], data[jj + 3]
                for f in range(k):
                    v1 = P[j1, 0, f] * x1
                    v2 = P[j2, 0, f] * x2
                    v3 = P[j3, 0, f] * x3
                    v4 = P[j4, 0, f] * x4
                    q[f] += (v1 + v2) + (v3 + v4)
                    sq[f] += (v1 * v1 + v2 * v2) + (v3 * v3 + v4 * v4)
                jj += 4
            while jj < e:
                j1 = indices[jj]
                x1 = data[jj]
                for f in range(k):
                    v1 = P[j1, 0, f] * x1
                    q[f] += v1
                    sq[f] += v1 * v1
                jj += 1
            pair = np.float32(0.0)
            for f in range(k):
                pair += q[f] * q[f] - sq[f]
            score += np.float32(0.5) * pair
            label = y[r]
            if task == REGRESSOR:
                g = score - label
                loss_sum += g * g
            else:
                z = float(score)
                if z >= 0.0:
                    prob = 1.0 / (1.0 + math.exp(-z))
                else:
                    ez = math.exp(z)
                    prob = ez / (1.0 + ez)
                loss_sum += math.log1p(math.exp(-abs(z))) + max(z, 0.0) - label * z
                g = np.float32(prob - label)
            g = g * resc32
            gb += g
            # Backward: dscore/dV_j = x_j (q - V_j x_j). The V_j x_j^2 part is kept as one scalar
            # per feature and applied in the update (V does not change within a minibatch), so
            # each non-zero adds g x_j q to its feature's row: no read of V here. The rows are
            # numbered in order of first touch (a compact buffer, whatever the model's size).
            for jj in range(a, e):
                j = indices[jj]
                x = data[jj]
                if mark[j] != t:
                    mark[j] = t
                    slot[j] = nu
                    touched[nu] = j
                    nu += 1
                u = slot[j]
                gx = g * x
                gw[u] += gx
                gx2[u] += gx * x
                for f in range(k):
                    G[u, f] += gx * q[f]
        seen += end - start
        corr = math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        step_v = np.float32(lr_v * corr)
        step_w = lr_w * corr
        # The update of every touched row, leaving its gradient buffers zero for the next batch.
        for u in range(nu):
            if prefetch and u + _PREFETCH_AHEAD < nu:
                ja = touched[u + _PREFETCH_AHEAD]
                for f in range(k, row, _FLOATS_PER_LINE):  # the moments; the factors are still cached
                    _prefetch(P, ja * row + f)
            j = touched[u]
            gj = gw[u] + wd_w * W[j, 0]
            gw[u] = 0.0
            if do_clip:
                gj = min(max(gj, -clip), clip)
            mj = beta1 * W[j, 1] + (1.0 - beta1) * gj
            vj = beta2 * W[j, 2] + (1.0 - beta2) * gj * gj
            W[j, 1] = mj
            W[j, 2] = vj
            W[j, 0] -= step_w * mj / (math.sqrt(vj) + eps)
            shrink = wdv32 - gx2[u]  # gradient = G_u - (sum g x^2) V_j + wd V_j
            gx2[u] = 0.0
            if do_clip:
                for f in range(k):
                    gf = G[u, f] + shrink * P[j, 0, f]
                    G[u, f] = 0.0
                    gf = min(max(gf, -clip32), clip32)
                    mf = b1 * P[j, 1, f] + ob1 * gf
                    vf = b2 * P[j, 2, f] + ob2 * gf * gf
                    P[j, 1, f] = mf
                    P[j, 2, f] = vf
                    P[j, 0, f] -= step_v * mf / (np.sqrt(vf) + eps32)
            else:
                for f in range(k):
                    gf = G[u, f] + shrink * P[j, 0, f]
                    G[u, f] = 0.0
                    mf = b1 * P[j, 1, f] + ob1 * gf
                    vf = b2 * P[j, 2, f] + ob2 * gf * gf
                    P[j, 1, f] = mf
                    P[j, 2, f] = vf
                    P[j, 0, f] -= step_v * mf / (np.sqrt(vf) + eps32)
        gbias = gb + wd_b * B[0]
        if do_clip:
            gbias = min(max(gbias, -clip), clip)
        mb = beta1 * B[1] + (1.0 - beta1) * gbias
        vb = beta2 * B[2] + (1.0 - beta2) * gbias * gbias
        B[1] = mb
        B[2] = vb
        B[0] -= lr_b * corr * mb / (math.sqrt(vb) + eps)
    stats[0] += loss_sum
    stats[1] += seen


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def predict_rows(
    indptr: np.ndarray,  # int64
    indices: np.ndarray,  # int32
    data: np.ndarray,  # float32
    V: np.ndarray,  # float32 (n_features, k), possibly a strided view of P[:, 0, :]
    w: np.ndarray,  # float32 (n_features,), possibly strided
    b: float,
    out: np.ndarray,  # float64 (n_rows): the raw score
) -> None:
    k = V.shape[1]
    q = np.zeros(k, dtype=np.float64)
    for r in range(out.shape[0]):
        score = b
        for f in range(k):
            q[f] = 0.0
        s2 = 0.0
        for jj in range(indptr[r], indptr[r + 1]):
            j = indices[jj]
            x = float(data[jj])
            score += w[j] * x
            for f in range(k):
                vx = V[j, f] * x
                q[f] += vx
                s2 += vx * vx
        qq = 0.0
        for f in range(k):
            qq += q[f] * q[f]
        out[r] = score + 0.5 * (qq - s2)


@njit(nogil=True, cache=True)
def scatter_rows(
    indptr: np.ndarray,  # int64: one block of CSR rows
    indices: np.ndarray,  # int32
    data: np.ndarray,  # float32
    dest: np.ndarray,  # int64: the output row of each of the block's rows
    out_indptr: np.ndarray,  # int64: the output's row pointers (already laid out)
    out_indices: np.ndarray,  # int32
    out_data: np.ndarray,  # float32
) -> None:
    """Copy each row of a CSR block to its row ``dest[i]`` of a CSR matrix laid out beforehand."""
    n = dest.shape[0]
    for i in range(n):
        if i + _GATHER_AHEAD < n:  # the destination rows are scattered: ask for them early
            oa = out_indptr[dest[i + _GATHER_AHEAD]]
            _prefetch(out_indices, oa)
            _prefetch(out_data, oa)
        o = out_indptr[dest[i]]
        for jj in range(indptr[i], indptr[i + 1]):
            out_indices[o] = indices[jj]
            out_data[o] = data[jj]
            o += 1
