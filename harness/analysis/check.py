"""`qtbench check`: gate a candidate's results against a baseline, cell by cell, with significance.

Gates are data (``metric: rule``). Rules:

- ``-0.5pp`` / ``+1pp``: the allowed change in percentage points of a fraction metric (top1, ece, ...); the sign
  says which way is bad (``top1: -0.5pp`` fails a drop of more than 0.5 pp; ``ece: +1pp`` fails a rise above 1 pp);
- ``+5%`` / ``-5%``: the allowed relative change (``latency_ms_p50: +5%``);
- ``+0.01`` (no unit): the allowed absolute change;
- ``>= 0.99``, ``<= 0.05``, ``>``, ``<``: an absolute bound on the candidate's value.

A gate **fails** only when the threshold is crossed *and* the change is significant (asv's rule), judged on an
interval of the very statistic the gate names: a ``latency_ms_p50: +5%`` gate on the (1 − α) interval of the
median ratio, a p99 gate on the p99 ratio, ``top1: -0.5pp`` on the change in points. The interval must lie
wholly past the threshold. Latency intervals come from the raw samples with a resampling that respects how
they were taken: a circular block bootstrap within each timed run (consecutive iterations are correlated) and,
when a cell has several repeats (``measure.repeats`` > 1), resampling of repeats, so repeat-to-repeat drift widens
the interval. ``top1`` uses a paired bootstrap over the evaluation samples. α = 0.05 (95 % intervals). Each
gate is first judged on 200 replicates and on 2,000 only when its interval ends lie near a boundary.
Crossed but not significant → **inconclusive** (with why). Metrics without per-sample data are judged on the
point estimate and say so. Marks (asv style): ``x`` fail, ``~`` inconclusive, ``+`` significantly better,
``-`` significantly worse but within the gate, blank unchanged.

Drift shared by every repeat of a run (another process loading the machine for the whole sweep) cannot be told
from a regression with one run per side. Where a row shows it was measured on an oversubscribed machine (1-min
load average above the usable cores in its ``device`` id), a latency gate that would fail is inconclusive and
says why; otherwise re-run both sides close in time on a quiet machine.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from qtbench.devices.host import cores_of
from qtbench.harness.core.config import load_yaml
from qtbench.harness.core.errors import ConfigError, UserError
from qtbench.harness.core.records import COLUMNS
from qtbench.harness.run.store import load_results, record_arrays, stores_under

DEFAULT_GATES = {"top1": "-0.5pp", "ece": "+1pp", "latency_ms_p50": "+5%"}
LATENCY_METRICS = {"latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "fps"}
ALPHA = 0.05  # every verdict uses the two-sided (1 − ALPHA) bootstrap interval
MIN_SAMPLES = 10
BOOTSTRAP = 2000
SCREEN_REPS = 200  # latency and top-1 gates resample this many first, BOOTSTRAP only when the verdict could change
_RULE = re.compile(
    r"^\s*(?:(?P<cmp>>=|<=|>|<)\s*(?P<bound>[-+]?\d*\.?\d+(?:e[-+]?\d+)?)|"
    r"(?P<delta>[-+]\d*\.?\d+(?:e[-+]?\d+)?)\s*(?P<unit>pp|%)?)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Gate:
    metric: str
    rule: str
    kind: str  # delta | bound
    value: float
    unit: str = ""  # pp | % | "" (delta) ; comparison operator (bound)

    @classmethod
    def parse(cls, metric: str, rule: Any) -> Gate:

        if metric not in COLUMNS:
            raise ConfigError(
                f"gates.{metric}: unknown metric; use a result column such as top1, ece, kl_fp, "
                "top1_agreement, latency_ms_p50"
            )
        text = str(rule)
        m = _RULE.match(text)
        if not m:
            raise ConfigError(f"gates.{metric}: cannot read rule {text!r}; write e.g. -0.5pp, +5%, +0.01, >= 0.99")
        if m["cmp"]:
            return cls(metric, text, "bound", float(m["bound"]), m["cmp"])
        return cls(metric, text, "delta", float(m["delta"]), (m["unit"] or "").lower())

    def change(self, base: float, cand: float) -> float:
        if self.unit == "pp":
            return 100.0 * (cand - base)
        if self.unit == "%":
            return 100.0 * (cand / base - 1.0) if base else math.inf
        return cand - base

    def violated(self, base: float, cand: float) -> bool:
        if self.kind == "bound":
            ok = {">=": cand >= self.value, "<=": cand <= self.value, ">": cand > self.value, "<": cand < self.value}[
                self.unit
            ]
            return not ok
        d = self.change(base, cand)
        return d > self.value if self.value >= 0 else d < self.value


def load_gates(path: str | Path | None) -> list[Gate]:
    if path is None:
        return [Gate.parse(k, v) for k, v in DEFAULT_GATES.items()]

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"gates file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the gates file as UTF-8") from None
    data = load_yaml(text, f"{p} (gates)")  # bounded: aliases, size, duplicate keys; tags safe_load refuses
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{p}: expected a mapping of metric: rule, e.g. 'top1: -0.5pp'")
    gates = []
    for metric, rules in data.items():
        for rule in rules if isinstance(rules, list) else [rules]:
            try:
                gates.append(Gate.parse(str(metric), rule))
            except ConfigError as exc:
                raise ConfigError(f"{p}: {exc}") from None
    return gates


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------
def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value, normal approximation with tie correction (n ≥ 10 per side).

    Kept as a descriptive figure only: it assumes independent samples, and per-iteration latencies are not
    (consecutive iterations share cache, clock and scheduler state), so it calls run-to-run drift significant.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n1, n2 = len(x), len(y)
    allv = np.concatenate([x, y])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    tie = float(np.sum(counts.astype(float) ** 3 - counts)) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie))
    if sigma == 0:
        return 1.0
    z = (u1 - n1 * n2 / 2.0) / sigma
    return math.erfc(abs(z) / math.sqrt(2))


def optimal_block_length(x: np.ndarray) -> int:
    """Block length for the circular block bootstrap of one run (Politis & White 2004, with the correction of
    Patton, Politis & White 2009), on log latency so that a few outliers do not dominate the autocorrelations.

    1 for independent samples; longer the more slowly the autocorrelation decays (drift within a run gives long
    blocks). Clamped to ``min(3√n, n/3)`` so that every resample still draws several blocks.
    """
    return int(block_lengths(np.asarray(x, float)[None, :])[0])


def block_lengths(runs: np.ndarray) -> np.ndarray:
    """:func:`optimal_block_length` of every row of ``runs`` (runs of equal length) at once: a check of
    thousands of cells computes them per protocol, with the same arithmetic as one run alone."""
    x = np.log(np.maximum(np.asarray(runs, float), 1.0))
    c, n = x.shape
    out = np.ones(c, np.int64)
    if n < 8 or c == 0:
        return out
    x = x - x.mean(axis=1, keepdims=True)
    var = (x * x).sum(axis=1) / n
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = min(math.ceil(math.sqrt(n)) + k_n, n - 1)
    acov = np.empty((c, m_max + 1))
    for k in range(m_max + 1):
        acov[:, k] = (x[:, : n - k] * x[:, k:]).sum(axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = acov[:, 1:] / var[:, None]
    crit = 2.0 * math.sqrt(math.log10(n) / n)
    insignificant = np.abs(rho) < crit
    # m̂: the first lag of the first run of k_n insignificant autocorrelations, so m̂ ≥ 1; the bandwidth is
    # M = min(2 m̂, m_max), and m_max when there is no such run. As arch's optimal_block_length (the reference
    # implementation): flooring M at 1 instead of 2 zeroed the lag window and gave block 1 for 65 % of
    # AR(1) runs at n = 200, ρ = 0.2, against arch's 4 %
    csum = np.concatenate([np.zeros((c, 1), np.int64), np.cumsum(insignificant, axis=1)], axis=1)
    runs_ok = (csum[:, k_n:] - csum[:, : m_max - k_n + 1]) == k_n
    m_hat = runs_ok.argmax(axis=1) + 1
    big_m = np.where(runs_ok.any(axis=1), np.minimum(2 * m_hat, m_max), m_max)
    k = np.arange(1, m_max + 1)
    t = k[None, :] / big_m[:, None]
    lam = np.where(k[None, :] <= big_m[:, None], np.where(t <= 0.5, 1.0, 2.0 * (1.0 - t)), 0.0)
    g = 2.0 * (lam * k * acov[:, 1:]).sum(axis=1)
    g0 = acov[:, 0] + 2.0 * (lam * acov[:, 1:]).sum(axis=1)
    d_cb = 4.0 / 3.0 * g0**2
    b_max = max(1, math.ceil(min(3.0 * math.sqrt(n), n / 3.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (2.0 * g**2 / d_cb) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    fine = (var != 0) & (d_cb > 0) & (g != 0) & np.isfinite(b)
    out[fine] = np.minimum(np.maximum(1, np.round(b[fine]).astype(np.int64)), b_max)
    return out


def resample_runs(
    runs: list[np.ndarray],
    stat: Any,
    reps: int = BOOTSTRAP,
    seed: int = 0,
    block: int | None = None,
) -> np.ndarray:
    """``reps`` bootstrap replicates of ``stat`` (a function of a (reps, n) array, along axis 1) over one cell's
    raw samples, respecting how they were taken:

    - between repeats: when the cell has several repeats (``measure.repeats`` > 1), each replicate draws that
      many repeats with replacement, so repeat-to-repeat drift widens the interval;
    - within a repeat: a circular block bootstrap, so autocorrelated iterations are not treated as independent.
      The block length is the longest :func:`optimal_block_length` of the repeats unless ``block`` is given.

    A replicate pools its resampled repeats the way the row's statistics pool the raw repeats. Repeats of
    unequal length each contribute their mean length. Resampled in chunks, so memory stays bounded.
    """
    runs = [np.asarray(r, float) for r in runs if len(r)]
    if not runs:
        raise ValueError("no samples to resample")
    flat = np.concatenate(runs)[None, :]
    block = block or max(optimal_block_length(r) for r in runs)
    out = np.empty(reps)
    ranked = _ranked(flat) if isinstance(stat, LatencyStatistic) and stat.by_rank else None
    lengths = tuple(len(r) for r in runs)
    chunks = _resample_indices(lengths, block, reps, seed)
    band = ranked is not None and len(chunks[0][1]) >= BAND_MIN
    all_counts = _resample_counts(lengths, block, reps, seed) if band else (None,) * len(chunks)
    for (lo, idx), counts in zip(chunks, all_counts, strict=True):
        out[lo : lo + len(idx)] = _replicates(flat, idx, stat, ranked, counts)[0]
    return out


@functools.lru_cache(maxsize=16)
def _resample_indices(lengths_t: tuple[int, ...], block: int, reps: int, seed: int) -> tuple[tuple[int, Any], ...]:
    """The replicate index chunks of :func:`resample_runs` for runs of these lengths: a function of the shapes and
    the seed only, so cells measured with the same protocol share one draw (a check of thousands of cells draws
    it once instead of once per cell; every cell gets exactly the indices it would have drawn itself)."""
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths_t)
    n_runs = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    length = round(float(lengths.mean()))
    n_blocks = -(-length // block)
    chunk = max(1, 2_000_000 // (n_runs * n_blocks * block))
    out = []
    for lo in range(0, reps, chunk):
        m = min(chunk, reps - lo)
        pick = rng.integers(0, n_runs, (m, n_runs)) if n_runs > 1 else np.zeros((m, 1), np.int64)
        n_j = lengths[pick][..., None, None]  # (m, runs, 1, 1)
        starts = (rng.random((m, n_runs, n_blocks, 1)) * n_j).astype(np.int64)
        within = starts + np.arange(block)
        if block <= lengths.min():  # starts < n_j and block ≤ n_j: wrap by one subtraction (modulo is slower)
            within -= n_j * (within >= n_j)
        else:
            within %= n_j
        within = within.reshape(m, n_runs, n_blocks * block)[..., :length]
        idx = (offsets[pick][..., None] + within).reshape(m, n_runs * length)
        idx.setflags(write=False)
        out.append((lo, idx))
    return tuple(out)


def percentile_rows(a: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(a, q, axis=1)`` (linear interpolation) from the sorted rows: the same order statistics as
    ``np.partition`` with two kth, which is 2-5× slower than a sort on bootstrap arrays (200-20,000 wide)."""
    h = (a.shape[1] - 1) * q / 100.0
    lo, hi = math.floor(h), math.ceil(h)
    part = np.sort(a, axis=1)
    return part[:, lo] + (h - lo) * (part[:, hi] - part[:, lo])


