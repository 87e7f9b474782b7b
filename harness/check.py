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
the interval. ``top1`` uses a paired bootstrap over the evaluation samples. α = 0.05 (95 % intervals).
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
from typing import Any

import numpy as np

from harness.errors import ConfigError, UserError

DEFAULT_GATES = {"top1": "-0.5pp", "ece": "+1pp", "latency_ms_p50": "+5%"}
LATENCY_METRICS = {"latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "fps"}
ALPHA = 0.05  # every verdict uses the two-sided (1 − ALPHA) bootstrap interval
MIN_SAMPLES = 10
BOOTSTRAP = 2000
SCREEN_REPS = 200  # latency gates resample this many first, and BOOTSTRAP only when that verdict could change
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
        from harness.records import COLUMNS

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
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"gates file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the gates file as UTF-8") from None
    except yaml.YAMLError as exc:  # syntax errors and tags safe_load refuses (!!python/...)
        raise ConfigError(f"{p}: not valid YAML for gates: {' '.join(str(exc).split())[:300]}") from None
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
    x = np.log(np.maximum(np.asarray(x, float), 1.0))
    n = len(x)
    if n < 8:
        return 1
    x = x - x.mean()
    var = float(x @ x) / n
    if var == 0:
        return 1
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = math.ceil(math.sqrt(n)) + k_n
    m_max = min(m_max, n - 1)
    acov = np.array([float(x[: n - k] @ x[k:]) / n for k in range(m_max + 1)])
    rho = acov[1:] / var
    crit = 2.0 * math.sqrt(math.log10(n) / n)
    insignificant = np.abs(rho) < crit
    m_hat = m_max - k_n  # default when no run of k_n insignificant lags is found
    for m in range(len(rho) - k_n + 1):
        if insignificant[m : m + k_n].all():
            m_hat = m  # lags m+1 .. m+k_n are all insignificant
            break
    big_m = max(1, min(2 * m_hat, m_max))
    k = np.arange(1, big_m + 1)
    t = k / big_m
    lam = np.where(t <= 0.5, 1.0, 2.0 * (1.0 - t))
    g = 2.0 * float(np.sum(lam * k * acov[1 : big_m + 1]))
    g0 = acov[0] + 2.0 * float(np.sum(lam * acov[1 : big_m + 1]))
    d_cb = 4.0 / 3.0 * g0**2
    if d_cb <= 0 or g == 0:
        return 1
    b = (2.0 * g**2 / d_cb) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    b_max = max(1, math.ceil(min(3.0 * math.sqrt(n), n / 3.0)))
    return min(max(1, round(b)), b_max)


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
    flat = np.concatenate(runs)
    block = block or max(optimal_block_length(r) for r in runs)
    out = np.empty(reps)
    for lo, idx in _resample_indices(tuple(len(r) for r in runs), block, reps, seed):
        out[lo : lo + len(idx)] = stat(flat[idx])
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


def latency_statistic(metric: str, batch_size: int = 1) -> Any:
    """The function of raw latencies (ns, along axis 1) that produces a row's timing column, in its units."""
    if metric == "latency_ms_mean":
        return lambda a: np.mean(a, axis=1) / 1e6
    if metric == "fps":
        return lambda a: batch_size * 1e9 / percentile_rows(a, 50)
    q = int(metric.rsplit("_p", 1)[1])
    return lambda a: percentile_rows(a, q) / 1e6


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

    correct: np.ndarray  # 0/1 as float
    pred: np.ndarray
    labelled: bool  # every sample had a label


def _load(path: Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Latest rows of a results folder, and its raw samples and predictions by record id, read once."""
    from harness.store import load_results

    rows = load_results(path)
    return rows, _record_data(path, list(rows.loc[rows.status == "ok", "record_id"]))


def _record_data(path: Path, record_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Raw samples and predictions of ``record_ids`` by record id (``compare`` asks only for the cells it judges:
    a check of one model in a 10k-row folder reads that model's samples, not the folder's)."""
    import pandas as pd

    from harness.store import stores_under

    per_record: dict[str, dict[str, Any]] = {"samples": {}, "predictions": {}}
    if not record_ids:
        return per_record
    for kind in ("samples", "predictions"):
        frames = [f for f in (getattr(s, kind)(record_ids) for s in stores_under(path)) if not f.empty]
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True)
        per_record[kind] = samples_by_record(df) if kind == "samples" else predictions_by_record(df)
    return per_record


