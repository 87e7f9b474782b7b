"""`qtbench compare`: is checkpoint group B more robust to quantization than group A, across backends and specs?

A *study* is models tagged with a ``group`` (e.g. ``fp``, ``quanttrim``) and a ``seed`` (training replica), swept
over backends × specs. For each precision, and within it per backend and per spec family, this computes for
each group: the mean FP→Q top-1 gap over the cells, the worst gap, the spread (max − min gap across
backend × spec), top-1 agreement with FP32, KL(FP‖Q) and the ECE change — each averaged over seeds — and the
candidate − baseline difference with a 95 % interval.

The interval accounts for both sources of noise:

- **evaluation samples**: every cell saw the same images, so a bootstrap resamples image indices *jointly*
  across all cells, groups and seeds (one weight vector per replicate), which keeps the pairing over images.
  Each cell's gap is computed per sample against its own FP32 reference (``correct_q − correct_fp``), so the
  reference's own sampling noise is paired out as well;
- **seeds**: the spread of per-seed values, paired by seed when both groups hold the same seeds (the same
  seed means the same data order and initialisation), Welch-style otherwise.

The two variances are added and the interval is ``estimate ± t·√(v_seed + v_images)`` with Satterthwaite
degrees of freedom from the seed part (with 3 seeds, t ≈ 4.3: honest, and wide). Adding the two parts counts
the per-seed share of image noise twice, so the interval errs on the wide side; ``tests/test_compare.py`` checks
its coverage by simulation. With one seed per group the seed part cannot be estimated: the interval covers
image noise only and says so. KL and ECE have no per-sample data stored, so their intervals cover seeds only.
A difference whose interval contains 0 is reported as "no difference detectable".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import stdtrit  # t.ppf's kernel: scipy.stats, which every report would import, is slow to load

from qtbench.harness.analysis.check import _load
from qtbench.harness.core.errors import UserError
from qtbench.harness.core.tables import mismatched, printable
from qtbench.harness.run.store import latest_rows

LEVEL = 0.95
N_BOOT = 1000
QUANTIZED = ("fp16", "int8", "int4")
#: metric → (label, unit, higher is better, has per-sample data)
METRICS: dict[str, tuple[str, str, bool, bool]] = {
    "mean_gap_pp": ("mean gap", "pp", True, True),
    "worst_gap_pp": ("worst gap", "pp", True, True),
    "spread_pp": ("spread (max−min gap)", "pp", False, True),
    "agreement_pct": ("top-1 agreement", "%", True, True),
    "kl_x1e3": ("KL(FP‖Q)×1e3", "", False, False),
    "ece_change_pp": ("ECE change", "pp", False, False),
}


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------
def bootstrap_weights(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) resampling weights over image indices (multinomial counts / n): one draw serves every cell."""
    rng = np.random.default_rng(seed)
    return (rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n).astype(np.float32)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    sources: str  # what the interval covers: "seeds + samples", "samples only (1 seed)", "seeds only", "none"

    @property
    def significant(self) -> bool:
        return math.isfinite(self.lo) and (self.lo > 0 or self.hi < 0)


def combine(
    base_seed_vals: np.ndarray,
    cand_seed_vals: np.ndarray,
    paired: bool,
    image_reps: np.ndarray | None,
    level: float = LEVEL,
) -> Interval:
    """Interval of mean(cand) − mean(base) over seeds, adding seed variance and image-resampling variance.

    ``*_seed_vals``: one point value per seed (aligned by seed when ``paired``). ``image_reps``: bootstrap
    replicates of the seed-averaged difference under joint image resampling, or None (no per-sample data).
    """
    b, c = np.asarray(base_seed_vals, float), np.asarray(cand_seed_vals, float)
    est = float(c.mean() - b.mean())
    kb, kc = len(b), len(c)
    v_img = float(np.var(image_reps, ddof=1)) if image_reps is not None and len(image_reps) > 1 else 0.0
    if paired and kb == kc and kb >= 2:
        v_seed, df_seed = float(np.var(c - b, ddof=1)) / kb, float(kb - 1)
    elif kb >= 2 and kc >= 2:
        vb, vc = float(np.var(b, ddof=1)) / kb, float(np.var(c, ddof=1)) / kc
        v_seed = vb + vc
        den = (vb**2 / (kb - 1) if vb else 0.0) + (vc**2 / (kc - 1) if vc else 0.0)
        df_seed = v_seed**2 / den if den > 0 else math.inf
    else:
        v_seed, df_seed = math.nan, math.nan
    if math.isnan(v_seed):  # one seed in a group: seed noise cannot be estimated
        if image_reps is None:
            return Interval(est, math.nan, math.nan, "none (1 seed, no per-sample data)")
        half = _half_width(0.0, math.inf, v_img, level)
        return Interval(est, est - half, est + half, "samples only (1 seed: seed noise not estimable)")
    half = _half_width(v_seed, df_seed, v_img, level)
    return Interval(est, est - half, est + half, "seeds + samples" if image_reps is not None else "seeds only")