@dataclass(frozen=True)
class LatencyStatistic:
    """A row's timing column as a function of raw latencies (ns, along axis 1), in its units: the mean, a
    percentile (linear interpolation), or FPS from the median. Percentiles of resamples are also computed from
    ranks (:meth:`of_ranks`), with the same arithmetic, so bit for bit the same."""

    q: float | None  # None: the mean
    batch_size: int = 1
    fps: bool = False

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self.q is None:
            return np.mean(a, axis=1) / 1e6
        return self._finish(percentile_rows(a, self.q))

    @property
    def by_rank(self) -> bool:
        """Percentiles (and FPS) of resamples come from ranks (:meth:`of_ranks`); the mean from the values."""
        return self.q is not None

    def _finish(self, v: np.ndarray) -> np.ndarray:
        return self.batch_size * 1e9 / v if self.fps else v / 1e6

    def of_positions(self, t_lo: np.ndarray, t_hi: np.ndarray, frac: float, ordered: np.ndarray) -> np.ndarray:
        """The statistic given the sorted positions of the two order statistics it interpolates (cells, m):
        the same arithmetic as :meth:`of_ranks`, so the same bits."""
        v_lo = np.take_along_axis(ordered, t_lo.astype(np.intp, copy=False), axis=1)
        v_hi = np.take_along_axis(ordered, t_hi.astype(np.intp, copy=False), axis=1)
        return self._finish(v_lo + frac * (v_hi - v_lo))

    def of_ranks(self, ranks: np.ndarray, ordered: np.ndarray) -> np.ndarray:
        """The statistic of resamples (cells, m, width) given as each cell's ranks into ``ordered`` (cells, n),
        its samples sorted (ranks from a stable argsort): the k-th smallest rank is the k-th smallest value, and
        sorting small integers (radix) is ~9× faster than sorting the float samples. Same arithmetic as
        :meth:`__call__`, so the same bits. Returns (cells, m)."""
        h = (ranks.shape[-1] - 1) * self.q / 100.0
        lo, hi = math.floor(h), math.ceil(h)
        r = np.sort(ranks, axis=-1)
        v_lo = np.take_along_axis(ordered, r[..., lo], axis=1)
        v_hi = np.take_along_axis(ordered, r[..., hi], axis=1)
        return self._finish(v_lo + (h - lo) * (v_hi - v_lo))


def latency_statistic(metric: str, batch_size: int = 1) -> LatencyStatistic:
    """The function of raw latencies (ns, along axis 1) that produces a row's timing column, in its units."""
    if metric == "latency_ms_mean":
        return LatencyStatistic(None)
    if metric == "fps":
        return LatencyStatistic(50, batch_size, fps=True)
    return LatencyStatistic(int(metric.rsplit("_p", 1)[1]))