def _spans(df: Any, sort_cols: list[str], split_cols: tuple[str, ...] = ()) -> tuple[Any, list[tuple[str, int, int]]]:
    """The order that sorts a store frame by record id, then ``sort_cols``, and the (record id, start, stop) spans
    of each record (of each record × ``split_cols`` value) in it: one sort of the whole frame and array slices,
    where a pandas groupby + sort per record took most of a 10k-cell check."""
    import pandas as pd

    codes, names = pd.factorize(df["record_id"])
    order = np.lexsort((*(df[c].to_numpy(np.int64) for c in reversed(sort_cols)), codes))
    codes = codes[order]
    change = np.diff(codes) != 0
    for c in split_cols:
        change |= np.diff(df[c].to_numpy(np.int64)[order]) != 0
    cuts = np.flatnonzero(change) + 1
    bounds = zip(np.r_[0, cuts], np.r_[cuts, len(codes)], strict=True)
    return order, [(names[codes[a]], int(a), int(b)) for a, b in bounds]


def samples_by_record(df: Any) -> dict[str, list[np.ndarray]]:
    """A samples frame (store layout) as each record's latencies, one array per repeat in timing order."""
    if df is None or df.empty:
        return {}
    if "repeat" not in df:
        df = df.assign(repeat=0)
    order, spans = _spans(df, ["repeat", "iteration"], split_cols=("repeat",))
    lat = df["latency_ns"].to_numpy(float)[order]
    runs: dict[str, list[np.ndarray]] = {}
    for rid, a, b in spans:
        runs.setdefault(rid, []).append(lat[a:b])
    return runs


def predictions_by_record(df: Any) -> dict[str, Predictions]:
    """A predictions frame (store layout) as one :class:`Predictions` per record id, in sample order."""
    if df is None or df.empty:
        return {}
    order, spans = _spans(df, ["sample_index"])
    ok, pred = df["correct"].to_numpy(float)[order], df["pred"].to_numpy(np.int64)[order]
    lab = df["has_label"].to_numpy(bool)[order]
    return {rid: Predictions(ok[a:b], pred[a:b], bool(lab[a:b].all())) for rid, a, b in spans}


def compare(
    baseline: str | Path,
    candidate: str | Path,
    gates: list[Gate],
    baseline_model: str | None = None,
    candidate_model: str | None = None,
    allow_mismatch: bool = False,
) -> CheckResult:
    """Match cells of two results folders and judge every gate on every matched cell."""
    from harness.store import load_results

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
    b_idx = {tuple(r[k] for k in key_cols): r for _, r in base_rows.iterrows()}
    c_idx = {tuple(r[k] for k in key_cols): r for _, r in cand_rows.iterrows()}
    judged = [k for k in b_idx if k in c_idx and b_idx[k]["status"] == "ok" and c_idx[k]["status"] == "ok"]
    base_data = _record_data(Path(baseline), [b_idx[k]["record_id"] for k in judged])
    cand_data = _record_data(Path(candidate), [c_idx[k]["record_id"] for k in judged])
    verdicts: list[Verdict] = []
    missing = [" · ".join(map(str, k)) + " (only in baseline)" for k in b_idx if k not in c_idx]
    missing += [" · ".join(map(str, k)) + " (only in candidate)" for k in c_idx if k not in b_idx]
    for key in [k for k in b_idx if k in c_idx]:
        b, c = b_idx[key], c_idx[key]
        label = " · ".join(str(v) for k, v in zip(key_cols, key, strict=True) if k != "device")
        if b["status"] != "ok":
            continue
        if c["status"] != "ok":
            verdicts.append(
                Verdict(
                    label,
                    "status",
                    math.nan,
                    math.nan,
                    "",
                    "",
                    "fail",
                    "x",
                    f"candidate cell is {c['status']}: {str(c['status_message'])[:120]}",
                )
            )
            continue
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
            verdicts.append(_judge(gate, label, b, c, base_data, cand_data))
    return CheckResult(verdicts, missing, notes)


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
    q_point = gate.change(base, cand) if gate.kind == "delta" else cand
    lo, hi = _interval(q_reps, lo_q, hi_q)
    d_lo, d_hi = (lo, hi) if d_reps is q_reps else _interval(d_reps, lo_q, hi_q)
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
    pick = np.nanpercentile if np.isnan(r).any() else np.percentile
    lo, hi = pick(r, [lo_q, hi_q])
    return float(lo), float(hi)


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
    for reps, boundary in ((q_reps, gate.value), (d_reps, 0.0)):
        if not np.isfinite(reps).all():
            return False
        lo, hi = np.percentile(reps, [lo_q, hi_q])
        if min(abs(lo - boundary), abs(hi - boundary)) <= 0.25 * (hi - lo):
            return False
    return True