def _half_width(v_seed: float, df_seed: float, v_img: float, level: float) -> float:
    """Half the ``level`` t interval of a mean whose variance adds a seed part (``df_seed`` degrees of freedom) and
    an image-resampling part, estimated from many replicates (df ≈ ∞): Satterthwaite's degrees of freedom."""
    total = v_seed + v_img
    df = total**2 / (v_seed**2 / df_seed) if v_seed > 0 and math.isfinite(df_seed) else math.inf
    return float(stdtrit(df, 0.5 + level / 2)) * math.sqrt(total)


# ---------------------------------------------------------------------------------------------------------
# The study: per-sample arrays per cell
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Study:
    """Quantized cells of a study with per-sample gap and agreement arrays (rows aligned with ``cells``)."""

    cells: Any  # DataFrame: group, seed, model, backend, spec_id, precision, family, kl_fp, ece_change, has_samples
    gap: np.ndarray  # (cells, n) float32: correct_q − correct_fp per evaluation sample
    agree: np.ndarray  # (cells, n) float32: pred_q == pred_fp
    notes: list[str] = field(default_factory=list)


def spec_family(scaling: str, granularity: str) -> str:
    g = {"per-channel": "pc", "per-tensor": "pt"}.get(str(granularity), str(granularity))
    return f"{scaling}-{g}" if g and scaling not in ("none", "") else str(scaling)


def load_study(results: list[str | Path]) -> tuple[Any, dict[str, Any]]:
    """Latest rows of every results folder and their per-sample predictions by record id (check's loader)."""
    import pandas as pd

    frames, preds = [], {}
    for r in results:
        rows, per_record = _load(Path(r))
        frames.append(rows)
        preds.update(per_record["predictions"])
    return pd.concat(frames, ignore_index=True), preds


def latest_per_cell(rows: Any) -> tuple[Any, int]:
    """One row per model × backend × spec × device (the newest): re-runs under another cell key, e.g. another
    ``--iterations``, must not count twice. Returns the rows and how many older duplicates were dropped."""

    out = latest_rows(rows, across_sweeps=True)
    return out.reset_index(drop=True), len(rows) - len(out)


