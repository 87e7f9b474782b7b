"""Activation-range calibration from histograms: entropy (KL) and MSE, computed by qtbench itself.

Why not the runtime's own: ONNX Runtime's entropy search loops in Python over every candidate (≈1 s per tensor
at 2,048 bins, 20 s for a 23-tensor CNN) and, through ``quantize_static``, silently uses 128/128 bins so its
"entropy" ranges equal min-max. Here the same TensorRT-style KL search runs vectorised per candidate over a
symmetric histogram of ``num_bins`` bins, and MSE picks the clipping range that minimises the expected squared
quantization error (rounding + clipping) of the histogram's mass. Backends that calibrate through their own SDK
record that instead; these functions serve adapters that accept explicit ranges.

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
    """KL-optimal symmetric window of a zero-centred histogram, clipped to the observed [min, max]."""
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
