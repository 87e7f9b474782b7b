"""`qtbench check`: gate a candidate's results against a baseline, cell by cell, with significance.

Gates are data (``metric: rule``). Rules:

- ``-0.5pp`` / ``+1pp``: the allowed change in percentage points of a fraction metric (top1, ece, ...); the sign
  says which way is bad (``top1: -0.5pp`` fails a drop of more than 0.5 pp; ``ece: +1pp`` fails a rise above 1 pp);
- ``+5%`` / ``-5%``: the allowed relative change (``latency_ms_p50: +5%``);
- ``+0.01`` (no unit): the allowed absolute change;
- ``>= 0.99``, ``<= 0.05``, ``>``, ``<``: an absolute bound on the candidate's value.

A gate **fails** only when the threshold is crossed *and* the change is significant (asv's rule): latency gates
use the raw samples (two-sided Mann–Whitney U, α = 0.01, plus a bootstrap CI of the median ratio); ``top1`` and
``top5``-style accuracy gates use a paired bootstrap over the evaluation samples (95 % CI of the change).
Crossed but not significant → **inconclusive** (with why). Metrics without per-sample data are judged on the
point estimate and say so. Marks (asv style): ``x`` fail, ``~`` inconclusive, ``+`` significantly better,
``-`` significantly worse but within the gate, blank unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ConfigError, UserError

DEFAULT_GATES = {"top1": "-0.5pp", "ece": "+1pp", "latency_ms_p50": "+5%"}
LATENCY_METRICS = {"latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "fps"}
ALPHA = 0.01
MIN_SAMPLES = 10
BOOTSTRAP = 2000
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
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{p}: expected a mapping of metric: rule, e.g. 'top1: -0.5pp'")
    gates = []
    for metric, rules in data.items():
        for rule in rules if isinstance(rules, list) else [rules]:
            gates.append(Gate.parse(str(metric), rule))
    return gates


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------
def mann_whitney_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value, normal approximation with tie correction (n ≥ 10 per side)."""
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


def bootstrap_median_ratio(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap CI of median(y) / median(x)."""
    rng = np.random.default_rng(seed)
    mx = np.median(rng.choice(x, (BOOTSTRAP, len(x))), axis=1)
    my = np.median(rng.choice(y, (BOOTSTRAP, len(y))), axis=1)
    r = my / mx
    return float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))


def paired_bootstrap_delta(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % CI of mean(b) − mean(a) over the same samples, resampling sample indices."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (BOOTSTRAP, len(a)))
    d = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


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


def _load(path: Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Latest rows of a results folder, and its raw samples and predictions by record id, read once."""
    import pandas as pd

    from harness.store import load_results, stores_under

    rows = load_results(path)
    ok_ids = list(rows.loc[rows.status == "ok", "record_id"])
    per_record: dict[str, dict[str, Any]] = {}
    for kind in ("samples", "predictions"):
        frames = [f for f in (getattr(s, kind)(ok_ids) for s in stores_under(path)) if not f.empty]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["record_id"])
        per_record[kind] = {rid: g for rid, g in df.groupby("record_id")}
    return rows, per_record


def _per_record(data: dict[str, dict[str, Any]], kind: str, record_id: str) -> Any:
    import pandas as pd

    return data[kind].get(record_id, pd.DataFrame())


def compare(
    baseline: str | Path,
    candidate: str | Path,
    gates: list[Gate],
    baseline_model: str | None = None,
    candidate_model: str | None = None,
    allow_mismatch: bool = False,
) -> CheckResult:
    """Match cells of two results folders and judge every gate on every matched cell."""
    base_rows, base_data = _load(Path(baseline))
    cand_rows, cand_data = _load(Path(candidate))
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
        for field in ("warmup", "min_iterations", "min_duration_s", "batch_size", "eval_sha256"):
            if b[field] != c[field] and not allow_mismatch:
                raise UserError(
                    f"{label}: {field} differs (baseline {b[field]!r}, candidate {c[field]!r}); "
                    "results are not comparable — rerun with the same settings or pass --allow-mismatch"
                )
        if b["backend_version"] != c["backend_version"]:
            notes.append(f"{label}: backend version {b['backend_version']} → {c['backend_version']}")
        for gate in gates:
            verdicts.append(_judge(gate, label, b, c, base_data, cand_data))
    return CheckResult(verdicts, missing, notes)


