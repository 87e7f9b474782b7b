"""Activation-range calibration from histograms: entropy (KL) and MSE, computed by qtbench itself.

Why not the runtime's own: ONNX Runtime's entropy search loops in Python over every candidate window of every
tensor and, through ``quantize_static``, silently uses 128/128 bins so its
"entropy" ranges equal min-max. Here the same TensorRT-style KL search scores every candidate window at once
(prefix sums) over a symmetric histogram of ``num_bins`` bins, and MSE picks the clipping range that minimises
the expected squared quantization error (rounding + clipping) of the histogram's mass. Backends that calibrate
through their own SDK record that instead; these functions serve adapters that accept explicit ranges.

Percentile ranges are computed here too: ONNX Runtime's percentile calibrator histograms |x|, and then clamps a
symmetric range's lower end to min |x| (so a tensor with negative values, such as logits, gets [≈0, t] and loses
its negative half), and takes an asymmetric range's ends from the |x| histogram as well.

Histograms follow ONNX Runtime's layout: counts over ``[-t, t]`` with ``t = max(|min|, |max|)``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NUM_BINS = 2048
DEFAULT_QUANTIZED_BINS = 128
MAX_CANDIDATES = 256


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Move ``eps`` mass into empty bins (as TensorRT/ORT do) so KL stays finite; None for an all-zero p."""
    zero = p == 0
    n_zero, n_nonzero = int(zero.sum()), int((~zero).sum())
    if n_nonzero == 0:
        return None
    eps1 = eps * n_zero / n_nonzero
    if eps1 >= 1.0:
        return None
    return p + eps * zero - eps1 * (~zero)


