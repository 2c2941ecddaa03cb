"""Triton backward kernels of fused Cog Attention (derivation and tiling: cog_triton_kernels.py).

Two schemes, chosen per length bucket by ``cog_triton.BWD_MODE``:

- ``"recompute"``: a dq kernel (one program per query block, loop over keys; it also writes
  ``DELTA = rowsum(dO * O)``), then a dk/dv kernel (one program per key block, loop over queries).
  The scores are computed twice, no atomics.
- ``"atomic"``: a small kernel writes DELTA and zeroes a float32 dq buffer, then the dk/dv kernel
  also adds ``scale * dS K`` into that buffer with atomics (FA2/FA3's scheme: scores computed once).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cog_triton_kernels import _keep, _row_vec, _signed, _store_tile, _tile


@triton.jit
def _dq_tile(dq, q, do, lse, delta, K, V, MASK, rows, cols, offs_d, skn, skd, svn, svd, smm, smn,
             LQ, LK, HEAD_D, qk_scale,
             CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr):
    k = _tile(K, cols, skn, offs_d, skd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    v = _tile(V, cols, svn, offs_d, svd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    s = tl.dot(q, tl.trans(k))
    a = tl.abs(s) * qk_scale
    if HAS_MASK:
        a = tl.where(_keep(MASK, rows, smm, cols, smn, LQ, LK, CHECK_ROWS or CHECK_COLS), a, float("-inf"))
    w = _signed(tl.exp2(a - lse[:, None]), s)  # padded keys: s == 0 -> w == 0
    dw = tl.dot(do, tl.trans(v))
    ds = w * (_signed(dw, s) - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k)


@triton.jit
def _dq_rows(Q, K, V, OUT, DO, DQ, LSE, DELTA, MASK, row0,
             sqm, sqd, skn, skd, svn, svd, som, sod, sdom, sdod, sdqm, sdqd, smm, smn,
             LQ, LK, HEAD_D, qk_scale, scale,
             BM: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, BLOCK_D: tl.constexpr,
             CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr):
    rows = row0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q, rows, sqm, offs_d, sqd, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    o = _tile(OUT, rows, som, offs_d, sod, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    do = _tile(DO, rows, sdom, offs_d, sdod, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = _row_vec(LSE, rows, LQ, float("inf"), CHECK_ROWS)
    if CHECK_ROWS:
        tl.store(DELTA + rows, delta, mask=rows < LQ)
    else:
        tl.store(DELTA + rows, delta)
    dq = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    lk_full = LK - LK % BLOCK_N
    for start_n in range(0, lk_full, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, K, V, MASK, rows, start_n + tl.arange(0, BLOCK_N), offs_d,
                      skn, skd, svn, svd, smm, smn, LQ, LK, HEAD_D, qk_scale, CHECK_ROWS, False, EVEN_D, HAS_MASK)
    if TAIL_N > 0:
        dq = _dq_tile(dq, q, do, lse, delta, K, V, MASK, rows, lk_full + tl.arange(0, TAIL_N), offs_d,
                      skn, skd, svn, svd, smm, smn, LQ, LK, HEAD_D, qk_scale, CHECK_ROWS, True, EVEN_D, HAS_MASK)
    _store_tile(DQ, dq * scale, rows, sdqm, offs_d, sdqd, LQ, HEAD_D, CHECK_ROWS, EVEN_D)


@triton.jit
def _cog_bwd_dq_kernel(
    Q, K, V, OUT, DO, DQ, LSE, DELTA, MASK,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, som, sod,
    sdob, sdoh, sdom, sdod,
    sdqb, sdqh, sdqm, sdqd,
    smb, smh, smm, smn,
    H, LQ, LK, HEAD_D,
    qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TAIL_M: tl.constexpr, TAIL_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """dq for one block of query rows; also writes DELTA = rowsum(dO * O) for the dk/dv kernel."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile may pass Python floats as fp64
    scale = tl.cast(scale, tl.float32)
    b = pid_bh // H
    h = pid_bh % H
    row0 = pid_m * BLOCK_M
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    OUT += b * sob + h * soh
    DO += b * sdob + h * sdoh
    DQ += b * sdqb + h * sdqh
    LSE += pid_bh * LQ
    DELTA += pid_bh * LQ
    MASK += b * smb + h * smh
    if TAIL_M > 0:
        if row0 + BLOCK_M > LQ:
            _dq_rows(Q, K, V, OUT, DO, DQ, LSE, DELTA, MASK, row0,
                     sqm, sqd, skn, skd, svn, svd, som, sod, sdom, sdod, sdqm, sdqd, smm, smn,
                     LQ, LK, HEAD_D, qk_scale, scale, TAIL_M, BLOCK_N, TAIL_N, BLOCK_D, True, EVEN_D, HAS_MASK)
        else:
            _dq_rows(Q, K, V, OUT, DO, DQ, LSE, DELTA, MASK, row0,
                     sqm, sqd, skn, skd, svn, svd, som, sod, sdom, sdod, sdqm, sdqd, smm, smn,
                     LQ, LK, HEAD_D, qk_scale, scale, BLOCK_M, BLOCK_N, TAIL_N, BLOCK_D, False, EVEN_D, HAS_MASK)
    else:
        _dq_rows(Q, K, V, OUT, DO, DQ, LSE, DELTA, MASK, row0,
                 sqm, sqd, skn, skd, svn, svd, som, sod, sdom, sdod, sdqm, sdqd, smm, smn,
                 LQ, LK, HEAD_D, qk_scale, scale, BLOCK_M, BLOCK_N, TAIL_N, BLOCK_D, False, EVEN_D, HAS_MASK)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQACC, MASK, rows, cols, offs_d,
               sqm, sqd, sdom, sdod, saqm, saqd, smm, smn, LQ, LK, HEAD_D, qk_scale, scale,
               CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr, EVEN_D: tl.constexpr,
               HAS_MASK: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    q = _tile(Q, rows, sqm, offs_d, sqd, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    do = _tile(DO, rows, sdom, offs_d, sdod, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    lse = _row_vec(LSE, rows, LQ, float("inf"), CHECK_ROWS)
    delta = _row_vec(DELTA, rows, LQ, 0.0, CHECK_ROWS)
    st = tl.dot(k, tl.trans(q))  # (keys, queries) = S^T, unscaled
    at = tl.abs(st) * qk_scale
    if HAS_MASK:
        at = tl.where(_keep(MASK, cols, smn, rows, smm, LK, LQ, CHECK_ROWS or CHECK_COLS), at, float("-inf"))
    wt = _signed(tl.exp2(at - lse[None, :]), st)
    dv += tl.dot(wt.to(do.dtype), do)
    dwt = tl.dot(v, tl.trans(do))  # (dO V^T)^T
    dst = wt * (_signed(dwt, st) - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q)
    if ATOMIC_DQ:
        dq_part = tl.dot(tl.trans(dst.to(k.dtype)), k) * scale  # (queries, BLOCK_D)
        ok = (rows < LQ)[:, None] & (offs_d < HEAD_D)[None, :]
        tl.atomic_add(DQACC + rows[:, None] * saqm + offs_d[None, :] * saqd, dq_part, mask=ok, sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_cols(Q, K, V, DO, DK, DV, DQACC, LSE, DELTA, MASK, col0,
               sqm, sqd, skn, skd, svn, svd, sdom, sdod, sdkn, sdkd, sdvn, sdvd, saqm, saqd, smm, smn,
               LQ, LK, HEAD_D, qk_scale, scale,
               BN: tl.constexpr, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_COLS: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    cols = col0 + tl.arange(0, BN)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tile(K, cols, skn, offs_d, skd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    v = _tile(V, cols, svn, offs_d, svd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    dk = tl.zeros([BN, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BN, BLOCK_D], dtype=tl.float32)
    lq_full = LQ - LQ % BLOCK_M
    for start_m in range(0, lq_full, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQACC, MASK, start_m + tl.arange(0, BLOCK_M), cols,
                            offs_d, sqm, sqd, sdom, sdod, saqm, saqd, smm, smn, LQ, LK, HEAD_D, qk_scale, scale,
                            False, CHECK_COLS, EVEN_D, HAS_MASK, ATOMIC_DQ)
    if TAIL_M > 0:
        dk, dv = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQACC, MASK, lq_full + tl.arange(0, TAIL_M), cols,
                            offs_d, sqm, sqd, sdom, sdod, saqm, saqd, smm, smn, LQ, LK, HEAD_D, qk_scale, scale,
                            True, CHECK_COLS, EVEN_D, HAS_MASK, ATOMIC_DQ)
    _store_tile(DK, dk * scale, cols, sdkn, offs_d, sdkd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    _store_tile(DV, dv, cols, sdvn, offs_d, sdvd, LK, HEAD_D, CHECK_COLS, EVEN_D)


@triton.jit
def _cog_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, DQACC, LSE, DELTA, MASK,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdob, sdoh, sdom, sdod,
    sdkb, sdkh, sdkn, sdkd,
    sdvb, sdvh, sdvn, sdvd,
    saqb, saqh, saqm, saqd,
    smb, smh, smm, smn,
    H, LQ, LK, HEAD_D,
    qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TAIL_M: tl.constexpr, TAIL_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """dk and dv for one block of keys, looping over query blocks (transposed scores); with
    ATOMIC_DQ also adds ``scale * dS K`` into the float32 buffer DQACC."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile may pass Python floats as fp64
    scale = tl.cast(scale, tl.float32)
    b = pid_bh // H
    h = pid_bh % H
    col0 = pid_n * BLOCK_N
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    DO += b * sdob + h * sdoh
    DK += b * sdkb + h * sdkh
    DV += b * sdvb + h * sdvh
    DQACC += b * saqb + h * saqh
    LSE += pid_bh * LQ
    DELTA += pid_bh * LQ
    MASK += b * smb + h * smh
    if TAIL_N > 0:
        if col0 + BLOCK_N > LK:
            _dkdv_cols(Q, K, V, DO, DK, DV, DQACC, LSE, DELTA, MASK, col0,
                       sqm, sqd, skn, skd, svn, svd, sdom, sdod, sdkn, sdkd, sdvn, sdvd, saqm, saqd, smm, smn,
                       LQ, LK, HEAD_D, qk_scale, scale, TAIL_N, BLOCK_M, TAIL_M, BLOCK_D, True, EVEN_D, HAS_MASK,
                       ATOMIC_DQ)
        else:
            _dkdv_cols(Q, K, V, DO, DK, DV, DQACC, LSE, DELTA, MASK, col0,
                       sqm, sqd, skn, skd, svn, svd, sdom, sdod, sdkn, sdkd, sdvn, sdvd, saqm, saqd, smm, smn,
                       LQ, LK, HEAD_D, qk_scale, scale, BLOCK_N, BLOCK_M, TAIL_M, BLOCK_D, False, EVEN_D, HAS_MASK,
                       ATOMIC_DQ)
    else:
        _dkdv_cols(Q, K, V, DO, DK, DV, DQACC, LSE, DELTA, MASK, col0,
                   sqm, sqd, skn, skd, svn, svd, sdom, sdod, sdkn, sdkd, sdvn, sdvd, saqm, saqd, smm, smn,
                   LQ, LK, HEAD_D, qk_scale, scale, BLOCK_N, BLOCK_M, TAIL_M, BLOCK_D, False, EVEN_D, HAS_MASK,
                   ATOMIC_DQ)


@triton.jit
def _cog_bwd_delta_kernel(
    OUT, DO, DELTA, DQACC,
    sob, soh, som, sod,
    sdob, sdoh, sdom, sdod,
    saqb, saqh, saqm, saqd,
    H, LQ, HEAD_D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """DELTA = rowsum(dO * O) in float32, and zeros into the float32 dq buffer (atomic mode)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _tile(OUT + b * sob + h * soh, rows, som, offs_d, sod, LQ, HEAD_D, True, False)
    do = _tile(DO + b * sdob + h * sdoh, rows, sdom, offs_d, sdod, LQ, HEAD_D, True, False)
    tl.store(DELTA + pid_bh * LQ + rows, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=rows < LQ)
    zero = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    _store_tile(DQACC + b * saqb + h * saqh, zero, rows, saqm, offs_d, saqd, LQ, HEAD_D, True, False)
