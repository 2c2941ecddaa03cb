"""Triton kernels for fused Cog Attention (forward and backward), FlashAttention-2 style.

Notation (one row of queries, keys j): ``s_j = scale * q.k_j``, ``a_j = |s_j|``,
``P = softmax(a)`` over the unmasked keys, ``W = sign(s) * P``, ``O = W @ V``.

Forward: tiles over keys keeping a running maximum ``m`` of ``a`` (in base-2 units) and
accumulating ``sum_j sign(s_j) exp2(a_j - m) v_j`` and ``sum_j exp2(a_j - m)`` in float32. Because
``a >= 0`` for every unmasked key, ``m`` starts at 0 (not -inf), which also keeps fully masked
rows free of ``inf - inf``. The row log-sum-exp (base 2) is stored for the backward.

Backward (derivation, checked against float64 autograd in tests/test_kernel.py):
``dW = dO V^T``; ``dP = sign(s) * dW``; softmax backward gives
``da = P * (dP - sum_k P_k dP_k)`` and ``sum_k P_k sign_k dW_k = sum_k W_k (dO . v_k) = dO . O =: D``.
``sign()`` has zero gradient, so ``ds = sign(s) * da = W * (sign(s) * dW - D)``
(``= P*dW - W*D`` wherever ``s != 0``; exactly 0 at ``s == 0`` like autograd of ``abs``).
Then ``dq = scale * dS K``, ``dk = scale * dS^T Q``, ``dv = W^T dO``.

A key with ``s == 0`` (including zero-padded keys past the end) has ``W == 0`` and ``dS == 0``,
so the backward needs no key-bounds masking; padded query rows read ``lse = +inf`` (so P == 0).

Ragged lengths: every loop runs full ``BLOCK`` tiles without bounds checks, then one ``TAIL``-wide
tile (``TAIL`` = the remainder rounded up to a power of two >= 16, or 0 when the length divides);
the program that owns the last rows/keys of the grid uses ``TAIL`` rows. At L = 258 = 4 * 64 + 2
this computes 272 instead of 320 rows/keys per dimension. ``TAIL == BLOCK`` gives plain masked
full tiles (a config option, see cog_triton.CONFIGS).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _signed(x, s):
    # sign(s) * x, with sign(0) = 0 (as torch.sign)
    return tl.where(s > 0, x, tl.where(s < 0, -x, 0.0))


@triton.jit
def _tile(ptr, rows, srow, offs_d, sd, n_rows, HEAD_D, CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load rows x BLOCK_D, zeros past ``n_rows`` (when CHECK_ROWS) and past ``HEAD_D``."""
    ptrs = ptr + rows[:, None] * srow + offs_d[None, :] * sd
    if CHECK_ROWS or not EVEN_D:
        x = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < HEAD_D)[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _store_tile(ptr, x, rows, srow, offs_d, sd, n_rows, HEAD_D, CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    ptrs = ptr + rows[:, None] * srow + offs_d[None, :] * sd
    if CHECK_ROWS or not EVEN_D:
        tl.store(ptrs, x.to(ptr.dtype.element_ty), mask=(rows < n_rows)[:, None] & (offs_d < HEAD_D)[None, :])
    else:
        tl.store(ptrs, x.to(ptr.dtype.element_ty))


@triton.jit
def _row_vec(ptr, rows, n_rows, other, CHECK_ROWS: tl.constexpr):
    if CHECK_ROWS:
        x = tl.load(ptr + rows, mask=rows < n_rows, other=other)
    else:
        x = tl.load(ptr + rows)
    return x


@triton.jit
def _keep(ptr, rows, srow, cols, scol, n_rows, n_cols, CHECK: tl.constexpr):
    """Boolean (uint8) mask tile; out of bounds = False."""
    ptrs = ptr + rows[:, None] * srow + cols[None, :] * scol
    if CHECK:
        keep = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :], other=0)
    else:
        keep = tl.load(ptrs)
    return keep != 0


