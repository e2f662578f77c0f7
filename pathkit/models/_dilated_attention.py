"""Dilated attention (LongNet) without flash-attn: segments x dilation ratios, each branch attended with a
fused, SDPA or manual kernel, and the branches merged through their log-sum-exp exactly as the reference's
flash-attn path does. Kept apart from the encoder modules because it is the numerically delicate part."""
from __future__ import annotations

import math
import threading
import warnings

import torch
import torch.nn.functional as F

UNCOVERED_LSE = -1e8  # what the reference gives positions a branch does not attend

# ----------------------------------------------------------------------------------------------------
# attention kernels: (q, k, v) [N, H, m, d] -> (out [N, H, m, d], natural-log lse float32 [N, H, m])

def _acc_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)  # float32 maths for half types, float64 kept


def _attend_manual(q, k, v, max_scores: int = 1 << 25):
    """Explicit softmax, query rows in chunks so the score matrix stays under `max_scores` elements."""
    N, H, m, d = q.shape
    ad = _acc_dtype(q.dtype)
    out = torch.empty_like(q)
    lse = torch.empty(N, H, m, dtype=ad, device=q.device)
    step = max(1, max_scores // max(1, N * H * k.shape[2]))
    kf, vf = k.to(ad), v.to(ad)
    for i in range(0, m, step):
        s = torch.matmul(q[:, :, i:i + step].to(ad), kf.transpose(-1, -2)) / math.sqrt(d)
        l = torch.logsumexp(s, dim=-1)
        out[:, :, i:i + step] = torch.matmul(torch.exp(s - l[..., None]), vf).to(q.dtype)
        lse[:, :, i:i + step] = l
    return out, lse


def _attend_sdpa(q, k, v, max_scores: int = 1 << 25):
    """Public F.scaled_dot_product_attention for the output, log-sum-exp from chunked q k^T."""
    N, H, m, d = q.shape
    ad = _acc_dtype(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v)
    lse = torch.empty(N, H, m, dtype=ad, device=q.device)
    step = max(1, max_scores // max(1, N * H * k.shape[2]))
    kf = k.to(ad).transpose(-1, -2)
    for i in range(0, m, step):
        lse[:, :, i:i + step] = torch.logsumexp(torch.matmul(q[:, :, i:i + step].to(ad), kf) / math.sqrt(d), -1)
    return out, lse


def _attend_fused(q, k, v):
    """The fused SDPA kernels PyTorch itself dispatches to, which also return the log-sum-exp."""
    m = q.shape[2]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., :m].to(_acc_dtype(q.dtype))  # some kernels pad the lse's last dimension


_FUSED_OK: dict = {}
_FUSED_LOCK = threading.Lock()


def _fused_ok(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Check once per (device, dtype, head_dim) that the fused kernel exists and agrees with the explicit
    softmax (private ops can change between PyTorch releases); otherwise fall back, with a warning."""
    key = (device.type, dtype, head_dim)
    with _FUSED_LOCK:
        if key not in _FUSED_OK:
            ok, why = False, ""
            try:
                g = torch.Generator(device="cpu").manual_seed(0)
                q, k, v = (torch.randn(2, 3, 77, head_dim, generator=g).to(device, dtype) for _ in range(3))
                o1, l1 = _attend_fused(q, k, v)
                o2, l2 = _attend_manual(q, k, v)
                tol = 1e-4 if dtype == torch.float32 else 3e-2
                ok = (o1.shape == o2.shape and l1.shape == l2.shape
                      and float((o1.float() - o2.float()).abs().max()) < tol
                      and float((l1 - l2).abs().max()) < tol)
                why = "results differ from the explicit softmax"
            except Exception as e:  # noqa: BLE001  (a missing / changed private op: any error)
                why = f"{type(e).__name__}: {e}"
            if not ok:
                warnings.warn(f"pathkit LongNet: the fused attention kernel is unavailable on {device.type}/"
                              f"{dtype} ({why}); using F.scaled_dot_product_attention plus a separate "
                              "log-sum-exp (same results, slower)", RuntimeWarning, stacklevel=3)
            _FUSED_OK[key] = ok
        return _FUSED_OK[key]


def _attend(q, k, v, backend: str):
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if backend == "auto":
        # the fused kernels' log-sum-exp carries no gradient (it enters the last segment's zero-key term)
        backend = "sdpa" if grad or not _fused_ok(q.device, q.dtype, q.shape[-1]) else "fused"
    if backend == "fused":
        if grad:
            raise ValueError("attn_backend='fused' gives no gradient through the log-sum-exp: use 'auto' or "
                             "'sdpa' when training")
        return _attend_fused(q, k, v)
    if backend == "sdpa":
        return _attend_sdpa(q, k, v)
    if backend == "manual":
        return _attend_manual(q, k, v)
    raise ValueError(f"attention backend {backend!r} is not one of 'auto', 'fused', 'sdpa', 'manual'")


# ----------------------------------------------------------------------------------------------------
# dilated attention

def _branch_geometry(L: int, seg: int, r: int):
    """Sizes of one branch as the reference pads it: segment g = min(seg, L), padded to g' (multiple of r);
    n_full full segments, then a tail of `tail` real rows (padded, in the reference, to a whole segment)."""
    g = min(seg, L)
    gp = -(-g // r) * r
    n_full, tail = divmod(L, g)
    tail_w = -(-tail // r) * r
    return g, gp, n_full, tail, tail_w, n_full * gp + tail_w


def _merge_(A, M, S, o, l, first: bool = False):
    """Fold one branch's (out, lse) into the running softmax-over-branches (in place, on views).
    `first`: nothing was merged into these rows yet (M = -inf, S = 0, A = 0), so the merge is a copy,
    bit for bit what the general formula gives there (exp(-inf) = 0, exp(0) = 1), without its exps."""
    if first:
        A.copy_(o)
        S.fill_(1.0)
        M.copy_(l)
        return
    new = torch.maximum(M, l)
    a, w = torch.exp(M - new), torch.exp(l - new)
    A.mul_(a[..., None]).add_(o.to(A.dtype) * w[..., None])
    S.mul_(a).add_(w)
    M.copy_(new)


def _dilated_attention_packed(qkv, L: int, seg_lengths, ratios, backend: str = "auto",
                              token_budget: int = 1 << 14):
    """Dilated attention over a packed buffer qkv [B, Lp, 3, H, d] whose rows L..Lp-1 are zeros
    (Lp >= L + max(ratios) - 1) -> [B, L, H, d].

    Per branch (segment length s, ratio r) the reference zero-pads the sequence to a multiple of
    g = min(s, L), cuts segments of g rows, zero-pads each to g' = ceil(g / r) * r, and lets head group t
    (heads split into r groups, head count padded to a multiple of r) attend among the rows p % r == t of
    its segment, zero keys included in the softmax; outputs are laid back at flat index j * g' + p and cut
    to L (j * g' + p != j * g + p only when L > g and g % r != 0: a reference quirk, kept). Each branch
    gives an output and a log-sum-exp per (row, head); rows a branch does not cover get lse -1e8, and the
    branches are merged with weights softmax(lse over branches), without gradient.

    Here every (segment, head group) is read from a strided view of the buffer (no gather); segments of
    padding only are skipped (their zero keys enter the tail's log-sum-exp in closed form); uncovered rows
    (weight exactly 0) are skipped; the branch merge is streamed into one accumulator.
    """
    B, Lp, _, H, d = qkv.shape
    geo = [_branch_geometry(L, int(s), int(r)) + (int(r),) for s, r in zip(seg_lengths, ratios)]
    Lacc = max([Lp] + [x[5] for x in geo])
    ad = _acc_dtype(qkv.dtype)
    A = torch.zeros(B, Lacc, H, d, dtype=ad, device=qkv.device)
    M = torch.full((B, Lacc, H), -math.inf, dtype=ad, device=qkv.device)
    S = torch.zeros(B, Lacc, H, dtype=ad, device=qkv.device)
    for i_branch, (g, gp, n_full, tail, tail_w, extent, r) in enumerate(geo):
        m = gp // r
        hg = -(-H // r)
        if gp == g or (n_full == 1 and tail == 0):
            src = qkv  # flat index == sequence index: views straight into the buffer
        else:  # the quirk: each segment padded inside the sequence; build that layout once
            src = qkv.new_zeros(B, max(extent, Lp), 3, H, d)
            src[:, :n_full * gp].view(B, n_full, gp, 3, H, d)[:, :, :g] = \
                qkv[:, :n_full * g].view(B, n_full, g, 3, H, d)
            src[:, n_full * gp:n_full * gp + tail] = qkv[:, n_full * g:L]
        chunks = []  # (start row, number of segments, segment width)
        per = max(1, token_budget // gp)
        for j0 in range(0, n_full, per):
            chunks.append((j0 * gp, min(per, n_full - j0), gp))
        if tail:
            chunks.append((n_full * gp, 1, tail_w))
        for b in range(B):
            for p0, n, w in chunks:
                if p0 >= L:
                    continue  # rows past L are cut by the reference
                mm = w // r
                blk = src[b, p0:p0 + n * w].view(n, mm, r, 3, H, d)
                acc = A[b, p0:p0 + n * w].view(n, mm, r, H, d)
                mx = M[b, p0:p0 + n * w].view(n, mm, r, H)
                sm = S[b, p0:p0 + n * w].view(n, mm, r, H)
                for t in range(r):
                    h0, h1 = t * hg, min(H, (t + 1) * hg)
                    if h0 >= H:
                        break
                    # one contiguous copy of the group's rows: the fused kernels run markedly faster on it
                    qs, ks, vs = blk[:, :, t, :, h0:h1].permute(2, 0, 3, 1, 4).contiguous().unbind(0)
                    o, l = _attend(qs, ks, vs, backend)
                    if mm < m:  # the zero keys of the padding the reference appends to the last segment
                        lf = torch.logaddexp(l, torch.full_like(l, math.log(m - mm)))
                        o = o * torch.exp(l - lf).to(o.dtype)[..., None]
                        l = lf
                    l = l.masked_fill(l == 0, UNCOVERED_LSE).detach()  # as the reference's masked_fill
                    _merge_(acc[:, :, t, h0:h1], mx[:, :, t, h0:h1], sm[:, :, t, h0:h1],
                            o.transpose(1, 2), l.transpose(1, 2), first=i_branch == 0)
    A, S = A[:, :L], S[:, :L]
    out = torch.where(S[..., None] > 0, A / S.clamp_min(1e-38)[..., None], 0.0)  # never covered: 0
    return out.to(qkv.dtype)


def dilated_attention(q, k, v, seg_lengths, ratios, backend: str = "auto", token_budget: int = 1 << 14):
    """LongNet dilated attention as the reference computes it. q, k, v: [B, L, H, d] -> [B, L, H, d]."""
    B, L, H, d = q.shape
    qkv = q.new_zeros(B, L + max(int(r) for r in ratios), 3, H, d)
    qkv[:, :L, 0], qkv[:, :L, 1], qkv[:, :L, 2] = q, k, v
    return _dilated_attention_packed(qkv, L, seg_lengths, ratios, backend, token_budget)