def entropy_range(
    hist: np.ndarray,
    edges: np.ndarray,
    data_min: float,
    data_max: float,
    num_quantized_bins: int = DEFAULT_QUANTIZED_BINS,
    max_candidates: int = MAX_CANDIDATES,
) -> tuple[float, float]:
    """KL-optimal symmetric window of a zero-centred histogram, clipped to the observed [min, max].

    For each candidate half-width ``i`` the window's bins are P (the mass outside folded into its end bins) and
    Q (P's window merged into ``num_quantized_bins`` groups, each group's mass spread over its non-empty bins;
    the remainder bins get none), both smoothed by moving ``eps`` mass into empty bins. Q is constant per
    group, so every term of KL(P‖Q) but one is a per-group sum read from prefix sums; the one that is not
    (Σ p·log p after smoothing) is a single masked pass over the window's non-empty bins for all candidates at
    once. Same answer as :func:`_entropy_range_loop` (the per-candidate reference, ~6× slower) up to rounding.
    """
    hist = np.asarray(hist, dtype=np.float64)
    num_bins = hist.size
    zero = num_bins // 2
    nq = num_quantized_bins
    half_q = nq // 2
    cand = np.arange(half_q, zero + 1)
    if cand.size > max_candidates:
        cand = np.unique(np.linspace(half_q, zero, max_candidates).astype(int))
    if cand.size == 0:
        return _entropy_range_loop(hist, edges, data_min, data_max, nq, max_candidates)
    eps = 1e-4
    cs = np.concatenate([[0.0], np.cumsum(hist)])
    nonzero_h = hist != 0
    nzc = np.concatenate([[0], np.cumsum(nonzero_h)])
    total = cs[-1]
    start = zero - cand
    end = np.minimum(zero + cand + 1, num_bins)
    length = end - start
    m = length // nq
    rem = length - nq * m
    p0 = hist[start] + cs[start]  # the window's end bins carry the mass outside it
    p_last = hist[end - 1] + (total - cs[end])
    nz0, nz_last = p0 != 0, p_last != 0
    n_p = (nzc[end - 1] - nzc[start + 1]) + nz0 + nz_last  # non-empty bins of P
    z_p = length - n_p
    with np.errstate(divide="ignore", invalid="ignore"):
        e_p = eps * z_p / n_p
        # groups g = 0..nq-1 cover bins [start + g·m, start + (g+1)·m); the remainder is [start + nq·m, end)
        g_lo = start[:, None] + np.arange(nq)[None, :] * m[:, None]
        g_hi = g_lo + m[:, None]
        hsum = cs[g_hi] - cs[g_lo]  # hist mass per group (Q merges the window's bins, not P's end bins)
        qbins = hsum.copy()
        qbins[:, -1] += cs[end] - cs[g_hi[:, -1]]  # the remainder's mass joins the last group
        norm = (nzc[g_hi] - nzc[g_lo]).astype(np.float64)  # non-empty bins of P per group
        norm[:, 0] += nz0.astype(float) - nonzero_h[start]
        last_in_group = rem == 0  # bin end-1 is in the last group, else in the remainder
        norm[last_in_group, -1] += nz_last[last_in_group].astype(float) - nonzero_h[end - 1][last_in_group]
        psum = hsum.copy()  # P's mass per group, and in the remainder
        psum[:, 0] += cs[start]
        psum[last_in_group, -1] += (total - cs[end])[last_in_group]
        rem_mass = cs[end] - cs[g_hi[:, -1]] + np.where(last_in_group, 0.0, total - cs[end])
        rem_nz = (nzc[end] - nzc[g_hi[:, -1]]) + np.where(last_in_group, 0, nz_last.astype(int) - nonzero_h[end - 1])
        per_bin = np.where(norm > 0, qbins / np.where(norm > 0, norm, 1.0), 0.0)
        q_empty = per_bin == 0
        z_q = m * q_empty.sum(axis=1) + rem
        n_q = length - z_q
        e_q = eps * z_q / n_q
        q_val = np.where(q_empty, eps, per_bin - e_q[:, None])  # smoothed Q, one value per group
        s_q = m * q_val.sum(axis=1) + rem * eps
        s_p = total + eps * z_p - e_p * n_p
        # Σ ps·log qs: per group, P's smoothed mass in the group times log of Q's (constant) value there
        ps_group = psum + eps * (m[:, None] - norm) - e_p[:, None] * norm
        ps_rem = rem_mass + eps * (rem - rem_nz) - e_p * rem_nz
        cross = (ps_group * np.log(q_val)).sum(axis=1) + ps_rem * np.log(eps)
        # Σ ps·log ps: empty bins of P carry eps each; non-empty ones p - e_p (window interior, then the ends)
        self_ = z_p * (eps * np.log(eps))
        for end_p, nz in ((p0, nz0), (p_last, nz_last)):
            v = end_p - e_p
            self_ = self_ + np.where(nz, v * np.log(np.where(nz, v, 1.0)), 0.0)
        pos = np.flatnonzero(nonzero_h)
        a = np.searchsorted(pos, start + 1)
        b = np.searchsorted(pos, end - 1)
        hk = hist[pos]
        inner = np.empty(cand.size)
        k = np.arange(pos.size)
        for lo in range(0, cand.size, 64):  # bounded memory: 64 candidates × non-empty bins at a time
            sl = slice(lo, lo + 64)
            v = hk[None, :] - e_p[sl, None]
            inside = (k >= a[sl, None]) & (k < b[sl, None])
            inner[sl] = np.where(inside, v * np.log(np.where(inside, v, 1.0)), 0.0).sum(axis=1)
        self_ = self_ + inner
        kl = (self_ - cross) / s_p - np.log(s_p) + np.log(s_q)
    valid = (n_p > 0) & (e_p < 1.0) & (n_q > 0) & (e_q < 1.0) & np.isfinite(kl)
    best = cand[-1]
    if valid.any():
        best = cand[int(np.argmin(np.where(valid, kl, np.inf)))]
    s, e = zero - best, min(zero + best + 1, num_bins)
    return max(float(edges[s]), float(data_min)), min(float(edges[e]), float(data_max))


