"""Gates of ``qtbench check`` (``metric: rule``) and the verdict each reaches from intervals of the gated statistic.

Rules:

- ``-0.5pp`` / ``+1pp``: the allowed change in percentage points of a fraction metric (top1, ece, ...); the sign
  says which way is bad (``top1: -0.5pp`` fails a drop of more than 0.5 pp; ``ece: +1pp`` a rise above 1 pp);
- ``+5%`` / ``-5%``: the allowed relative change (``latency_ms_p50: +5%``);
- ``+0.01`` (no unit): the allowed absolute change;
- ``>= 0.99``, ``<= 0.05``, ``>``, ``<``: an absolute bound on the candidate's value.

A gate **fails** only when the threshold is crossed *and* the change is significant (asv's rule): the point estimate
is past the gate and so is the whole (1 − α) interval of the gated quantity (the median ratio for a p50 gate, the
change in points for ``top1: -0.5pp``, the candidate's value for a bound). When only one of them is past it the
verdict is **inconclusive**; otherwise **pass**, marked ``+`` or ``-`` when the change interval excludes zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtbench.harness.analysis.resample import ALPHA
from qtbench.harness.core.config import load_yaml
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.records import COLUMNS

DEFAULT_GATES = {"top1": "-0.5pp", "ece": "+1pp", "latency_ms_p50": "+5%"}
_RULE = re.compile(
    r"^\s*(?:(?P<cmp>>=|<=|>|<)\s*(?P<bound>[-+]?\d*\.?\d+(?:e[-+]?\d+)?)|"
    r"(?P<delta>[-+]\d*\.?\d+(?:e[-+]?\d+)?)\s*(?P<unit>pp|%)?)\s*$",
    re.IGNORECASE,
)
_LEVELS = (100 * ALPHA / 2, 100 * (1 - ALPHA / 2))


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

    def quantity(self, base: float, cand: float) -> float:
        """The gated quantity: the change for a delta gate, the candidate's value for a bound."""
        return self.change(base, cand) if self.kind == "delta" else cand

    def past(self, q: float) -> bool:
        """Whether the gated quantity ``q`` is past the gate."""
        if self.kind == "bound":
            return not {">=": q >= self.value, "<=": q <= self.value, ">": q > self.value, "<": q < self.value}[
                self.unit
            ]
        return q > self.value if self.value >= 0 else q < self.value

    def violated(self, base: float, cand: float) -> bool:
        return self.past(self.quantity(base, cand))

    @property
    def worse(self) -> int:
        """+1 when a rise of the metric is bad (latency +5%, ece +1pp, <= bounds), -1 when a drop is."""
        if self.kind == "bound":
            return -1 if self.unit in (">=", ">") else 1
        return 1 if self.value >= 0 else -1


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


def quantities(gate: Gate, base_reps: Any, cand_reps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of the gated quantity and of the change (the same array for a delta gate), elementwise."""
    base, cand = np.asarray(base_reps, float), np.asarray(cand_reps, float)
    if gate.kind == "bound":
        return cand, cand - base
    with np.errstate(divide="ignore", invalid="ignore"):
        q = 100.0 * (cand / base - 1.0) if gate.unit == "%" else gate.change(base, cand)
    return q, q


def _ends(reps: np.ndarray) -> np.ndarray:
    """The (1 − ALPHA) percentile interval of each row of replicates, (2, rows); a row's NaN replicates are left out."""
    ends = np.percentile(reps, _LEVELS, axis=-1)
    nan = np.isnan(reps).any(axis=-1)
    if nan.any():
        ends[:, nan] = np.nanpercentile(reps[nan], _LEVELS, axis=-1)
    return ends


def intervals(gate: Gate, base_reps: Any, cand_reps: Any) -> tuple[np.ndarray, ...]:
    """The intervals :func:`decide` reads for every row pair of two (pairs, replicates) arrays: (q_lo, q_hi, d_lo,
    d_hi), of the gated quantity and of the change."""
    q_reps, d_reps = quantities(gate, np.atleast_2d(base_reps), np.atleast_2d(cand_reps))
    q = _ends(q_reps)
    d = q if d_reps is q_reps else _ends(d_reps)
    return q[0], q[1], d[0], d[1]


def settled(gate: Gate, base_reps: Any, cand_reps: Any) -> np.ndarray:
    """Per row pair: whether a verdict from few replicates stands. Each end of both intervals the verdict reads (the
    gated quantity's against the threshold, the change's against zero) must lie more than a quarter of that
    interval's width from its boundary: from 200 replicates a 2.5 % quantile's Monte Carlo error is about 5 % of a
    normal interval's width, so the margin is ~5 standard errors. Replicates with no spread at all (identical
    paired samples) stand as they are; any non-finite replicate asks for the full resampling."""
    q_reps, d_reps = quantities(gate, np.atleast_2d(base_reps), np.atleast_2d(cand_reps))
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(q_reps).all(axis=-1) & np.isfinite(d_reps).all(axis=-1)
        flat = finite & (np.ptp(q_reps, axis=-1) == 0) & (np.ptp(d_reps, axis=-1) == 0)
        ok = finite
        for reps, boundary in ((q_reps, gate.value), (d_reps, 0.0)):
            lo, hi = np.percentile(reps, _LEVELS, axis=-1)
            ok = ok & (np.minimum(np.abs(lo - boundary), np.abs(hi - boundary)) > 0.25 * (hi - lo))
    return flat | ok


def decide(gate: Gate, base: float, cand: float, base_reps: Any, cand_reps: Any) -> tuple[str, str, int, str]:
    """Verdict of one gate from the point estimates and the bootstrap replicates of both sides: see
    :func:`decide_from_intervals`."""
    q_lo, q_hi, d_lo, d_hi = (float(v[0]) for v in intervals(gate, base_reps, cand_reps))
    return decide_from_intervals(gate, base, cand, (q_lo, q_hi), (d_lo, d_hi))


def decide_from_intervals(
    gate: Gate, base: float, cand: float, q_interval: tuple[float, float], d_interval: tuple[float, float]
) -> tuple[str, str, int, str]:
    """The verdict from the point estimates and the (1 − ALPHA) intervals of the gated quantity and of the change.

    **fail**: the point estimate is past the gate and the whole interval is too; **inconclusive**: one of them is;
    **pass**: neither. The direction (for the marks) is the change's interval against zero. Returns (verdict, mark,
    direction, interval text).
    """
    (lo, hi), (d_lo, d_hi) = q_interval, d_interval
    direction = 0
    if d_lo > 0 or d_hi < 0:
        direction = -1 if (d_lo > 0) == (gate.worse > 0) else 1
    point_bad = gate.past(gate.quantity(base, cand))
    all_bad = gate.past(lo) and gate.past(hi)
    unit = "" if gate.kind == "bound" else gate.unit
    interval = f"{100 * (1 - ALPHA):.0f}% CI [{lo:+.3g}, {hi:+.3g}]{unit}"
    if point_bad and all_bad:
        return "fail", "x", direction, interval
    if point_bad or all_bad:
        return "inconclusive", "~", direction, interval
    return "pass", "+" if direction > 0 else ("-" if direction < 0 else ""), direction, interval