def _select_model(rows: Any, model: str | None, flag: str, where: Any) -> Any:
    if model is None:
        return rows
    if model not in set(rows["model"]):
        raise UserError(f"{flag} {model!r} not in {where} (models: {', '.join(sorted(set(rows['model'])))})")
    return rows[rows["model"] == model]


def _judge(gate: Gate, label: str, b: Any, c: Any, bdata: dict[str, Any], cdata: dict[str, Any]) -> Verdict:
    base, cand = float(b[gate.metric]), float(c[gate.metric])
    if math.isnan(base) or math.isnan(cand):
        return Verdict(
            label,
            f"{gate.metric} {gate.rule}",
            base,
            cand,
            "",
            "",
            "inconclusive",
            "~",
            f"{gate.metric} is missing on one side (no labels or no reference?)",
        )
    change = f"{gate.change(base, cand):+.3g}{gate.unit}" if gate.kind == "delta" else ""
    violated = gate.violated(base, cand)
    evidence, significant, direction = "point estimate", True, 0
    reason = ""
    if gate.metric in LATENCY_METRICS:
        xs = _per_record(bdata, "samples", b["record_id"])
        ys = _per_record(cdata, "samples", c["record_id"])
        if len(xs) < MIN_SAMPLES or len(ys) < MIN_SAMPLES:
            return Verdict(
                label,
                f"{gate.metric} {gate.rule}",
                base,
                cand,
                change,
                f"{len(xs)}/{len(ys)} samples",
                "inconclusive",
                "~",
                f"too few raw samples (need ≥ {MIN_SAMPLES} per side)",
            )
        x, y = xs["latency_ns"].to_numpy(float), ys["latency_ns"].to_numpy(float)
        p = mann_whitney_p(x, y)
        lo, hi = bootstrap_median_ratio(x, y)
        evidence = f"MWU p={p:.2g}, median ratio CI [{lo:.3f}, {hi:.3f}]"
        significant = p < ALPHA
        # samples are latencies for every timing metric (fps included): slower is worse
        direction = (-1 if np.median(y) > np.median(x) else 1) if significant else 0
    elif gate.metric == "top1":
        pa = _per_record(bdata, "predictions", b["record_id"])
        pb = _per_record(cdata, "predictions", c["record_id"])
        if len(pa) and len(pa) == len(pb) and pa["has_label"].all() and b["eval_sha256"] == c["eval_sha256"]:
            a_ok = pa.sort_values("sample_index")["correct"].to_numpy(float)
            b_ok = pb.sort_values("sample_index")["correct"].to_numpy(float)
            lo, hi = paired_bootstrap_delta(a_ok, b_ok)
            evidence = f"paired bootstrap Δ CI [{100 * lo:+.2f}, {100 * hi:+.2f}] pp (n={len(a_ok)})"
            if gate.kind == "bound":
                significant = (base + hi < gate.value) if gate.unit in (">=", ">") else (base + lo > gate.value)
            else:
                significant = hi < 0 or lo > 0
            direction = 1 if lo > 0 else (-1 if hi < 0 else 0)
        else:
            evidence = "point estimate (no paired per-sample predictions)"
    else:
        evidence = "point estimate (no per-sample data stored for this metric)"
    if violated and significant:
        verdict, mark = "fail", "x"
        reason = "threshold crossed and the change is significant"
    elif violated:
        verdict, mark = "inconclusive", "~"
        reason = "threshold crossed but the change is not significant (noise cannot be ruled out)"
    else:
        verdict = "pass"
        mark = "+" if direction > 0 else ("-" if direction < 0 else "")
    return Verdict(label, f"{gate.metric} {gate.rule}", base, cand, change, evidence, verdict, mark, reason)


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------
def to_markdown(result: CheckResult) -> str:
    counts = {v: sum(1 for x in result.verdicts if x.verdict == v) for v in ("pass", "fail", "inconclusive")}
    lines = [
        f"## qtbench check: {counts['fail']} fail, {counts['inconclusive']} inconclusive, {counts['pass']} pass",
        "",
        "| | cell | gate | baseline | candidate | change | evidence | verdict |",
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