def _pct(base: Any, cand: Any) -> Any:
    return 100.0 * (np.asarray(cand, float) / np.asarray(base, float) - 1.0)


def _oversubscribed(b: Any, c: Any) -> str:
    """Why a latency change cannot be a regression: a side whose 1-min load average, before or after its timed
    loop, exceeded the cores it could use (from the ``device`` id) competed for the CPU with other work, and a
    whole run shifted that way looks exactly like a slowdown. Empty when neither side was oversubscribed."""
    from devices.host import cores_of

    for side, row in (("baseline", b), ("candidate", c)):
        cores = cores_of(row.get("device", ""))
        loads = [float(row.get(k, math.nan)) for k in ("loadavg_1m_before", "loadavg_1m_after")]
        load = max((x for x in loads if x == x), default=math.nan)
        if cores and load > cores:
            return f"the {side}'s machine was oversubscribed (load {load:.1f} on {cores} cores)"
    return ""


def _judge(gate: Gate, label: str, b: Any, c: Any, bdata: dict[str, Any], cdata: dict[str, Any]) -> Verdict:
    base, cand = float(b[gate.metric]), float(c[gate.metric])
    name = f"{gate.metric} {gate.rule}"
    if math.isnan(base) or math.isnan(cand):
        return Verdict(
            label, name, base, cand, "", "", "inconclusive", "~",
            f"{gate.metric} is missing on one side (no labels or no reference?)",
        )  # fmt: skip
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
        stat = latency_statistic(gate.metric, int(b.get("batch_size", 1) or 1))
        bx, by = max(optimal_block_length(r) for r in xr), max(optimal_block_length(r) for r in yr)
        n_reps = SCREEN_REPS
        reps = (resample_runs(xr, stat, n_reps, seed=0, block=bx), resample_runs(yr, stat, n_reps, seed=1, block=by))
        if not settled(gate, *reps):  # near a boundary: the full resampling decides
            n_reps = BOOTSTRAP
            reps = (resample_runs(xr, stat, seed=0, block=bx), resample_runs(yr, stat, seed=1, block=by))
        evidence = f"block bootstrap (blocks {bx}/{by}, repeats {len(xr)}/{len(yr)}, {n_reps} replicates)"
    elif gate.metric == "top1":
        none = Predictions(np.zeros(0), np.zeros(0, np.int64), False)
        pa = bdata["predictions"].get(b["record_id"], none)
        pb = cdata["predictions"].get(c["record_id"], none)
        a_ok, b_ok = pa.correct, pb.correct
        if len(a_ok) and len(a_ok) == len(b_ok) and pa.labelled and b["eval_sha256"] == c["eval_sha256"]:
            reps = paired_bootstrap(a_ok, b_ok)
            evidence = f"paired bootstrap (n={len(a_ok)})"
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
