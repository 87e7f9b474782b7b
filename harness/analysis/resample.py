"""Resampling behind ``qtbench check``'s intervals: a block bootstrap of raw latencies and a paired bootstrap of
per-sample predictions, whose 0/1 case is computed exactly.

Latencies are resampled the way they were taken. Consecutive iterations of one timed run are correlated (cache,
clock and scheduler state carry over), so a run is resampled in circular blocks whose length follows the
autocorrelation; when a cell has several repeats, each replicate also draws that many repeats with replacement, so
repeat-to-repeat drift widens the interval. Evaluation samples are independent draws, so predictions are resampled
pair by pair (the same indices on both sides keep the pairing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA = 0.05  # every verdict reads the two-sided (1 − ALPHA) percentile interval
BOOTSTRAP = 2000
SCREEN_REPS = 200  # a verdict is first read from this many replicates, from BOOTSTRAP only near a boundary


def block_lengths(runs: np.ndarray) -> np.ndarray:
    """The block length of every row of ``runs`` (runs of equal length): Politis & White (2004) with the correction
    of Patton, Politis & White (2009), computed as arch's ``optimal_block_length`` (the reference implementation),
    on log latency so that a few outliers do not dominate the autocorrelations.

    1 for independent samples, longer the more slowly the autocorrelation decays (drift within a run gives long
    blocks); at most ``min(3√n, n/3)`` so that every resample still draws several blocks.
    """
    x = np.log(np.maximum(np.asarray(runs, float), 1.0))
    c, n = x.shape
    out = np.ones(c, np.int64)
    if n < 8 or c == 0:
        return out
    x = x - x.mean(axis=1, keepdims=True)
    var = (x * x).sum(axis=1) / n
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = min(math.ceil(math.sqrt(n)) + k_n, n - 1)
    acov = np.stack([(x[:, : n - k] * x[:, k:]).sum(axis=1) / n for k in range(m_max + 1)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = acov[:, 1:] / var[:, None]
    insignificant = np.abs(rho) < 2.0 * math.sqrt(math.log10(n) / n)
    # m̂: the first lag of the first run of k_n insignificant autocorrelations, so m̂ ≥ 1, and the bandwidth
    # M = min(2 m̂, m_max) (m_max without such a run) is at least 2, as in arch: flooring it at 1 instead zeroed the
    # lag window and gave block 1 to most mildly correlated runs
    csum = np.concatenate([np.zeros((c, 1), np.int64), np.cumsum(insignificant, axis=1)], axis=1)
    runs_ok = (csum[:, k_n:] - csum[:, : m_max - k_n + 1]) == k_n
    big_m = np.where(runs_ok.any(axis=1), np.minimum(2 * (runs_ok.argmax(axis=1) + 1), m_max), m_max)
    k = np.arange(1, m_max + 1)
    t = k[None, :] / big_m[:, None]
    lam = np.where(k[None, :] <= big_m[:, None], np.where(t <= 0.5, 1.0, 2.0 * (1.0 - t)), 0.0)
    g = 2.0 * (lam * k * acov[:, 1:]).sum(axis=1)
    d_cb = 4.0 / 3.0 * (acov[:, 0] + 2.0 * (lam * acov[:, 1:]).sum(axis=1)) ** 2
    b_max = max(1, math.ceil(min(3.0 * math.sqrt(n), n / 3.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (2.0 * g**2 / d_cb) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    fine = (var != 0) & (d_cb > 0) & (g != 0) & np.isfinite(b)
    out[fine] = np.clip(np.round(b[fine]).astype(np.int64), 1, b_max)
    return out


@functools.lru_cache(maxsize=16)
def block_indices(lengths: tuple[int, ...], block: int, reps: int, seed: int) -> tuple[np.ndarray, ...]:
    """The block-bootstrap resamples of runs of these lengths (concatenated), as index arrays of (replicates, width)
    in chunks of bounded size: ``reps`` replicates in all.

    Each replicate draws as many repeats as there are, with replacement, and fills each drawn repeat's mean length
    with circular blocks starting anywhere in it. A function of the shapes and the seed only, so every cell timed
    with the same protocol resamples the same positions: a check draws once per protocol, not once per cell.
    """
    rng = np.random.default_rng(seed)
    lens = np.array(lengths)
    n_runs = len(lens)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    length = round(float(lens.mean()))
    n_blocks = -(-length // block)
    chunk = max(1, 2_000_000 // (n_runs * n_blocks * block))
    out = []
    for lo in range(0, reps, chunk):
        m = min(chunk, reps - lo)
        pick = rng.integers(0, n_runs, (m, n_runs)) if n_runs > 1 else np.zeros((m, 1), np.int64)
        n_j = lens[pick][..., None, None]  # (m, runs, 1, 1)
        starts = (rng.random((m, n_runs, n_blocks, 1)) * n_j).astype(np.int64)
        within = (starts + np.arange(block)) % n_j
        within = within.reshape(m, n_runs, n_blocks * block)[..., :length]
        idx = (offsets[pick][..., None] + within).reshape(m, n_runs * length)
        idx.setflags(write=False)
        out.append(idx)
    return tuple(out)


@dataclass(frozen=True)
class LatencyStatistic:
    """A row's timing column as a function of raw latencies (ns, along the last axis), in its units: the mean, a
    percentile (numpy's linear interpolation, as the row's own statistics), or FPS from the median."""

    q: float | None  # None: the mean
    batch_size: int = 1
    fps: bool = False

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return self._finish(np.mean(a, axis=-1) if self.q is None else np.percentile(a, self.q, axis=-1))

    def of_resamples(self, flat: np.ndarray, idx: np.ndarray, block: int) -> np.ndarray:
        """The statistic of every resample ``idx`` (m, width) of every row of ``flat`` (cells, n, finite values):
        (cells, m), what ``self(flat[:, idx])`` gives, without building the resamples (see
        :func:`resampled_percentile`; a resample's mean is its position counts times the samples)."""
        if self.q is None:
            return self._finish(flat @ position_counts(idx, flat.shape[1]).T / idx.shape[1])
        return self._finish(resampled_percentile(flat, idx, self.q, block))

    def _finish(self, v: np.ndarray) -> np.ndarray:
        return self.batch_size * 1e9 / v if self.fps else v / 1e6


def latency_statistic(metric: str, batch_size: int = 1) -> LatencyStatistic:
    """The statistic that produces the row's ``metric`` column from its raw latencies."""
    if metric == "latency_ms_mean":
        return LatencyStatistic(None)
    if metric == "fps":
        return LatencyStatistic(50, batch_size, fps=True)
    return LatencyStatistic(int(metric.rsplit("_p", 1)[1]))


def position_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` sample positions occurs in each resample ``idx`` (m, width): (m, n)."""
    m = len(idx)
    return np.bincount((idx + n * np.arange(m)[:, None]).ravel(), minlength=m * n).reshape(m, n)


BAND_SDS = 3.5  # the band of ranks searched spans this many standard deviations of a resample's count each way


def resampled_percentile(flat: np.ndarray, idx: np.ndarray, q: float, block: int) -> np.ndarray:
    """``np.percentile(flat[:, idx], q, axis=-1)`` for rows of finite samples, without building the resamples:
    (cells, m). A check of thousands of cells asks this of millions of resamples: building and partitioning each one
    is what dominated its time (``benchmarks/check_10k.py``), and counting needs neither.

    The k-th smallest value of a resample is the sample at the sorted position t where C(t), how many resampled
    values rank at or below t, first exceeds k. C is a sum of the resample's position counts, which every cell
    shares: below a band of ranks around the expected crossing it is one matrix product for all cells, inside the
    band a cumulative sum. The band spans :data:`BAND_SDS` standard deviations of C (blocks at their worst); the few
    resamples whose crossing falls outside it are built and passed to ``np.percentile``. The two order statistics
    are interpolated as numpy does, rounding included, so every replicate is exactly ``np.percentile``'s."""
    cells, n = flat.shape
    m, width = idx.shape
    h = (width - 1) * (q / 100.0)
    k_lo = math.floor(h)
    k_hi, g = min(k_lo + 1, width - 1), h - k_lo
    order = np.argsort(flat, axis=1, kind="stable")
    srt = np.take_along_axis(flat, order, axis=1)
    counts = position_counts(idx, n).astype(np.int16 if max(n, width) < 2**15 else np.int32)
    p = (h + 0.5) / width
    half = max(0, math.ceil((BAND_SDS * math.sqrt(width * p * (1 - p) * block) + 2) * n / width))
    b0, b1 = min(max(0, round(p * n) - half), n - 1), min(n, round(p * n) + half + 1)
    low = np.zeros((cells, n), np.float32)
    np.put_along_axis(low, order[:, :b0], 1.0, axis=1)
    below = (low @ counts.T.astype(np.float32)).astype(counts.dtype)  # (cells, m); small integers: exact
    outside = below > k_lo  # the crossing lies below the band
    # how many band ranks sit at or below each crossing, summed rank by rank over ~64k (cell, resample) pairs at a
    # time, so that the running sums stay in cache
    by_rank = counts.T  # (n, m): one row per sample position
    t_lo, t_hi = np.zeros((cells, m), counts.dtype), np.zeros((cells, m), counts.dtype)
    step = max(1, 65_536 // m)
    for c0 in range(0, cells, step):
        acc, lo, hi = below[c0 : c0 + step], t_lo[c0 : c0 + step], t_hi[c0 : c0 + step]
        for t in range(b0, b1):
            acc += by_rank[order[c0 : c0 + step, t]]
            lo += acc <= k_lo
            hi += acc <= k_hi
    t_lo, t_hi = t_lo.astype(np.intp) + b0, t_hi.astype(np.intp) + b0
    v_lo, v_hi = np.take_along_axis(srt, t_lo, axis=1), np.take_along_axis(srt, t_hi, axis=1)
    d = v_hi - v_lo
    out = v_hi - d * (1 - g) if g >= 0.5 else v_lo + d * g  # numpy's _lerp
    c, r = np.nonzero(outside | (t_hi >= b1))  # ... or past it
    if len(c):
        out[c, r] = np.percentile(flat[c[:, None], idx[r]], q, axis=-1)
    return out


def replicates(
    flat: np.ndarray, lengths: tuple[int, ...], block: int, stat: LatencyStatistic, reps: int, seed: int
) -> np.ndarray:
    """``stat`` of ``reps`` block-bootstrap resamples (:func:`block_indices`) of every row of ``flat`` (cells, n): the
    rows are cells timed with one protocol, their repeats concatenated. Returns (cells, reps). Rows with a
    non-finite sample are resampled value by value (a NaN propagates as ``np.percentile`` propagates it)."""
    out = np.empty((len(flat), reps))
    finite = np.isfinite(flat).all(axis=1)
    lo, good = 0, flat[finite]
    for idx in block_indices(lengths, block, reps, seed):
        cols = slice(lo, lo + len(idx))
        if len(good):
            out[finite, cols] = stat.of_resamples(good, idx, block)
        for c in np.flatnonzero(~finite):
            out[c, cols] = stat(flat[c][idx])
        lo += len(idx)
    return out


def resample_runs(
    runs: list[np.ndarray], stat: Any, reps: int = BOOTSTRAP, seed: int = 0, block: int | None = None
) -> np.ndarray:
    """``reps`` block-bootstrap replicates of ``stat`` over one cell's raw samples (one array per repeat); the block
    is the longest of the repeats' :func:`block_lengths` unless given."""
    runs = [np.asarray(r, float) for r in runs if len(r)]
    if not runs:
        raise ValueError("no samples to resample")
    block = block or max(int(block_lengths(r[None, :])[0]) for r in runs)
    return replicates(np.concatenate(runs)[None, :], tuple(map(len, runs)), block, stat, reps, seed)[0]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = BOOTSTRAP, seed: int = 0) -> tuple[Any, Any]:
    """Replicates of (mean(a), mean(b)) over the same resampled sample indices."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    if ((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all():
        # correct/incorrect flags: resampling n pairs draws how many land in each of the four (a, b) outcomes, a
        # multinomial over their observed frequencies: the same distribution in O(reps), not O(reps·n)
        g = a.astype(np.int64) + 2 * b.astype(np.int64)
        counts = rng.multinomial(n, np.bincount(g, minlength=4) / n, size=reps)
        return (counts[:, 1] + counts[:, 3]) / n, (counts[:, 2] + counts[:, 3]) / n
    idx = rng.integers(0, n, (reps, n))
    return a[idx].mean(axis=1), b[idx].mean(axis=1)


def trinomial_sum_pmf(n: int, p_minus: float, p_plus: float) -> tuple[int, np.ndarray]:
    """The exact distribution of K, the sum of n i.i.d. draws valued −1, 0, +1 with probabilities (p_minus,
    1 − p_minus − p_plus, p_plus): returns (k0, pmf) with P(K = k0 + j) = pmf[j].

    From the characteristic function (1 − p₋ − p₊ + p₋e^{−it} + p₊e^{it})ⁿ sampled at M points and inverted by one
    real FFT. The window covers the mean ± (10σ + 20), or the whole support [−n, n] when that is smaller: by
    Bernstein's inequality the mass outside it, which the FFT would fold back in, is below e⁻⁴⁰."""
    mu = n * (p_plus - p_minus)
    var = n * ((p_plus + p_minus) - (p_plus - p_minus) ** 2)
    half = math.ceil(10 * math.sqrt(max(var, 0.0)) + 20)
    lo, hi = max(-n, math.floor(mu) - half), min(n, math.ceil(mu) + half)
    m = 1 << max(1, (hi - lo).bit_length())  # a power of two > hi − lo
    t = 2 * np.pi * np.arange(m // 2 + 1) / m
    e = np.exp(1j * t)
    with np.errstate(divide="ignore", invalid="ignore"):  # φ is 0 where the base is (p₋ = p₊ = ½, t = π/2)
        phi = np.exp(n * np.log((1 - p_minus - p_plus) + p_minus * e.conj() + p_plus * e) - 1j * lo * t)
    phi[~np.isfinite(phi)] = 0
    # p_j = Σ φ(t)e^{-itj} / M over the full circle, φ(−t) = conj φ(t): the real inverse FFT of conj φ
    pmf = np.clip(np.fft.irfft(phi.conj(), m)[: hi - lo + 1], 0, None)
    return lo, pmf / pmf.sum()


@functools.lru_cache(maxsize=65_536)
def _sum_quantiles(n: int, n_minus: int, n_plus: int) -> tuple[float, float]:
    """The (1 − ALPHA) interval of K/n for :func:`trinomial_sum_pmf` at the observed frequencies (each end the
    smallest k with P(K ≤ k) ≥ its level). A function of three counts, so cells that share them compute it once."""
    k0, pmf = trinomial_sum_pmf(n, n_minus / n, n_plus / n)
    cdf = np.cumsum(pmf)
    ends = np.minimum(np.searchsorted(cdf, np.array([ALPHA / 2, 1 - ALPHA / 2]) - 1e-12), len(pmf) - 1)
    return (k0 + int(ends[0])) / n, (k0 + int(ends[1])) / n


def exact_flag_intervals(
    a: np.ndarray, b: np.ndarray, *, scale: float = 1.0, bound: bool = False
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (1 − ALPHA) percentile intervals of the paired bootstrap of two 0/1 flag vectors, exactly: (interval of the
    gated quantity, interval of the change). The change is in units of ``scale`` (100: points); with ``bound`` the
    gated quantity is b's mean itself.

    Resampling n pairs only changes how many land in each of the four (a, b) outcomes: the change in the mean is
    (#b-only − #a-only)/n, a sum of n draws valued −1/0/+1, and b's mean a binomial. Their distributions are
    computed, not sampled: the interval the Monte Carlo bootstrap approaches, without replicate noise."""
    n = len(a)
    g = np.bincount(np.asarray(a, np.int64) + 2 * np.asarray(b, np.int64), minlength=4)
    d = _sum_quantiles(n, int(g[1]), int(g[2]))
    if bound:
        return _sum_quantiles(n, 0, int(g[2] + g[3])), d
    return (scale * d[0], scale * d[1]), (scale * d[0], scale * d[1])