def build_study(rows: Any, predictions: dict[str, Any]) -> Study:
    """Per-sample FP→Q gap and agreement of every ok quantized cell against its model's FP32 reference."""
    import pandas as pd

    notes: list[str] = []
    rows, dropped = latest_per_cell(rows)
    if dropped:
        notes.append(f"{dropped} older row(s) of re-measured cells ignored (newest row per model × backend × spec)")

    bad = mismatched(rows)
    if bad.any():
        cells = sorted({f"{r.backend} × {r.spec_id}" for r in rows[bad].itertuples()})
        notes.append(
            f"{int(bad.sum())} cell(s) left out: their artifact contradicts their spec label (spec audit): "
            + ", ".join(cells[:6])
            + (", …" if len(cells) > 6 else "")
        )
    ok = rows[(rows["status"] == "ok") & ~bad].copy()
    ok["group"] = [g if isinstance(g, str) and g else m for g, m in zip(ok["group"], ok["model"], strict=True)]
    ok["seed"] = pd.to_numeric(ok["seed"], errors="coerce").fillna(-1).astype(int)

    def arrays(rid: str) -> tuple[np.ndarray, np.ndarray] | None:
        p = predictions.get(rid)
        if p is None or not len(p.correct) or not p.labelled:
            return None
        return p.correct.astype(bool), p.pred

    # the FP32 reference per model: its ort fp32 cell (the reference *is* ORT CPU FP32), else any fp32 cell
    refs: dict[str, tuple[np.ndarray, np.ndarray, float, str]] = {}
    fp = ok[ok["precision"] == "fp32"]
    for model, g in fp.groupby("model"):
        g = g.assign(_pref=(g["backend_slug"] != "ort") | (abs(g["top1"] - g["fp_top1"]) > 1e-12)).sort_values("_pref")
        for _, r in g.iterrows():
            arr = arrays(r["record_id"])
            if arr is not None:
                refs[model] = (*arr, float(r["ece"]), str(r["eval_sha256"]))
                break
    q = ok[ok["precision"].isin(QUANTIZED)]
    keep, gaps, agrees, missing = [], [], [], set()
    n = None
    fields = q[["model", "record_id", "eval_sha256", "backend", "spec_id"]].to_dict("records")
    numerics: dict[int, str] = {}
    for i, r in zip(q.index, fields, strict=True):
        ref = refs.get(r["model"])
        arr = arrays(r["record_id"])
        if ref is None or arr is None or ref[3] != r["eval_sha256"]:
            missing.add(str(r["model"]))
            continue
        if n is None:
            n = len(arr[0])
        if len(arr[0]) != n or len(ref[0]) != n:
            raise UserError(
                f"{r['model']} × {r['backend']} × {r['spec_id']}: {len(arr[0])} evaluation samples, others have {n}; "
                "compare needs every cell scored on the same evaluation set"
            )
        keep.append(i)
        numerics[i] = _numerics_id(q.loc[i], arr[1])
        gaps.append(arr[0].astype(np.float32) - ref[0].astype(np.float32))
        agrees.append((arr[1] == ref[1]).astype(np.float32))
    if missing:
        notes.append(
            "left out (no per-sample predictions with labels, or no FP32 cell to pair with): "
            + ", ".join(sorted(missing))
        )
    cells = q.loc[keep].copy()
    cells["numerics"] = [numerics[i] for i in keep]
    cells["family"] = [spec_family(s, g) for s, g in zip(cells["scaling"], cells["granularity"], strict=True)]
    cells["ece_change"] = [float(e) - refs[m][2] for e, m in zip(cells["ece"], cells["model"], strict=True)]
    cells = cells.reset_index(drop=True)
    shape = (0, n or 0)
    return Study(
        cells,
        np.stack(gaps) if gaps else np.zeros(shape, np.float32),
        np.stack(agrees) if agrees else np.zeros(shape, np.float32),
        notes,
    )


def _numerics_id(row: Any, pred: np.ndarray) -> str:
    """What identifies a cell's numbers: the digest of its scored outputs (rows written since outputs_sha256
    exists), else its per-sample predictions with KL and ECE to the last bit (older rows: two different numerics
    agree on all three only by an implausible coincidence, unless both equal FP32 exactly, which is one numeric)."""
    import hashlib

    digest = str(row.get("outputs_sha256") or "")
    if digest:
        return digest
    h = hashlib.sha256(np.ascontiguousarray(pred).tobytes())
    h.update(f"{float(row.get('kl_fp', math.nan))!r}|{float(row.get('ece', math.nan))!r}".encode())
    return "pred:" + h.hexdigest()


def distinct_numerics(sc: Any, key: list[str]) -> tuple[list[tuple[Any, ...]], dict[tuple[Any, ...], Any]]:
    """The backend × spec keys of a slice whose outputs differ, and for each duplicate the key it repeats.

    Two keys are one numeric result when every group × seed × model cell of theirs has the same numerics id
    (e.g. two simnpu profiles with one rounding and bit width, or tflite and a profile that models it): the
    slice's aggregate then counts them once, since an interval that treats them as independent backends is too
    narrow. Keys that coincide only for some seeds are kept apart."""
    sig = {
        k: tuple(sorted(zip(g["group"], g["seed"], g["model"], g["numerics"], strict=True))) for k, g in sc.groupby(key)
    }
    first: dict[tuple[Any, ...], Any] = {}
    dup: dict[Any, Any] = {}
    for k in sorted(sig):
        s = tuple((gr, se, m) for gr, se, m, _n in sig[k]), tuple(n for *_r, n in sig[k])
        if s in first:
            dup[k] = first[s]
        else:
            first[s] = k
    return [k for k in sorted(sig) if k not in dup], dup


