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
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _signed(x, s):
    # sign(s) * x, with sign(0) = 0 (as torch.sign)
    return tl.where(s > 0, x, tl.where(s < 0, -x, 0.0))


@triton.jit
def _cog_fwd_kernel(
    Q, K, V, O, LSE, MASK,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, soh, som, sod,
    smb, smh, smm, smn,
    H, LQ, LK, HEAD_D,
    qk_scale,  # |scale| * log2(e)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    m_ok = offs_m < LQ

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    if EVEN_M and EVEN_D:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * skb + h * skh + offs_d[None, :] * skd
    v_base = V + b * svb + h * svh + offs_d[None, :] * svd
    if HAS_MASK:
        mask_base = MASK + b * smb + h * smh + offs_m[:, None] * smm

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # a >= 0, so 0 is a valid starting maximum
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, LK, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < LK
        if EVEN_N and EVEN_D:
            k = tl.load(k_base + cols[:, None] * skn)
            v = tl.load(v_base + cols[:, None] * svn)
        else:
            k = tl.load(k_base + cols[:, None] * skn, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * svn, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N), float32, unscaled
        a = tl.abs(s) * qk_scale  # |scale * s| in base-2 units
        if HAS_MASK:
            if EVEN_M and EVEN_N:
                keep = tl.load(mask_base + cols[None, :] * smn)
            else:
                keep = tl.load(mask_base + cols[None, :] * smn, mask=m_ok[:, None] & n_ok[None, :], other=0)
            a = tl.where(keep != 0, a, float("-inf"))
        elif not EVEN_N:
            a = tl.where(n_ok[None, :], a, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(a, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(a - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        w = _signed(p, s)
        acc = acc * alpha[:, None] + tl.dot(w.to(v.dtype), v)
        m_i = m_new

    l_safe = tl.maximum(l_i, 1e-30)  # fully masked row: l = 0 -> out 0, lse finite
    out = acc / l_safe[:, None]
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod
    if EVEN_M and EVEN_D:
        tl.store(o_ptrs, out.to(O.dtype.element_ty))
    else:
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse_ptrs = LSE + pid_bh * LQ + offs_m
    if EVEN_M:
        tl.store(lse_ptrs, m_i + tl.log2(l_safe))
    else:
        tl.store(lse_ptrs, m_i + tl.log2(l_safe), mask=m_ok)


@triton.jit
def _cog_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, MASK,
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
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
):
    """dq for one block of query rows; also writes DELTA = rowsum(dO * O) for the dk/dv kernel."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    m_ok = offs_m < LQ
    md_ok = m_ok[:, None] & d_ok[None, :]

    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    o_ptrs = O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod
    do_ptrs = DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :] * sdod
    if EVEN_M and EVEN_D:
        q = tl.load(q_ptrs)
        o = tl.load(o_ptrs)
        do = tl.load(do_ptrs)
    else:
        q = tl.load(q_ptrs, mask=md_ok, other=0.0)
        o = tl.load(o_ptrs, mask=md_ok, other=0.0)
        do = tl.load(do_ptrs, mask=md_ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    if EVEN_M:
        lse = tl.load(LSE + pid_bh * LQ + offs_m)
        tl.store(DELTA + pid_bh * LQ + offs_m, delta)
    else:
        lse = tl.load(LSE + pid_bh * LQ + offs_m, mask=m_ok, other=float("inf"))
        tl.store(DELTA + pid_bh * LQ + offs_m, delta, mask=m_ok)

    k_base = K + b * skb + h * skh + offs_d[None, :] * skd
    v_base = V + b * svb + h * svh + offs_d[None, :] * svd
    if HAS_MASK:
        mask_base = MASK + b * smb + h * smh + offs_m[:, None] * smm
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, LK, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < LK
        if EVEN_N and EVEN_D:
            k = tl.load(k_base + cols[:, None] * skn)
            v = tl.load(v_base + cols[:, None] * svn)
        else:
            k = tl.load(k_base + cols[:, None] * skn, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * svn, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k))
        a = tl.abs(s) * qk_scale
        if HAS_MASK:
            if EVEN_M and EVEN_N:
                keep = tl.load(mask_base + cols[None, :] * smn)
            else:
                keep = tl.load(mask_base + cols[None, :] * smn, mask=m_ok[:, None] & n_ok[None, :], other=0)
            a = tl.where(keep != 0, a, float("-inf"))
        w = _signed(tl.exp2(a - lse[:, None]), s)  # padded keys: s == 0 -> w == 0
        dw = tl.dot(do, tl.trans(v))
        ds = w * (_signed(dw, s) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    dq = dq * scale
    dq_ptrs = DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd
    if EVEN_M and EVEN_D:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=md_ok)


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
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, HAS_MASK: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """dk and dv for one block of keys, looping over query blocks (transposed scores).

    With ATOMIC_DQ, also adds ``scale * dS K`` into the float32 buffer DQACC (FA2's scheme)
    instead of recomputing the scores in a separate dq kernel.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    n_ok = offs_n < LK
    nd_ok = n_ok[:, None] & d_ok[None, :]

    k_ptrs = K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd
    v_ptrs = V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd
    if EVEN_N and EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=nd_ok, other=0.0)
        v = tl.load(v_ptrs, mask=nd_ok, other=0.0)

    q_base = Q + b * sqb + h * sqh + offs_d[None, :] * sqd
    do_base = DO + b * sdob + h * sdoh + offs_d[None, :] * sdod
    if HAS_MASK:
        mask_base = MASK + b * smb + h * smh + offs_n[:, None] * smn
    if ATOMIC_DQ:
        aq_base = DQACC + b * saqb + h * saqh + offs_d[None, :] * saqd
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, LQ, BLOCK_M):
        rows = start_m + offs_m
        m_ok = rows < LQ
        if EVEN_M and EVEN_D:
            q = tl.load(q_base + rows[:, None] * sqm)
            do = tl.load(do_base + rows[:, None] * sdom)
        else:
            q = tl.load(q_base + rows[:, None] * sqm, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(do_base + rows[:, None] * sdom, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if EVEN_M:
            lse = tl.load(LSE + pid_bh * LQ + rows)
            delta = tl.load(DELTA + pid_bh * LQ + rows)
        else:
            lse = tl.load(LSE + pid_bh * LQ + rows, mask=m_ok, other=float("inf"))
            delta = tl.load(DELTA + pid_bh * LQ + rows, mask=m_ok, other=0.0)
        st = tl.dot(k, tl.trans(q))  # (BLOCK_N, BLOCK_M) = S^T, unscaled
        at = tl.abs(st) * qk_scale
        if HAS_MASK:
            if EVEN_M and EVEN_N:
                keep = tl.load(mask_base + rows[None, :] * smm)
            else:
                keep = tl.load(mask_base + rows[None, :] * smm, mask=n_ok[:, None] & m_ok[None, :], other=0)
            at = tl.where(keep != 0, at, float("-inf"))
        wt = _signed(tl.exp2(at - lse[None, :]), st)
        dv += tl.dot(wt.to(do.dtype), do)
        dwt = tl.dot(v, tl.trans(do))  # (dO V^T)^T
        dst = wt * (_signed(dwt, st) - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q)
        if ATOMIC_DQ:
            dq_part = tl.dot(tl.trans(dst.to(k.dtype)), k) * scale  # (BLOCK_M, BLOCK_D)
            tl.atomic_add(aq_base + rows[:, None] * saqm, dq_part, mask=m_ok[:, None] & d_ok[None, :], sem="relaxed")
    dk = dk * scale
    dk_ptrs = DK + b * sdkb + h * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd
    dv_ptrs = DV + b * sdvb + h * sdvh + offs_n[:, None] * sdvn + offs_d[None, :] * sdvd
    if EVEN_N and EVEN_D:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty))
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty))
    else:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=nd_ok)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=nd_ok)


@triton.jit
def _cog_bwd_delta_kernel(
    O, DO, DELTA,
    sob, soh, som, sod,
    sdob, sdoh, sdom, sdod,
    H, LQ, HEAD_D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """DELTA = rowsum(dO * O) in float32 (only needed before the atomic-dq dk/dv kernel)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < LQ)[:, None] & (offs_d < HEAD_D)[None, :]
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=ok, other=0.0)
    do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdom + offs_d[None, :] * sdod, mask=ok, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * LQ + offs_m, delta, mask=offs_m < LQ)