def _ranked(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ranks, sorted values, order) of each row of ``flat`` (cells, n): ranks int16 where they fit (radix-sorted),
    and the stable sort order (the position of each rank)."""
    order = np.argsort(flat, axis=1, kind="stable")
    n = flat.shape[1]
    ranks = np.empty(flat.shape, np.int16 if n <= np.iinfo(np.int16).max else np.int64)
    np.put_along_axis(ranks, order, np.arange(n, dtype=ranks.dtype)[None, :], axis=1)
    return ranks, np.take_along_axis(flat, order, axis=1), order


def _replicates(flat: np.ndarray, idx: np.ndarray, stat: Any, ranked: Any = None, counts: Any = None) -> np.ndarray:
    """``stat`` of every resample ``idx`` (m, width) of every row of ``flat`` (cells, n): (cells, m).
    ``ranked``: :func:`_ranked` of ``flat``, when the caller reuses it across chunks; ``counts``: the
    :class:`PositionCounts` of ``idx``, for the order-statistic band (percentiles of many cells)."""
    cells, n = flat.shape
    m, width = idx.shape
    if isinstance(stat, LatencyStatistic) and stat.by_rank:
        ranks, ordered, order = ranked if ranked is not None else _ranked(flat)
        if counts is not None:
            return stat.of_positions(*_order_positions(ranks, order, idx, counts, stat.q), ordered)
        if cells <= 2 or m >= 1000:  # the fastest gather differs with the shape (measured)
            return stat.of_ranks(np.stack([ranks[c].take(idx) for c in range(cells)]), ordered)
        return stat.of_ranks(ranks[:, idx], ordered)
    if cells == 1:
        return stat(flat[0][idx]).reshape(1, m)
    offsets = (np.arange(cells) * n)[:, None, None]
    return stat(flat.ravel().take(offsets + idx[None]).reshape(-1, width)).reshape(cells, m)


# the order-statistic band spans BAND_SDS standard deviations of the resampled count (blocks at their worst) plus
# BAND_MARGIN ranks each way: ~1 resample in 10,000 crosses outside it and is sorted instead (measured at 10k
# cells: 3.5 is the fastest; 4.5 is 18 % slower with none outside, 2.5 slower again from sorting 0.7 %)
BAND_SDS, BAND_MARGIN = 3.5, 2
# (cells × replicates) from which the band beats sorting every resample (measured: 2× at 800, 20-80× at 64 cells)
BAND_MIN = 1_000


class PositionCounts(NamedTuple):
    """How often each sample position occurs in each resample of one index chunk, for the order-statistic band."""

    exact: np.ndarray  # (n, m) int16/int32: summed rank by rank inside the band
    real: np.ndarray  # the same as float32: summed by one matrix product below the band (exact: small integers)
    block: int  # the block length the resamples were drawn with


@functools.lru_cache(maxsize=16)
def _resample_counts(lengths_t: tuple[int, ...], block: int, reps: int, seed: int) -> tuple[PositionCounts, ...]:
    """:class:`PositionCounts` of each chunk of :func:`_resample_indices` (same key, same draw, cached alike)."""
    n = sum(lengths_t)
    out = []
    for _, idx in _resample_indices(lengths_t, block, reps, seed):
        m, width = idx.shape
        wt = np.bincount((idx * m + np.arange(m)[:, None]).ravel(), minlength=n * m).reshape(n, m)
        wt = wt.astype(np.int16 if width <= np.iinfo(np.int16).max else np.int32)
        out.append(PositionCounts(wt, wt.astype(np.float32), block))
    return tuple(out)


def _order_positions(
    ranks: np.ndarray, order: np.ndarray, idx: np.ndarray, counts: PositionCounts, q: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """The sorted positions (into each cell's ordered samples) of the two order statistics that the ``q``-th
    percentile of every resample interpolates, without sorting any resample: (t_lo, t_hi, h − lo).

    The k-th smallest of a resample is the sample of rank t where C(t), how many resampled elements have rank
    ≤ t, first exceeds k. C is a sum of the resample's position counts, which every cell of a protocol shares:
    below a band around the expected rank it is one matrix product over all cells, and inside the band it is
    accumulated rank by rank. Resamples whose crossing falls outside the band (:data:`BAND_SDS`) are sorted
    instead. Positions, and so every replicate, are exactly the sort's."""
    cells, n = ranks.shape
    m, width = idx.shape
    h = (width - 1) * q / 100.0
    lo, hi = math.floor(h), math.ceil(h)
    p = (h + 0.5) / width
    sd = math.sqrt(width * p * (1.0 - p) * counts.block)
    centre, half = round(p * n), math.ceil((BAND_SDS * sd + BAND_MARGIN) * n / width)
    band_lo, band_hi = max(0, centre - half), min(n, centre + half + 1)
    acc_t = counts.exact.dtype
    if band_lo:
        acc = ((ranks < band_lo).astype(np.float32) @ counts.real).astype(acc_t)
    else:
        acc = np.zeros((cells, m), acc_t)
    outside = acc > lo
    # the counts of band ranks at or below each crossing: uint8 where the band fits (the fastest adds)
    t_lo = np.zeros((cells, m), np.uint8 if band_hi - band_lo <= 255 else np.int32)
    t_hi = np.zeros_like(t_lo)
    hit = np.empty((cells, m), bool)
    hit_n = hit.view(np.uint8) if t_lo.dtype == np.uint8 else hit
    row = np.empty((cells, m), acc_t)
    for t in range(band_lo, band_hi):
        np.take(counts.exact, order[:, t], axis=0, out=row)
        np.add(acc, row, out=acc)
        np.less_equal(acc, lo, out=hit)
        np.add(t_lo, hit_n, out=t_lo)
        if hi != lo:
            np.less_equal(acc, hi, out=hit)
        np.add(t_hi, hit_n, out=t_hi)
    outside |= acc <= hi
    t_lo, t_hi = (t.astype(np.intp) + band_lo for t in (t_lo, t_hi))
    if outside.any():
        c, r = np.nonzero(outside)
        srt = np.sort(ranks[c[:, None], idx[r]], axis=1)
        t_lo[c, r], t_hi[c, r] = srt[:, lo], srt[:, hi]
    return t_lo, t_hi, h - lo


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = BOOTSTRAP, seed: int = 0) -> tuple[Any, Any]:
    """Replicates of (mean(a), mean(b)) over the same resampled sample indices (evaluation samples are
    independent draws, so i.i.d. resampling is right here)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    if ((a == 0) | (a == 1)).all() and ((b == 0) | (b == 1)).all():
        # correct/incorrect flags: resampling n pairs i.i.d. is drawing how many land in each of the 4 (a, b)
        # outcomes, a multinomial over their observed frequencies — the same distribution in O(reps), not O(reps·n)
        g = a.astype(np.int64) + 2 * b.astype(np.int64)
        counts = rng.multinomial(n, np.bincount(g, minlength=4) / n, size=reps)
        return (counts[:, 1] + counts[:, 3]) / n, (counts[:, 2] + counts[:, 3]) / n
    idx = rng.integers(0, n, (reps, n))
    return a[idx].mean(axis=1), b[idx].mean(axis=1)


def trinomial_sum_pmf(n: int, p_minus: float, p_plus: float) -> tuple[int, np.ndarray]:
    """The exact distribution of K = (number of −1s) − ... of n i.i.d. draws valued −1, 0, +1 with probabilities
    (p_minus, 1 − p_minus − p_plus, p_plus): returns (k0, pmf) with P(K = k0 + j) = pmf[j].

    From the characteristic function (1 − p₋ − p₊ + p₋e^{−it} + p₊e^{it})ⁿ sampled at M points and inverted by
    one FFT; the pmf is real, so the half-spectrum and a real inverse FFT suffice (1.8× faster than the full
    complex FFT, equal to ~2e-15). The window covers the mean ± (10σ + 20), or the whole support [−n, n] when
    that is smaller: by Bernstein's inequality the mass outside it, which the FFT would fold back in, is below
    e⁻⁴⁰."""
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


def _quantile_of_pmf(k0: int, pmf: np.ndarray, q: float) -> int:
    """The smallest k with P(K ≤ k) ≥ q (the distribution's own q-quantile)."""
    cdf = np.cumsum(pmf)
    return k0 + int(min(np.searchsorted(cdf, q - 1e-12, side="left"), len(pmf) - 1))


def exact_flag_intervals(gate: Gate, a: np.ndarray, b: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (1 − ALPHA) percentile intervals of the paired bootstrap of two 0/1 flag vectors, exactly: (interval
    of the gated quantity, interval of the change), for a top-1 gate in pp or absolute units or a bound.

    Resampling n pairs i.i.d. draws how many land in each of the four (a, b) outcomes; the change in the mean is
    (#b-only − #a-only)/n, a sum of n draws valued −1/0/+1, and the candidate's mean a binomial. Their
    distributions are computed, not sampled: the interval the Monte Carlo bootstrap approaches as its replicates
    grow, with no replicate noise (and no 2,000-replicate rerun near a threshold)."""
    n = len(a)
    g = np.bincount(np.asarray(a, np.int64) + 2 * np.asarray(b, np.int64), minlength=4)
    d = _sum_quantiles(n, int(g[1]), int(g[2]))
    if gate.kind == "bound":
        return _sum_quantiles(n, 0, int(g[2] + g[3])), d
    scale = 100.0 if gate.unit == "pp" else 1.0
    return (scale * d[0], scale * d[1]), (scale * d[0], scale * d[1])


@functools.lru_cache(maxsize=65_536)
def _sum_quantiles(n: int, n_minus: int, n_plus: int) -> tuple[float, float]:
    """The (1 − ALPHA) interval of K/n for :func:`trinomial_sum_pmf` at the observed frequencies: a function of
    three counts, so the cells of a check that share them (same evaluation set size, same counts of one-sided
    errors: common at 10k cells) compute it once."""
    k0, pmf = trinomial_sum_pmf(n, n_minus / n, n_plus / n)
    return _quantile_of_pmf(k0, pmf, ALPHA / 2) / n, _quantile_of_pmf(k0, pmf, 1 - ALPHA / 2) / n


# ---------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    cell: str
    gate: str
    baseline: float
    candidate: float
    change: str
    evidence: str
    verdict: str  # pass | fail | inconclusive
    mark: str
    reason: str = ""

    @classmethod
    def failed(cls, cell: str, gate: str, reason: str) -> Verdict:
        """A verdict with no numbers to compare: the candidate cell itself is unusable."""
        return cls(cell, gate, math.nan, math.nan, "", "", "fail", "x", reason[:160])

    @property
    def verdict_text(self) -> str:
        """The verdict with its mark spelled out: 'x fail', '~ inconclusive', '+ pass (better)', 'pass'."""
        extra = (
            {"+": " (better)", "-": " (worse, within the gate)"}.get(self.mark, "") if self.verdict == "pass" else ""
        )
        return f"{self.mark} {self.verdict}{extra}".strip()


@dataclass
class CheckResult:
    verdicts: list[Verdict]
    missing: list[str]
    notes: list[str]

    @property
    def failed(self) -> bool:
        return any(v.verdict == "fail" for v in self.verdicts)

    @property
    def inconclusive(self) -> bool:
        return any(v.verdict == "inconclusive" for v in self.verdicts)

    def counts(self) -> dict[str, int]:
        return {k: sum(v.verdict == k for v in self.verdicts) for k in ("fail", "inconclusive", "pass")}

    def summary(self) -> str:
        """One line for logs: verdict counts, cells compared and cells left out."""
        c = self.counts()
        cells = len({v.cell for v in self.verdicts})
        line = (
            f"{c['fail']} fail, {c['inconclusive']} inconclusive, {c['pass']} pass "
            f"({len(self.verdicts)} gate(s) on {cells} cell(s)"
        )
        return line + (f"; {len(self.missing)} not compared)" if self.missing else ")")


@dataclass(frozen=True)
class Predictions:
    """One record's per-sample predictions, in sample order."""

    correct: np.ndarray  # bool: the prediction matched the label
    pred: np.ndarray | None  # the predicted classes (None: not read)
    labelled: bool  # every sample had a label


def _load(path: Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Latest rows of a results folder, and its raw samples and predictions by record id, read once."""

    rows = load_results(path)
    return rows, _record_data(path, list(rows.loc[rows.status == "ok", "record_id"]))


def _record_data(path: Path, record_ids: list[str], classes: bool = True) -> dict[str, dict[str, Any]]:
    """Raw samples and predictions of ``record_ids`` by record id (``compare`` asks only for the cells it judges:
    a check of one model in a 10k-row folder reads that model's samples, not the folder's); ``classes``: see
    :func:`predictions_of`."""

    per_record: dict[str, dict[str, Any]] = {"samples": {}, "predictions": {}}
    if not record_ids:
        return per_record
    stores = stores_under(path)
    per_record["samples"] = samples_of(stores, record_ids)
    per_record["predictions"] = predictions_of(stores, record_ids, classes)
    return per_record


def samples_of(stores: list[Any], record_ids: list[str]) -> dict[str, list[np.ndarray]]:
    """Each record's raw latencies (ns, float), one array per repeat in timing order."""

    data = record_arrays(stores, "samples", record_ids)
    lat = data.columns["latency_ns"]
    return {rid: [lat[a:b] for a, b in spans] for rid, spans in data.repeats.items()}


def predictions_of(stores: list[Any], record_ids: list[str], classes: bool = True) -> dict[str, Predictions]:
    """Each record's per-sample predictions as one :class:`Predictions`, in sample order; ``classes=False``
    leaves the predicted classes unread (``pred`` None: a check judges only correct/wrong)."""

    wanted = ("correct", "has_label", *(("pred",) if classes else ()))
    data = record_arrays(stores, "predictions", record_ids, wanted)
    ok, lab, pred = data.columns["correct"], data.columns["has_label"], data.columns.get("pred")
    return {
        rid: Predictions(ok[a:b], None if pred is None else pred[a:b], bool(lab[a:b].all()))
        for rid, (a, b) in data.spans.items()
    }


def compare(
    baseline: str | Path,
    candidate: str | Path,
    gates: list[Gate],
    baseline_model: str | None = None,
    candidate_model: str | None = None,
    allow_mismatch: bool = False,
) -> CheckResult:
    """Match cells of two results folders and judge every gate on every matched cell."""

    base_rows, cand_rows = load_results(Path(baseline)), load_results(Path(candidate))
    notes: list[str] = []
    base_rows = _select_model(base_rows, baseline_model, "--baseline-model", baseline)
    cand_rows = _select_model(cand_rows, candidate_model, "--candidate-model", candidate)
    same_models = set(base_rows["model"]) == set(cand_rows["model"])
    key_cols = (["model"] if same_models and not (baseline_model or candidate_model) else []) + ["backend", "spec_id"]
    bdev, cdev = set(base_rows["device"]), set(cand_rows["device"])
    if bdev != cdev:
        if not allow_mismatch:
            raise UserError(
                f"baseline was measured on {sorted(bdev)}, candidate on {sorted(cdev)}: latency is not "
                "comparable across devices; pass --allow-mismatch to compare anyway"
            )
        notes.append(f"devices differ ({sorted(bdev)} vs {sorted(cdev)}); compared anyway (--allow-mismatch)")
    else:
        key_cols.append("device")
    # plain dicts of the fields a verdict reads, not Series: a 10k-cell check reads ~30 of them per cell pair
    wanted = [*key_cols, *ROW_FIELDS, *COMPARABLE, *(g.metric for g in gates)]
    b_idx = {tuple(r[k] for k in key_cols): r for r in _row_dicts(base_rows, wanted)}
    c_idx = {tuple(r[k] for k in key_cols): r for r in _row_dicts(cand_rows, wanted)}
    judged = [k for k in b_idx if k in c_idx and b_idx[k]["status"] == "ok" and c_idx[k]["status"] == "ok"]

    def side(path: str | Path, idx: dict[Any, Any], seed: int) -> dict[str, Any]:
        data = _record_data(Path(path), [idx[k]["record_id"] for k in judged], classes=False)
        _screen_latency(gates, [idx[k] for k in judged], data, seed)
        return data

    base_data, cand_data = _both((side, baseline, b_idx, 0), (side, candidate, c_idx, 1))
    _settle_latency(gates, [(b_idx[k], c_idx[k]) for k in judged], base_data, cand_data)
    verdicts: list[Verdict] = []
    idle: dict[tuple[str, str], int] = {}  # gates that do not apply to a cell (untimed, unlabelled): counted
    both_idle: dict[str, int] = {}  # cells skipped/unavailable on both sides, by the baseline's status
    missing = [" · ".join(map(str, k)) + " (only in baseline)" for k in b_idx if k not in c_idx]
    missing += [" · ".join(map(str, k)) + " (only in candidate)" for k in c_idx if k not in b_idx]
    for key in [k for k in b_idx if k in c_idx]:
        b, c = b_idx[key], c_idx[key]
        label = " · ".join(str(v) for k, v in zip(key_cols, key, strict=True) if k != "device")
        if b["status"] != "ok":
            answers = ("skipped", "unavailable")  # an unsupported spec or an absent SDK: nothing ran on either side
            if b["status"] in answers and c["status"] in answers:
                both_idle[b["status"]] = both_idle.get(b["status"], 0) + 1
                continue
            # nothing to judge the candidate against: said, never a silent gap
            first = str(b.get("status_message") or "").strip().splitlines()[:1]
            missing.append(f"{label} (baseline cell is {b['status']}{': ' + first[0][:160] if first else ''})")
            continue
        if c["status"] != "ok":
            verdicts.append(Verdict.failed(label, "status", f"candidate cell is {c['status']}: {c['status_message']}"))
            continue
        b_bad, c_bad = (str(r.get("audit") or "").startswith("mismatch") for r in (b, c))
        if c_bad and not b_bad:
            why = str(c["audit"]).removeprefix("mismatch: ")
            verdicts.append(Verdict.failed(label, "spec audit", f"candidate's artifact contradicts its spec: {why}"))
            continue
        if c_bad:
            notes.append(f"{label}: both artifacts contradict the spec label (spec audit): {str(c['audit'])[:120]}")
        # the protocol, not the achieved count: a min_duration_s stop rule runs more iterations on faster cells
        for field, bv, cv in _comparability(b, c):
            if bv == cv:
                continue
            if not allow_mismatch:
                raise UserError(
                    f"{label}: {field} differs (baseline {bv!r}, candidate {cv!r}); "
                    "results are not comparable — rerun with the same settings or pass --allow-mismatch"
                )
            notes.append(f"{label}: {field} differs ({bv!r} vs {cv!r}); compared anyway (--allow-mismatch)")
        if b["backend_version"] != c["backend_version"]:
            notes.append(f"{label}: backend version {b['backend_version']} → {c['backend_version']}")
        for gate in gates:
            verdict = _judge(gate, label, b, c, base_data, cand_data)
            if verdict is None:
                why = (gate.metric, _why_missing(gate.metric, b))
                idle[why] = idle.get(why, 0) + 1
            else:
                verdicts.append(verdict)
    for (metric, why), n in idle.items():
        notes.append(f"{metric} gate not applicable to {n} cell(s): {why} on both sides")
    if both_idle:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(both_idle.items()))
        total = sum(both_idle.values())
        notes.append(f"{total} cell(s) ran on neither side ({counts} in the baseline): nothing to gate")
    return CheckResult(verdicts, missing, notes)


def _why_missing(metric: str, row: dict[str, Any]) -> str:
    """Why a cell has no value for ``metric`` by design, or '' when nothing explains it."""
    if metric in LATENCY_METRICS:
        if row.get("timed") is False:
            return "not timed (models[].timing: false: a fidelity-only cell)"
        if str(row.get("numbers", "")) in ("simulated", "estimated"):
            return f"no host timing ({row.get('numbers')} numbers)"
    elif metric in ("top1", "fp_top1", "top1_gap", "ece", "ece_gap"):
        return "no labels in the evaluation data"
    return ""


ROW_FIELDS = (
    "record_id", "status", "status_message", "backend_version", "backend_options", "device", "batch_size",
    "eval_sha256", "loadavg_1m_before", "loadavg_1m_after", "audit", "timed",
)  # fmt: skip


def _row_dicts(rows: Any, fields: list[str]) -> list[dict[str, Any]]:
    """The rows as plain dicts of ``fields`` (those the frame has), column by column."""
    cols = [f for f in dict.fromkeys(fields) if f in rows.columns]
    values = [rows[c].tolist() for c in cols]
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*values, strict=True)]


COMPARABLE = ("warmup", "min_iterations", "min_duration_s", "batch_size", "eval_sha256", "numbers")


def _comparability(b: Any, c: Any) -> list[tuple[str, Any, Any]]:
    """(field, baseline, candidate) for everything that must match for two cells to be compared: the timing
    protocol, the evaluation set, what kind of numbers they are (measured vs simulated) and the backend options
    (threads, execution provider, ...), compared as parsed JSON so key order does not matter."""
    import json

    out = [(f, b.get(f), c.get(f)) for f in COMPARABLE]

    def opts(row: Any) -> Any:
        text = row.get("backend_options") or "{}"
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            return text

    out.append(("backend_options", opts(b), opts(c)))
    return out


def _select_model(rows: Any, model: str | None, flag: str, where: Any) -> Any:
    if model is None:
        return rows
    if model not in set(rows["model"]):
        raise UserError(f"{flag} {model!r} not in {where} (models: {', '.join(sorted(set(rows['model'])))})")
    return rows[rows["model"] == model]


def _bad(gate: Gate, q: float) -> bool:
    """Whether the gated quantity (the change for delta gates, the candidate's value for bounds) is past the gate."""
    if gate.kind == "bound":
        return not {">=": q >= gate.value, "<=": q <= gate.value, ">": q > gate.value, "<": q < gate.value}[gate.unit]
    return q > gate.value if gate.value >= 0 else q < gate.value


def _worse_sign(gate: Gate) -> int:
    """+1 when a rise of the metric is bad (latency +5%, ece +1pp, <= bounds), -1 when a drop is."""
    if gate.kind == "bound":
        return -1 if gate.unit in (">=", ">") else 1
    return 1 if gate.value >= 0 else -1


def decide(gate: Gate, base: float, cand: float, base_reps: Any, cand_reps: Any) -> tuple[str, str, int, str]:
    """Verdict of one gate from the point estimates and bootstrap replicates of both sides.

    The interval is the (1 − ALPHA) percentile interval of the gated quantity itself (median ratio for a
    ``latency_ms_p50: +5%`` gate, p99 ratio for a p99 gate, the top-1 change in pp ...). **fail**: the point
    estimate is past the gate and the whole interval is too; **inconclusive**: they disagree; **pass**: neither.
    The direction (for the marks) is the interval of the change against zero. Returns (verdict, mark text,
    direction, interval text).
    """
    lo_q, hi_q = 100 * ALPHA / 2, 100 * (1 - ALPHA / 2)
    q_reps, d_reps = _quantities(gate, base_reps, cand_reps)
    lo, hi = _interval(q_reps, lo_q, hi_q)
    d_lo, d_hi = (lo, hi) if d_reps is q_reps else _interval(d_reps, lo_q, hi_q)
    return decide_from_intervals(gate, base, cand, (lo, hi), (d_lo, d_hi))


def decide_from_intervals(
    gate: Gate, base: float, cand: float, q_interval: tuple[float, float], d_interval: tuple[float, float]
) -> tuple[str, str, int, str]:
    """:func:`decide` once the intervals are known (of the gated quantity, and of the change)."""
    (lo, hi), (d_lo, d_hi) = q_interval, d_interval
    q_point = gate.change(base, cand) if gate.kind == "delta" else cand
    worse = _worse_sign(gate)
    direction = 0
    if d_lo > 0 or d_hi < 0:
        direction = -1 if (d_lo > 0) == (worse > 0) else 1
    point_bad = _bad(gate, q_point)
    all_bad = _bad(gate, lo) and _bad(gate, hi)
    unit = "" if gate.kind == "bound" else gate.unit
    interval = f"{100 * (1 - ALPHA):.0f}% CI [{lo:+.3g}, {hi:+.3g}]{unit}"
    if point_bad and all_bad:
        return "fail", "x", direction, interval
    if point_bad or all_bad:
        return "inconclusive", "~", direction, interval
    return "pass", "+" if direction > 0 else ("-" if direction < 0 else ""), direction, interval


def _interval(reps: np.ndarray, lo_q: float, hi_q: float) -> tuple[float, float]:
    """The percentile interval of replicates, ignoring NaN ones (np.percentile when there are none: ~5× faster)."""
    r = np.asarray(reps, float)
    if np.isnan(r).any():
        lo, hi = np.nanpercentile(r, [lo_q, hi_q])
        return float(lo), float(hi)
    lo, hi = percentiles(r, (lo_q, hi_q))
    return lo, hi


def percentiles(a: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(a, qs)`` (linear method, finite 1-D ``a``) bit for bit, from one sort: numpy's general
    path costs ~50 µs a call, and a 10k-cell check asks ~40,000 times."""
    srt = np.sort(a)
    n = len(srt)
    out = []
    for q in qs:
        h = (n - 1) * (q / 100.0)
        i = min(max(math.floor(h), 0), n - 1)
        j = min(i + 1, n - 1)
        t = h - i
        lo, hi = srt[i], srt[j]
        d = hi - lo
        out.append(float(hi - d * (1 - t) if t >= 0.5 else lo + d * t))  # numpy's _lerp, same rounding
    return out


def _quantities(gate: Gate, base_reps: Any, cand_reps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of the gated quantity (the change, or the candidate's value for a bound) and of the change."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if gate.kind == "delta":
            q_reps = np.asarray(gate.change(base_reps, cand_reps) if gate.unit != "%" else _pct(base_reps, cand_reps))
            return q_reps, q_reps
        cand = np.asarray(cand_reps, float)
        return cand, cand - np.asarray(base_reps, float)


def settled(gate: Gate, base_reps: Any, cand_reps: Any) -> bool:
    """Whether a verdict from few replicates stands: each end of both intervals the verdict reads (the gated
    quantity's against the threshold, the change's against zero) lies more than a quarter of that interval's
    width from its boundary. From 200 replicates a 2.5 % quantile's Monte Carlo error is about 5 % of a normal
    interval's width, so the margin is ~5 standard errors: more replicates would not move an end across."""
    lo_q, hi_q = 100 * ALPHA / 2, 100 * (1 - ALPHA / 2)
    q_reps, d_reps = _quantities(gate, base_reps, cand_reps)
    if all(np.isfinite(r).all() and np.ptp(r) == 0 for r in (q_reps, d_reps)):
        return True  # no spread at all (identical paired samples): more replicates would draw the same value
    for reps, boundary in ((q_reps, gate.value), (d_reps, 0.0)):
        if not np.isfinite(reps).all():
            return False
        lo, hi = percentiles(np.asarray(reps, float), (lo_q, hi_q))
        if min(abs(lo - boundary), abs(hi - boundary)) <= 0.25 * (hi - lo):
            return False
    return True


def settled_rows(gate: Gate, base_reps: np.ndarray, cand_reps: np.ndarray) -> np.ndarray:
    """:func:`settled` of every row pair of two (pairs, reps) replicate arrays at once, with the same arithmetic
    (numpy's linear percentile, bit for bit), so a check of thousands of cells asks once per gate."""
    lo_q, hi_q = 100 * ALPHA / 2, 100 * (1 - ALPHA / 2)
    q_reps, d_reps = _quantities(gate, np.asarray(base_reps, float), np.asarray(cand_reps, float))
    with np.errstate(invalid="ignore", over="ignore"):
        finite = [np.isfinite(r).all(axis=1) for r in (q_reps, d_reps)]
        flat = finite[0] & finite[1] & (np.ptp(q_reps, axis=1) == 0) & (np.ptp(d_reps, axis=1) == 0)
        ok = finite[0] & finite[1]
        for reps, boundary in ((q_reps, gate.value), (d_reps, 0.0)):
            srt = np.sort(reps, axis=1)
            lo, hi = (_lerp_at(srt, q) for q in (lo_q, hi_q))
            ok &= ~(np.minimum(np.abs(lo - boundary), np.abs(hi - boundary)) <= 0.25 * (hi - lo))
    return flat | ok


def interval_rows(gate: Gate, base_reps: np.ndarray, cand_reps: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`decide`'s two intervals for every row pair at once: (q_lo, q_hi, d_lo, d_hi, usable). Rows with a
    NaN replicate are not usable here (their percentiles skip NaN: :func:`_interval` row by row)."""
    lo_q, hi_q = 100 * ALPHA / 2, 100 * (1 - ALPHA / 2)
    q_reps, d_reps = _quantities(gate, np.asarray(base_reps, float), np.asarray(cand_reps, float))
    usable = ~(np.isnan(q_reps).any(axis=1) | np.isnan(d_reps).any(axis=1))
    out = []
    for reps in (q_reps,) if d_reps is q_reps else (q_reps, d_reps):
        srt = np.sort(reps, axis=1)
        out += [_lerp_at(srt, lo_q), _lerp_at(srt, hi_q)]
    return (*out, *out, usable) if d_reps is q_reps else (*out, usable)


def _lerp_at(srt: np.ndarray, q: float) -> np.ndarray:
    """:func:`percentiles` of every sorted row: the same index, weight and rounding, vectorised."""
    n = srt.shape[1]
    h = (n - 1) * (q / 100.0)
    i = min(max(math.floor(h), 0), n - 1)
    j = min(i + 1, n - 1)
    t = h - i
    lo, hi = srt[:, i], srt[:, j]
    d = hi - lo
    return hi - d * (1 - t) if t >= 0.5 else lo + d * t


def _pct(base: Any, cand: Any) -> Any:
    return 100.0 * (np.asarray(cand, float) / np.asarray(base, float) - 1.0)


def _oversubscribed(b: Any, c: Any) -> str:
    """Why a latency change cannot be a regression: a side whose 1-min load average, before or after its timed
    loop, exceeded the cores it could use (from the ``device`` id) competed for the CPU with other work, and a
    whole run shifted that way looks exactly like a slowdown. Empty when neither side was oversubscribed."""

    for side, row in (("baseline", b), ("candidate", c)):
        cores = cores_of(row.get("device", ""))
        loads = [float(row.get(k, math.nan)) for k in ("loadavg_1m_before", "loadavg_1m_after")]
        load = max((x for x in loads if x == x), default=math.nan)
        if cores and load > cores:
            return f"the {side}'s machine was oversubscribed (load {load:.1f} on {cores} cores)"
    return ""


def _blocks(data: dict[str, Any], rids: list[str]) -> dict[str, int]:
    """Each record's bootstrap block length (the longest of its repeats'), computed per run length in batches
    and kept in ``data["blocks"]``."""
    blocks = data.setdefault("blocks", {})
    by_len: dict[int, list[tuple[str, np.ndarray]]] = {}
    for rid in rids:
        if rid not in blocks:
            for r in data["samples"].get(rid, []):
                by_len.setdefault(len(r), []).append((rid, r))
    for group in by_len.values():
        for (rid, _), b in zip(group, block_lengths(np.stack([r for _, r in group])), strict=True):
            blocks[rid] = max(blocks.get(rid, 1), int(b))
    return blocks


def _both(*calls: tuple[Any, ...]) -> list[Any]:
    """Each ``(fn, *args)`` called in its own thread, their results in order: the two sides of a check load
    (Parquet reads) and resample (large numpy operations) with the GIL released, so a second core halves them."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


def _settle_latency(
    gates: list[Gate], pairs: list[tuple[Any, Any]], bdata: dict[str, Any], cdata: dict[str, Any]
) -> None:
    """Every screened cell pair's verdict intervals, batched: :func:`settled_rows` judges the screenings at once,
    the pairs it does not settle get the full resampling (BOOTSTRAP replicates, into ``data["full"]``), and the
    intervals of all of them land in ``bdata["intervals"]`` for :func:`_judge`, which computes anything missing."""
    for gate in (g for g in gates if g.metric in LATENCY_METRICS):
        screened = []  # (pair key, baseline row, candidate row)
        for b, c in pairs:
            key = (b["record_id"], c["record_id"], gate.metric, int(b.get("batch_size", 1) or 1))
            if (key[0], *key[2:]) in bdata.get("screen", {}) and key[1:] in cdata.get("screen", {}):
                screened.append((key, b, c))
        if not screened:
            continue
        stands = settled_rows(gate, *_stacked(screened, bdata, cdata, "screen"))
        near = [s for s, ok in zip(screened, stands, strict=True) if not ok]
        _both(*((_screen_latency, [gate], [s[i] for s in near], data, seed, BOOTSTRAP, "full")
                for i, data, seed in ((1, bdata, 0), (2, cdata, 1))))  # fmt: skip
        intervals = bdata.setdefault("intervals", {})
        for group, into, n_reps in (
            ([s for s, ok in zip(screened, stands, strict=True) if ok], "screen", SCREEN_REPS),
            (
                [
                    s
                    for s in near
                    if (s[0][0], *s[0][2:]) in bdata.get("full", {}) and s[0][1:] in cdata.get("full", {})
                ],
                "full",
                BOOTSTRAP,
            ),
        ):
            if group:
                *ends, usable = interval_rows(gate, *_stacked(group, bdata, cdata, into))
                for j, (key, *_) in enumerate(group):
                    if usable[j]:
                        intervals[key] = (
                            (float(ends[0][j]), float(ends[1][j])),
                            (float(ends[2][j]), float(ends[3][j])),
                            n_reps,
                        )


def _stacked(
    group: list[Any], bdata: dict[str, Any], cdata: dict[str, Any], into: str
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's and the candidate's replicates (``data[into]``) of each (pair key, …) in ``group``, stacked."""
    return (
        np.stack([bdata[into][(key[0], *key[2:])] for key, *_ in group]),
        np.stack([cdata[into][key[1:]] for key, *_ in group]),
    )


def _screen_latency(
    gates: list[Gate],
    rows: list[dict[str, Any]],
    data: dict[str, Any],
    seed: int,
    n_reps: int = SCREEN_REPS,
    into: str = "screen",
) -> None:
    """``n_reps`` replicates of every latency gate for ``rows`` (one side), into ``data[into]``.

    Cells timed with the same protocol (repeat lengths and block) draw the same resample indices
    (:func:`_resample_indices`), so their replicates come from one stacked gather and row-wise statistic per
    group: what :func:`resample_runs` returns cell by cell, value for value, without its per-call overhead."""
    lat_gates = [g for g in gates if g.metric in LATENCY_METRICS]
    if not lat_gates:
        return
    samples = data["samples"]
    rids = [r["record_id"] for r in rows if r.get("status") == "ok"]
    blocks = _blocks(data, rids)
    screen = data.setdefault(into, {})
    groups: dict[tuple[Any, ...], list[str]] = {}
    for row in rows:
        rid = row["record_id"]
        runs = [r for r in samples.get(rid, []) if len(r)]
        if row.get("status") != "ok" or sum(map(len, runs)) < MIN_SAMPLES:
            continue
        key = (tuple(len(r) for r in runs), blocks.get(rid, 1), int(row.get("batch_size", 1) or 1))
        groups.setdefault(key, []).append(rid)
    for (lengths, block, batch), members in groups.items():
        flat = np.stack([np.concatenate([r for r in samples[m] if len(r)]) for m in members])
        width = flat.shape[1]
        ranked = None
        for gate in lat_gates:
            stat = latency_statistic(gate.metric, batch)
            if stat.by_rank and ranked is None:
                ranked = _ranked(flat)
            reps = np.empty((len(members), n_reps))
            chunks = _resample_indices(lengths, block, n_reps, seed)
            band = stat.by_rank and len(members) * len(chunks[0][1]) >= BAND_MIN
            all_counts = _resample_counts(lengths, block, n_reps, seed) if band else (None,) * len(chunks)
            for (lo, idx), counts in zip(chunks, all_counts, strict=True):
                m = len(idx)
                # the band works on (cells, m) rows: ~256k of them (0.5 MB, in L2) at a time; a gather holds
                # ~8 MB of samples at a time: well under glibc's mmap threshold, so the buffers are reused
                # instead of freshly mapped (and page-faulted) for every group
                step = max(1, 256_000 // m if band else 1_000_000 // (m * width))
                for c0 in range(0, len(members), step):
                    part = flat[c0 : c0 + step]
                    sub_ranked = None if ranked is None else tuple(r[c0 : c0 + step] for r in ranked)
                    reps[c0 : c0 + step, lo : lo + m] = _replicates(part, idx, stat, sub_ranked, counts)
            for rid, rep in zip(members, reps, strict=True):
                screen[(rid, gate.metric, batch)] = rep


def _judge(gate: Gate, label: str, b: Any, c: Any, bdata: dict[str, Any], cdata: dict[str, Any]) -> Verdict | None:
    """The gate's verdict on one cell pair; None when the gate does not apply to either side by design (a
    latency gate on fidelity-only cells, an accuracy gate without labels)."""
    base, cand = float(b[gate.metric]), float(c[gate.metric])
    name = f"{gate.metric} {gate.rule}"
    if math.isnan(base) or math.isnan(cand):
        why_b = _why_missing(gate.metric, b) if math.isnan(base) else ""
        why_c = _why_missing(gate.metric, c) if math.isnan(cand) else ""
        if math.isnan(base) and math.isnan(cand) and why_b and why_b == why_c:
            return None
        pairs = (("baseline", base, why_b), ("candidate", cand, why_c))
        sides = "; ".join(f"{who}: {why or 'no value'}" for who, v, why in pairs if math.isnan(v))
        reason = f"{gate.metric} missing ({sides})"
        return Verdict(label, name, base, cand, "", "", "inconclusive", "~", reason)
    change = f"{gate.change(base, cand):+.3g}{gate.unit}" if gate.kind == "delta" else ""
    reps: tuple[Any, Any] | None = None
    evidence = "point estimate (no per-sample data stored for this metric)"
    if gate.metric in LATENCY_METRICS:
        xr, yr = bdata["samples"].get(b["record_id"], []), cdata["samples"].get(c["record_id"], [])
        nx, ny = sum(map(len, xr)), sum(map(len, yr))
        if nx < MIN_SAMPLES or ny < MIN_SAMPLES:
            return Verdict(
                label, name, base, cand, change, f"{nx}/{ny} samples", "inconclusive", "~",
                f"too few raw samples (need ≥ {MIN_SAMPLES} per side)",
            )  # fmt: skip
        batch = int(b.get("batch_size", 1) or 1)
        stat = latency_statistic(gate.metric, batch)
        bx, by = (_blocks(d, [row["record_id"]])[row["record_id"]] for d, row in ((bdata, b), (cdata, c)))
        sides = ((bdata, b, xr, 0, bx), (cdata, c, yr, 1, by))

        def replicates(into: str, n: int) -> tuple[Any, ...]:
            """Each side's ``n`` replicates: batched by compare() into ``data[into]``, else resampled here."""
            got = [d.get(into, {}).get((row["record_id"], gate.metric, batch)) for d, row, *_ in sides]
            return tuple(
                g if g is not None else resample_runs(runs, stat, n, seed=seed, block=blk)
                for g, (_, _, runs, seed, blk) in zip(got, sides, strict=True)
            )

        evidence = "block bootstrap (blocks {}/{}, repeats {}/{}, {} replicates)"
        known = bdata.get("intervals", {}).get((b["record_id"], c["record_id"], gate.metric, batch))
        if known is not None:  # compare() batched the pair's resampling and its intervals
            q_int, d_int, n_reps = known
            verdict, mark, _, interval = decide_from_intervals(gate, base, cand, q_int, d_int)
            evidence = evidence.format(bx, by, len(xr), len(yr), n_reps)
            return _verdict(
                gate, label, name, base, cand, change, evidence, verdict, mark, interval, _oversubscribed(b, c)
            )
        n_reps = SCREEN_REPS
        reps = replicates("screen", n_reps)
        if not settled(gate, *reps):  # near a boundary: the full resampling decides
            n_reps = BOOTSTRAP
            reps = replicates("full", n_reps)
        evidence = evidence.format(bx, by, len(xr), len(yr), n_reps)
    elif gate.metric == "top1":
        none = Predictions(np.zeros(0), np.zeros(0, np.int64), False)
        pa = bdata["predictions"].get(b["record_id"], none)
        pb = cdata["predictions"].get(c["record_id"], none)
        a_ok, b_ok = pa.correct, pb.correct
        paired = len(a_ok) and len(a_ok) == len(b_ok) and pa.labelled and b["eval_sha256"] == c["eval_sha256"]
        if paired and gate.unit != "%":  # the change in pp (or absolute), or a bound: its distribution is exact
            verdict, mark, _, interval = decide_from_intervals(
                gate, base, cand, *exact_flag_intervals(gate, a_ok, b_ok)
            )
            evidence = f"paired bootstrap (n={len(a_ok)}, exact distribution)"
            return _verdict(gate, label, name, base, cand, change, evidence, verdict, mark, interval, "")
        if paired:  # a relative (%) change: a ratio of two correlated counts, resampled
            n_reps = SCREEN_REPS  # as for latency: the full resampling only when few replicates could mislead
            reps = paired_bootstrap(a_ok, b_ok, n_reps)
            if not settled(gate, *reps):
                n_reps = BOOTSTRAP
                reps = paired_bootstrap(a_ok, b_ok)
            evidence = f"paired bootstrap (n={len(a_ok)}, {n_reps} replicates)"
        else:
            evidence = "point estimate (no paired per-sample predictions)"
    if reps is None:
        # no data to resample: the point estimate decides, and the evidence column says so
        bad = _bad(gate, gate.change(base, cand) if gate.kind == "delta" else cand)
        verdict, mark = ("fail", "x") if bad else ("pass", "")
        reason = "threshold crossed (point estimate; no per-sample data to judge noise)" if bad else ""
        return Verdict(label, name, base, cand, change, evidence, verdict, mark, reason)
    verdict, mark, _, interval = decide(gate, base, cand, *reps)
    busy = _oversubscribed(b, c) if gate.metric in LATENCY_METRICS else ""
    return _verdict(gate, label, name, base, cand, change, evidence, verdict, mark, interval, busy)


def _verdict(
    gate: Gate, label: str, name: str, base: float, cand: float, change: str, evidence: str,
    verdict: str, mark: str, interval: str, busy: str,
) -> Verdict:  # fmt: skip
    """The Verdict row of a decided gate, with the reason its verdict gets."""
    if verdict == "fail" and busy:
        return Verdict(
            label, name, base, cand, change, f"{interval}; {evidence}", "inconclusive", "~",
            f"threshold crossed, but {busy}: latency there is not the model's alone",
        )  # fmt: skip
    reason = {
        "fail": "threshold crossed and the whole interval is past it",
        "inconclusive": "threshold crossed but not significant: the interval reaches back inside the gate "
        "(noise cannot be ruled out)"
        if _bad(gate, gate.change(base, cand) if gate.kind == "delta" else cand)
        else "the point estimate is within the gate but the interval is past it (too few samples to say)",
        "pass": "",
    }[verdict]
    return Verdict(label, name, base, cand, change, f"{interval}; {evidence}", verdict, mark, reason)


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------
def to_markdown(result: CheckResult) -> str:
    lines = [
        f"## qtbench check: {result.summary()}",
        "",
        "| mark | cell | gate | baseline | candidate | change | evidence | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in result.verdicts:
        lines.append(
            f"| {v.mark} | {v.cell} | {v.gate} | {v.baseline:.6g} | {v.candidate:.6g} | {v.change} | "
            f"{v.evidence} | {v.verdict}{': ' + v.reason if v.reason and v.verdict != 'pass' else ''} |"
        )
    for m in result.missing:
        lines.append(f"\n- not compared: {m}")
    for n in result.notes:
        lines.append(f"\n- note: {n}")
    return "\n".join(lines) + "\n"


def to_junit(result: CheckResult) -> str:
    from xml.sax.saxutils import escape, quoteattr

    fails = sum(v.verdict == "fail" for v in result.verdicts)
    skipped = sum(v.verdict == "inconclusive" for v in result.verdicts)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="qtbench-check" tests="{len(result.verdicts)}" failures="{fails}" skipped="{skipped}">',
    ]
    for v in result.verdicts:
        name = quoteattr(f"{v.cell} :: {v.gate}")
        out.append(f'  <testcase classname="qtbench.check" name={name}>')
        detail = escape(
            f"baseline {v.baseline:.6g}, candidate {v.candidate:.6g}, {v.change} ({v.evidence}). {v.reason}"
        )
        if v.verdict == "fail":
            out.append(f"    <failure message={quoteattr(v.reason)}>{detail}</failure>")
        elif v.verdict == "inconclusive":
            out.append(f"    <skipped message={quoteattr(v.reason)}/>")
        else:
            out.append(f"    <system-out>{detail}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"