# ------------------------------------------------------------------------------------ forward


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, K, V, MASK, rows, cols, offs_d, skn, skd, svn, svd, smm, smn,
              LQ, LK, HEAD_D, qk_scale,
              CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr):
    k = _tile(K, cols, skn, offs_d, skd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    v = _tile(V, cols, svn, offs_d, svd, LK, HEAD_D, CHECK_COLS, EVEN_D)
    s = tl.dot(q, tl.trans(k))  # unscaled scores, float32
    a = tl.abs(s) * qk_scale  # |scale * s| in base-2 units
    if HAS_MASK:
        a = tl.where(_keep(MASK, rows, smm, cols, smn, LQ, LK, CHECK_ROWS or CHECK_COLS), a, float("-inf"))
    elif CHECK_COLS:
        a = tl.where((cols < LK)[None, :], a, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(a, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(a - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(_signed(p, s).to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _fwd_rows(Q, K, V, OUT, LSE, MASK, row0, sqm, sqd, skn, skd, svn, svd, som, sod, smm, smn,
              LQ, LK, HEAD_D, qk_scale,
              BM: tl.constexpr, BLOCK_N: tl.constexpr, TAIL_N: tl.constexpr, BLOCK_D: tl.constexpr,
              CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr):
    rows = row0 + tl.arange(0, BM)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q, rows, sqm, offs_d, sqd, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    m_i = tl.zeros([BM], dtype=tl.float32)  # a >= 0, so 0 is a valid starting maximum
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    lk_full = LK - LK % BLOCK_N
    for start_n in range(0, lk_full, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, MASK, rows, start_n + tl.arange(0, BLOCK_N), offs_d,
                                  skn, skd, svn, svd, smm, smn, LQ, LK, HEAD_D, qk_scale,
                                  CHECK_ROWS, False, EVEN_D, HAS_MASK)
    if TAIL_N > 0:
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, K, V, MASK, rows, lk_full + tl.arange(0, TAIL_N), offs_d,
                                  skn, skd, svn, svd, smm, smn, LQ, LK, HEAD_D, qk_scale,
                                  CHECK_ROWS, True, EVEN_D, HAS_MASK)
    l_safe = tl.maximum(l_i, 1e-30)  # fully masked row: l = 0 -> out 0, lse finite
    _store_tile(OUT, acc / l_safe[:, None], rows, som, offs_d, sod, LQ, HEAD_D, CHECK_ROWS, EVEN_D)
    if CHECK_ROWS:
        tl.store(LSE + rows, m_i + tl.log2(l_safe), mask=rows < LQ)
    else:
        tl.store(LSE + rows, m_i + tl.log2(l_safe))


@triton.jit
def _cog_fwd_kernel(
    Q, K, V, OUT, LSE, MASK,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, som, sod,
    smb, smh, smm, smn,
    H, LQ, LK, HEAD_D,
    qk_scale,  # |scale| * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TAIL_M: tl.constexpr, TAIL_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile may pass Python floats as fp64
    b = pid_bh // H
    h = pid_bh % H
    row0 = pid_m * BLOCK_M
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    OUT += b * sob + h * soh
    LSE += pid_bh * LQ
    MASK += b * smb + h * smh
    if TAIL_M > 0:
        if row0 + BLOCK_M > LQ:  # the last program: TAIL_M rows
            _fwd_rows(Q, K, V, OUT, LSE, MASK, row0, sqm, sqd, skn, skd, svn, svd, som, sod, smm, smn,
                      LQ, LK, HEAD_D, qk_scale, TAIL_M, BLOCK_N, TAIL_N, BLOCK_D, True, EVEN_D, HAS_MASK)
        else:
            _fwd_rows(Q, K, V, OUT, LSE, MASK, row0, sqm, sqd, skn, skd, svn, svd, som, sod, smm, smn,
                      LQ, LK, HEAD_D, qk_scale, BLOCK_M, BLOCK_N, TAIL_N, BLOCK_D, False, EVEN_D, HAS_MASK)
    else:
        _fwd_rows(Q, K, V, OUT, LSE, MASK, row0, sqm, sqd, skn, skd, svn, svd, som, sod, smm, smn,
                  LQ, LK, HEAD_D, qk_scale, BLOCK_M, BLOCK_N, TAIL_N, BLOCK_D, False, EVEN_D, HAS_MASK)