def _entropy_range_loop(
    hist: np.ndarray,
    edges: np.ndarray,
    data_min: float,
    data_max: float,
    num_quantized_bins: int = DEFAULT_QUANTIZED_BINS,
    max_candidates: int = MAX_CANDIDATES,
) -> tuple[float, float]:
    """:func:`entropy_range` one candidate at a time, as TensorRT and ONNX Runtime write it: the reference."""
    hist = np.asarray(hist, dtype=np.float64)
    num_bins = hist.size
    zero = num_bins // 2
    half_q = num_quantized_bins // 2
    candidates = np.arange(half_q, zero + 1)
    if candidates.size > max_candidates:
        candidates = np.unique(np.linspace(half_q, zero, max_candidates).astype(int))
    cumsum = np.concatenate([[0.0], np.cumsum(hist)])
    best, best_kl = candidates[-1], np.inf
    for i in candidates:
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cumsum[start]
        p[-1] += cumsum[-1] - cumsum[end]
        merged = sliced.size // num_quantized_bins
        head = sliced[: merged * num_quantized_bins].reshape(num_quantized_bins, merged)
        qbins = head.sum(axis=1)
        qbins[-1] += sliced[merged * num_quantized_bins :].sum()
        nonzero = (p[: merged * num_quantized_bins] != 0).reshape(num_quantized_bins, merged)
        norm = nonzero.sum(axis=1)
        q = np.zeros_like(p)
        per_bin = np.divide(qbins, norm, out=np.zeros_like(qbins), where=norm > 0)
        q[: merged * num_quantized_bins] = np.repeat(per_bin, merged)
        ps, qs = _smooth(p), _smooth(q)
        if ps is None or qs is None:
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best, best_kl = i, kl
    start, end = zero - best, min(zero + best + 1, num_bins)
    lo, hi = float(edges[start]), float(edges[end])
    return max(lo, float(data_min)), min(hi, float(data_max))


def percentile_range(
    hist: np.ndarray,
    edges: np.ndarray,
    data_min: float,
    data_max: float,
    percentile: float,
    symmetric: bool = False,
) -> tuple[float, float]:
    """The central ``percentile`` % of a zero-centred histogram's mass, never wider than the observed data.

    Symmetric: ``[-t, t]`` with ``t`` the percentile of |x| (bins folded about zero). Asymmetric: the
    ``(100 − p)/2`` % tails cut on each side of the signed distribution. Bin edges round outwards, so the range
    errs one bin wide rather than clipping mass the percentile keeps.
    """
    hist = np.asarray(hist, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return float(data_min), float(data_max)
    q = min(max(percentile, 0.0), 100.0) / 100.0
    if symmetric:
        zero = hist.size // 2
        folded = hist[zero:][:zero] + hist[:zero][::-1]
        j = min(int(np.searchsorted(np.cumsum(folded) / total, q - 1e-12)), zero - 1)
        t = min(float(edges[zero + j + 1]), max(abs(float(data_min)), abs(float(data_max))))
        return -t, t
    cdf = np.cumsum(hist) / total
    cut = (1.0 - q) / 2.0
    i_lo = int(np.searchsorted(cdf, cut, side="right"))
    i_hi = min(int(np.searchsorted(cdf, 1.0 - cut - 1e-12)), hist.size - 1)
    lo, hi = float(edges[i_lo]), float(edges[i_hi + 1])
    return max(lo, float(data_min)), min(hi, float(data_max))


def mse_range(
    hist: np.ndarray,
    edges: np.ndarray,
    data_min: float,
    data_max: float,
    bits: int = 8,
    symmetric: bool = False,
    num_candidates: int = 200,
) -> tuple[float, float]:
    """The range [α·min, α·max] (α ∈ (0, 1]) minimising the histogram-weighted squared quantization error."""
    hist = np.asarray(hist, dtype=np.float64)
    centers = (np.asarray(edges[:-1], np.float64) + np.asarray(edges[1:], np.float64)) / 2
    lo0, hi0 = min(float(data_min), 0.0), max(float(data_max), 0.0)
    if symmetric:
        m = max(abs(lo0), abs(hi0))
        lo0, hi0 = -m, m
    if hi0 - lo0 <= 0:
        return float(data_min), float(data_max)
    levels = 2**bits - 1
    alphas = np.linspace(1.0 / num_candidates, 1.0, num_candidates)
    lo, hi = alphas[:, None] * lo0, alphas[:, None] * hi0
    scale = (hi - lo) / levels
    # Inside the range the error is rounding noise, uniform over a step (s²/12); outside it is the clipping
    # distance. (The bin centre's own rounding error would alias with the bin grid, so it is not used.)
    clipped = np.clip(centers[None, :], lo, hi)
    err = np.where(clipped == centers[None, :], scale**2 / 12.0, (clipped - centers[None, :]) ** 2) @ hist
    k = int(np.argmin(err))
    return float(lo[k, 0]), float(hi[k, 0])