# ---------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------
def pick_groups(groups: list[str], baseline: str | None, candidate: str | None) -> tuple[str, str]:
    """Explicit groups, or the two a study holds (``fp`` is the baseline when present)."""
    for flag, g in (("--baseline-group", baseline), ("--candidate-group", candidate)):
        if g is not None and g not in groups:
            raise UserError(f"{flag} {g!r} is not a group of these results (groups: {', '.join(groups) or 'none'})")
    if baseline and candidate:
        return baseline, candidate
    rest = [g for g in groups if g not in (baseline, candidate)]
    if baseline is None and candidate is None and len(groups) != 2:
        raise UserError(
            f"results hold {len(groups)} group(s) ({', '.join(groups)}); pass --baseline-group and --candidate-group"
        )
    if baseline is None:
        baseline = "fp" if "fp" in rest else rest[0]
        rest = [g for g in rest if g != baseline]
    if candidate is None:
        if not rest:
            raise UserError("only one group in these results; a comparison needs two (set models[].group)")
        candidate = rest[0]
    return baseline, candidate


def _seed_values(
    per_cell: dict[str, np.ndarray], idx: dict[int, list[int]], reps: tuple | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per seed: point value and bootstrap replicates of each metric over the cells ``idx[seed]``."""
    points: dict[str, list[float]] = {m: [] for m in METRICS}
    boot: dict[str, list[np.ndarray]] = {m: [] for m in METRICS if METRICS[m][3]}
    for _seed, rows in sorted(idx.items()):
        gp = per_cell["gap"][rows]
        points["mean_gap_pp"].append(float(gp.mean()))
        points["worst_gap_pp"].append(float(gp.min()))
        points["spread_pp"].append(float(gp.max() - gp.min()))
        points["agreement_pct"].append(float(per_cell["agree"][rows].mean()))
        points["kl_x1e3"].append(float(1000 * per_cell["kl"][rows].mean()))
        points["ece_change_pp"].append(float(100 * per_cell["ece"][rows].mean()))
        if reps is not None:
            gb, ab = reps[0][:, rows], reps[1][:, rows]  # (B, cells)
            boot["mean_gap_pp"].append(gb.mean(axis=1))
            boot["worst_gap_pp"].append(gb.min(axis=1))
            boot["spread_pp"].append(gb.max(axis=1) - gb.min(axis=1))
            boot["agreement_pct"].append(ab.mean(axis=1))
    return (
        {m: np.array(v) for m, v in points.items()},
        {m: np.mean(v, axis=0) for m, v in boot.items()} if reps is not None else {},
    )


def compare_study(
    study: Study,
    baseline: str | None = None,
    candidate: str | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
    by: tuple[str, ...] = ("backend", "family"),
) -> Any:
    """The comparison table: one row per precision × slice × metric (see the module docstring).

    Slices: ``all`` (every backend × spec of the precision), then one per value of each column in ``by``."""
    import pandas as pd

    cells = study.cells
    groups = sorted(set(cells["group"])) if len(cells) else []
    baseline, candidate = pick_groups(groups, baseline, candidate)
    notes = list(study.notes)
    reps = None
    if study.gap.shape[0]:
        w = bootstrap_weights(study.gap.shape[1], n_boot, seed)
        reps = (w @ study.gap.T * 100, w @ study.agree.T * 100)  # (B, cells) per-cell gap / agreement replicates
    per_cell = {
        "gap": study.gap.mean(axis=1) * 100,
        "agree": study.agree.mean(axis=1) * 100,
        "kl": cells["kl_fp"].to_numpy(float) if len(cells) else np.zeros(0),
        "ece": cells["ece_change"].to_numpy(float) if len(cells) else np.zeros(0),
    }
    out = []
    for prec in [p for p in QUANTIZED if p in set(cells["precision"])]:
        pc = cells[cells["precision"] == prec]
        slices = [("all", "", pc)]
        for col in by:
            slices += [(col, v, g) for v, g in pc.groupby(col)]
        for kind, name, sc in slices:
            row = _compare_slice(per_cell, sc, baseline, candidate, reps, level)
            if row is None:
                continue
            rows_, note = row
            if note and kind == "all":
                notes.append(f"{prec}: {note}")
            for r in rows_:
                out.append({"precision": prec, "slice": kind, "slice_value": name, **r})
    df = pd.DataFrame(out)
    df.attrs.update(baseline=baseline, candidate=candidate, notes=notes, level=level)
    return df


def _compare_slice(
    per_cell: dict[str, np.ndarray], sc: Any, baseline: str, candidate: str, reps: tuple | None, level: float
) -> tuple[list[dict[str, Any]], str] | None:
    """Cells every seed of both groups has (others noted), per-seed values, then per metric the interval."""
    sc = sc[sc["group"].isin([baseline, candidate])]
    if sc.empty:
        return None
    key = ["backend", "spec_id"]
    seeds = {g: sorted(set(sc.loc[sc["group"] == g, "seed"])) for g in (baseline, candidate)}
    if not seeds[baseline] or not seeds[candidate]:
        return None
    have = sc.groupby(key)[["group", "seed"]].apply(lambda d: set(zip(d["group"], d["seed"], strict=True)))
    need = {(g, s) for g in seeds for s in seeds[g]}
    full = [k for k, v in have.items() if need <= v]
    note = ""
    if not full:  # e.g. a backend whose cells exist for seed 0 only: use the seeds its cells share
        common = set.intersection(*have.values)
        seeds = {g: sorted(s for gg, s in common if gg == g) for g in seeds}
        if not seeds[baseline] or not seeds[candidate]:
            return None
        full = list(have.index)
    elif len(full) < len(have):
        left = sorted(set(have.index) - set(full))
        note = f"{len(left)} backend × spec cell(s) without every seed of both groups left out ({_fmt_cells(left)})"
    sel = sc.set_index(key).index.isin(full)
    sc = sc[sel]
    coincide: dict[Any, Any] = {}
    if "numerics" in sc:
        full, coincide = distinct_numerics(sc, key)
        sc = sc[sc.set_index(key).index.isin(full)]
        if coincide:
            same = ", ".join(f"{d[0]} · {d[1]} = {k[0]} · {k[1]}" for d, k in sorted(coincide.items())[:4])
            more = f", … {len(coincide) - 4} more" if len(coincide) > 4 else ""
            note = (note + "; " if note else "") + (
                f"{len(coincide)} backend × spec cell(s) gave bit-identical outputs to another on every seed and "
                f"count once ({same}{more}): the aggregate rests on {len(full)} distinct numeric result(s)"
            )
    vals, boots = {}, {}
    for g in (baseline, candidate):
        gs = sc[sc["group"] == g]
        idx = {s: list(gs.index[gs["seed"] == s]) for s in seeds[g]}
        vals[g], boots[g] = _seed_values(per_cell, idx, reps)
    paired = seeds[baseline] == seeds[candidate]
    rows = []
    for metric, (label, unit, higher_better, per_sample) in METRICS.items():
        b, c = vals[baseline][metric], vals[candidate][metric]
        image = boots[candidate][metric] - boots[baseline][metric] if per_sample and reps is not None else None
        iv = combine(b, c, paired, image, level)
        rows.append(
            {
                "metric": metric,
                "label": label,
                "unit": unit,
                "cells": len(full),  # distinct numerics: identical outputs of several backends count once
                "coincident": len(coincide),
                "baseline_seeds": len(b),
                "candidate_seeds": len(c),
                "paired": paired,
                "baseline_mean": float(b.mean()),
                "baseline_sd": float(b.std(ddof=1)) if len(b) > 1 else math.nan,
                "candidate_mean": float(c.mean()),
                "candidate_sd": float(c.std(ddof=1)) if len(c) > 1 else math.nan,
                "difference": iv.estimate,
                "ci_lo": iv.lo,
                "ci_hi": iv.hi,
                "interval_covers": iv.sources,
                "significant": iv.significant,
                "better": (
                    "" if not iv.significant else ("candidate" if (iv.estimate > 0) == higher_better else "baseline")
                ),
            }
        )
    return rows, note


def _fmt_cells(keys: list[tuple[str, str]], limit: int = 4) -> str:
    text = ", ".join(f"{b} · {s}" for b, s in keys[:limit])
    return text + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


def compare(
    results: str | Path | list[str | Path],
    baseline_group: str | None = None,
    candidate_group: str | None = None,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Any:
    """Compare two groups of checkpoints over the results folder(s); a DataFrame (``df.attrs`` holds notes)."""
    paths = [results] if isinstance(results, str | Path) else list(results)
    rows, preds = load_study(paths)
    return compare_study(build_study(rows, preds), baseline_group, candidate_group, n_boot, level)


def cell_intervals(study: Study, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Any:
    """Per cell (row of ``study.cells``): FP→Q gap in pp with its paired-bootstrap interval over the evaluation
    samples (the same images for the cell and its FP32 reference), and top-1 agreement in %."""
    cells = study.cells.copy()
    if cells.empty:
        return cells.assign(gap_pp=[], gap_lo=[], gap_hi=[], agreement_pct=[])
    w = bootstrap_weights(study.gap.shape[1], n_boot, seed)
    reps = w @ study.gap.T * 100
    a = (1 - level) / 2 * 100
    cells["gap_pp"] = study.gap.mean(axis=1) * 100
    cells["gap_lo"], cells["gap_hi"] = np.percentile(reps, a, axis=0), np.percentile(reps, 100 - a, axis=0)
    cells["agreement_pct"] = study.agree.mean(axis=1) * 100
    return cells


def replica_intervals(study: Study, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Any:
    """Per group × backend × spec: the FP→Q gap averaged over seeds, with an interval that adds seed variance
    (t with k − 1 df) and image-resampling variance, as :func:`combine` does for differences."""
    import pandas as pd

    cells = study.cells
    if cells.empty:
        return pd.DataFrame(columns=["group", "backend", "spec_id", "precision", "gap_pp", "lo", "hi", "seeds"])
    w = bootstrap_weights(study.gap.shape[1], n_boot, seed)
    reps = w @ study.gap.T * 100
    pts = study.gap.mean(axis=1) * 100
    out = []
    for (g, b, s, p), sub in cells.groupby(["group", "backend", "spec_id", "precision"]):
        idx = list(sub.index)
        v = pts[idx]
        v_img = float(np.var(reps[:, idx].mean(axis=1), ddof=1))
        k = len(idx)
        half = _half_width(float(np.var(v, ddof=1)) / k if k >= 2 else 0.0, k - 1 or math.inf, v_img, level)
        out.append(
            {
                "group": g,
                "backend": b,
                "spec_id": s,
                "precision": p,
                "gap_pp": float(v.mean()),
                "lo": float(v.mean()) - half,
                "hi": float(v.mean()) + half,
                "seeds": k,
            }
        )
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------
def _num(v: float, unit: str = "") -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:+.2f}" if unit == "pp" else f"{v:.2f}"


def _mean_sd(m: float, sd: float, unit: str) -> str:
    return _num(m, unit) + ("" if not math.isfinite(sd) else f" ± {sd:.2f}")


def headline(r: Any, baseline: str, candidate: str) -> str:
    """One plain sentence for a difference row, e.g. 'INT8 mean gap: no difference detectable, CI [...]'."""
    ci = f"CI [{_num(r['ci_lo'], 'pp')}, {_num(r['ci_hi'], 'pp')}] {r['unit']}".rstrip()
    what = f"{r['precision'].upper()} {r['label']}"
    if int(r.get("coincident", 0) or 0):  # say what the aggregate rests on when backends duplicated numerics
        what += f" (over {r['cells']} distinct numerics)"
    if not math.isfinite(r["ci_lo"]):
        diff = f"{_num(r['difference'], 'pp')} {r['unit']}"
        return f"{what}: {candidate} − {baseline} = {diff}, no interval ({r['interval_covers']})"
    if not r["significant"]:
        return f"{what}: no difference detectable, {ci} ({candidate} − {baseline}; {r['interval_covers']})"
    return (
        f"{what}: {candidate} − {baseline} = {_num(r['difference'], 'pp')} {r['unit']}, {ci} — "
        f"{r['better']} better ({r['interval_covers']})"
    )


def group_table(df: Any) -> tuple[list[str], list[list[str]]]:
    """The study table: per precision and group, mean ± sd over seeds of each metric (slice 'all')."""
    b, c = df.attrs["baseline"], df.attrs["candidate"]
    header = ["precision", "group", "seeds", "cells"] + [f"{METRICS[m][0]} {METRICS[m][1]}".strip() for m in METRICS]
    body = []
    alls = df[df["slice"] == "all"]
    for prec, g in alls.groupby("precision", sort=False):
        g = g.set_index("metric")
        for name, side in ((b, "baseline"), (c, "candidate")):
            first = g.iloc[0]
            body.append(
                [prec, name, str(first[f"{side}_seeds"]), str(first["cells"])]
                + [_mean_sd(g.loc[m, f"{side}_mean"], g.loc[m, f"{side}_sd"], METRICS[m][1]) for m in METRICS]
            )
    return header, body


def difference_table(df: Any, slices: tuple[str, ...] = ("all", "backend", "family")) -> tuple[list[str], list]:
    header = ["precision", "slice", "metric", "baseline", "candidate", "cand − base", "95 % CI", "seeds", "verdict"]
    body = []
    for _, r in df[df["slice"].isin(slices)].iterrows():
        if r["cells"] == 1 and r["metric"] in ("worst_gap_pp", "spread_pp"):
            continue  # one cell: worst = mean and spread = 0 by definition
        where = "all backends × specs" if r["slice"] == "all" else f"{r['slice']}: {r['slice_value']}"
        ci = "–" if not math.isfinite(r["ci_lo"]) else f"[{_num(r['ci_lo'], 'pp')}, {_num(r['ci_hi'], 'pp')}]"
        verdict = (
            f"{r['better']} better"
            if r["significant"]
            else ("no difference detectable" if ci != "–" else "no interval")
        )
        body.append(
            [
                r["precision"],
                where,
                f"{r['label']} {r['unit']}".strip(),
                _mean_sd(r["baseline_mean"], r["baseline_sd"], r["unit"]),
                _mean_sd(r["candidate_mean"], r["candidate_sd"], r["unit"]),
                _num(r["difference"], "pp"),
                ci,
                f"{r['baseline_seeds']}/{r['candidate_seeds']}" + (" paired" if r["paired"] else ""),
                f"{verdict} ({r['interval_covers']})",
            ]
        )
    return header, body


def headlines(df: Any) -> list[str]:
    b, c = df.attrs["baseline"], df.attrs["candidate"]
    sel = df[(df["slice"] == "all") & df["metric"].isin(["mean_gap_pp", "worst_gap_pp", "spread_pp"])]
    return [headline(r, b, c) for _, r in sel.iterrows()]


_MD_SYNTAX = re.compile(r"([\\`*_{}|#~])")
_MD_ANY = re.compile(r"[\\`*_{}|#~&<>\]!]")  # any character md_escape would change (or that starts "](", "![")


def md_escape(text: Any) -> str:
    """Markdown-safe text: HTML special characters as entities (raw HTML must not reach a renderer), and the
    characters that would start Markdown syntax (table pipes, emphasis, links, code) backslash-escaped. Text
    without any of them (most table cells: numbers) is returned as it is: a 10k-row report escapes ~200k cells."""
    import html

    text = printable(text)
    if not _MD_ANY.search(text):
        return text
    text = _MD_SYNTAX.sub(r"\\\1", html.escape(text, quote=False))
    return text.replace("](", "]\\(").replace("![", "!\\[")  # no link or image syntax survives


def md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def to_markdown(df: Any, details: bool = True) -> str:
    """The comparison as Markdown: headlines, the per-group study table, then every difference with its CI."""
    if df.empty:
        return "No quantized cells with per-sample predictions to compare.\n"
    b, c = df.attrs["baseline"], df.attrs["candidate"]
    parts = [
        f"Candidate **{md_escape(c)}** vs baseline **{md_escape(b)}**: FP→Q top-1 gap per precision over "
        "backends × specs, mean ± sd over seeds; differences with a 95 % interval over seeds and evaluation "
        "samples (paired bootstrap over the same images).",
        "",
        *[f"- {md_escape(h)}" for h in headlines(df)],
        "",
        md_table(*group_table(df)),
        "",
    ]
    if details:
        parts += [md_table(*difference_table(df)), ""]
    parts += [f"- note: {md_escape(n)}" for n in df.attrs.get("notes", [])]
    return "\n".join(parts) + "\n"
