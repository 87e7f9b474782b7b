"""`qtbench check`: gate a candidate's results against a baseline, cell by cell, with significance.

This module matches the cells of two results folders, refuses to compare what is not comparable and judges every
gate (:mod:`.gates`: rules and the verdict) on every matched cell, from intervals :mod:`.resample` computes: a block
bootstrap of the raw latencies, a paired bootstrap of the per-sample predictions. Metrics without per-sample data
are judged on the point estimate and say so. Marks (asv style): ``x`` fail, ``~`` inconclusive, ``+``
significantly better, ``-`` significantly worse but within the gate, blank unchanged.

Drift shared by every repeat of a run (another process loading the machine for the whole sweep) cannot be told
from a regression with one run per side. Where a row shows it was measured on an oversubscribed machine (1-min
load average above the usable cores in its ``device`` id), a latency gate that would fail is inconclusive and
says why; otherwise re-run both sides close in time on a quiet machine.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from qtbench.devices.host import cores_of
from qtbench.harness.analysis.gates import Gate, decide, decide_from_intervals, intervals, settled
from qtbench.harness.analysis.resample import (
    BOOTSTRAP,
    SCREEN_REPS,
    block_lengths,
    exact_flag_intervals,
    latency_statistic,
    paired_bootstrap,
    replicates,
)
from qtbench.harness.core.errors import UserError
from qtbench.harness.run.store import load_results, record_arrays, stores_under

LATENCY_METRICS = {"latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "fps"}
MIN_SAMPLES = 10


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


def run_gates(
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
        data["seed"] = seed
        _latency_replicates(gates, [idx[k] for k in judged], data, SCREEN_REPS)
        return data

    base_data, cand_data = _both((side, baseline, b_idx, 0), (side, candidate, c_idx, 1))
    _latency_intervals(gates, [(b_idx[k], c_idx[k]) for k in judged], base_data, cand_data)
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


def _both(*calls: tuple[Any, ...]) -> list[Any]:
    """Each ``(fn, *args)`` called in its own thread, their results in order: the two sides of a check load
    (Parquet reads) and resample (large numpy operations) with the GIL released, so a second core halves them."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


def _latency_replicates(gates: list[Gate], rows: list[dict[str, Any]], data: dict[str, Any], n_reps: int) -> None:
    """``n_reps`` replicates of every latency gate's statistic for ``rows`` of one side, into ``data["replicates"]``
    by (record id, metric, n_reps), and each record's block length (its longest run's) into ``data["blocks"]``.
    Cells timed with the same protocol (repeat lengths, block, batch) are resampled together."""
    lat_gates = [g for g in gates if g.metric in LATENCY_METRICS]
    out, blocks = data.setdefault("replicates", {}), data.setdefault("blocks", {})
    runs = {r["record_id"]: [s for s in data["samples"].get(r["record_id"], []) if len(s)] for r in rows}
    runs = {rid: rs for rid, rs in runs.items() if lat_gates and sum(map(len, rs)) >= MIN_SAMPLES}
    by_len: dict[int, list[tuple[str, np.ndarray]]] = {}  # block lengths of all runs of one length at once
    for rid, r in ((rid, r) for rid, rs in runs.items() if rid not in blocks for r in rs):
        by_len.setdefault(len(r), []).append((rid, r))
    for group in by_len.values():
        for (rid, _), b in zip(group, block_lengths(np.stack([r for _, r in group])), strict=True):
            blocks[rid] = max(blocks.get(rid, 1), int(b))
    groups: dict[tuple[Any, ...], list[str]] = {}
    for row in (r for r in rows if r["record_id"] in runs):
        rid = row["record_id"]
        if any((rid, g.metric, n_reps) not in out for g in lat_gates):
            key = (tuple(map(len, runs[rid])), blocks[rid], int(row.get("batch_size", 1) or 1))
            groups.setdefault(key, []).append(rid)
    for (lengths, block, batch), members in groups.items():
        flat = np.stack([np.concatenate(runs[m]) for m in members])
        for gate in lat_gates:
            reps = replicates(flat, lengths, block, latency_statistic(gate.metric, batch), n_reps, data["seed"])
            out.update(((rid, gate.metric, n_reps), r) for rid, r in zip(members, reps, strict=True))


def _latency_intervals(
    gates: list[Gate], pairs: list[tuple[Any, Any]], bdata: dict[str, Any], cdata: dict[str, Any]
) -> None:
    """The verdict intervals of every latency gate on every cell pair, batched across pairs, into
    ``bdata["intervals"]`` by (baseline id, candidate id, metric) with the number of replicates they come from: the
    screening's where :func:`settled` says they stand, else the full resampling's (both sides in parallel)."""
    found, sides = bdata.setdefault("intervals", {}), (bdata, cdata)
    for gate in (g for g in gates if g.metric in LATENCY_METRICS):
        todo = pairs
        for n_reps in (SCREEN_REPS, BOOTSTRAP):
            _both(*((_latency_replicates, [gate], [p[i] for p in todo], d, n_reps) for i, d in enumerate(sides)))
            keys = [[(row["record_id"], gate.metric, n_reps) for row in p] for p in todo]
            have = [i for i, (kb, kc) in enumerate(keys) if kb in bdata["replicates"] and kc in cdata["replicates"]]
            if not have:
                break
            base = np.stack([bdata["replicates"][keys[i][0]] for i in have])
            cand = np.stack([cdata["replicates"][keys[i][1]] for i in have])
            stands = settled(gate, base, cand) | (n_reps == BOOTSTRAP)
            ends = np.transpose(intervals(gate, base[stands], cand[stands])).tolist()
            for i, (q_lo, q_hi, d_lo, d_hi) in zip(compress(have, stands), ends, strict=True):
                found[(keys[i][0][0], keys[i][1][0], gate.metric)] = ((q_lo, q_hi), (d_lo, d_hi), n_reps)
            todo = [todo[i] for i in compress(have, ~stands)]


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
    if gate.metric in LATENCY_METRICS:
        xr, yr = bdata["samples"].get(b["record_id"], []), cdata["samples"].get(c["record_id"], [])
        nx, ny = sum(map(len, xr)), sum(map(len, yr))
        if nx < MIN_SAMPLES or ny < MIN_SAMPLES:
            return Verdict(
                label, name, base, cand, change, f"{nx}/{ny} samples", "inconclusive", "~",
                f"too few raw samples (need ≥ {MIN_SAMPLES} per side)",
            )  # fmt: skip
        key = (b["record_id"], c["record_id"], gate.metric)
        if key not in bdata.get("intervals", {}):
            _latency_intervals([gate], [(b, c)], bdata, cdata)
        q_int, d_int, n_reps = bdata["intervals"][key]
        bx, by = bdata["blocks"][b["record_id"]], cdata["blocks"][c["record_id"]]
        evidence = f"block bootstrap (blocks {bx}/{by}, repeats {len(xr)}/{len(yr)}, {n_reps} replicates)"
        decided = decide_from_intervals(gate, base, cand, q_int, d_int)
        return _verdict(gate, label, name, base, cand, change, evidence, decided, _oversubscribed(b, c))
    evidence = "point estimate (no per-sample data stored for this metric)"
    if gate.metric == "top1":
        none = Predictions(np.zeros(0), np.zeros(0, np.int64), False)
        pa = bdata["predictions"].get(b["record_id"], none)
        pb = cdata["predictions"].get(c["record_id"], none)
        a_ok, b_ok = pa.correct, pb.correct
        paired = len(a_ok) and len(a_ok) == len(b_ok) and pa.labelled and b["eval_sha256"] == c["eval_sha256"]
        evidence = "point estimate (no paired per-sample predictions)"
        if paired and gate.unit != "%":  # the change in pp (or absolute), or a bound: its distribution is exact
            scale = 100.0 if gate.unit == "pp" else 1.0
            ends = exact_flag_intervals(a_ok, b_ok, scale=scale, bound=gate.kind == "bound")
            evidence = f"paired bootstrap (n={len(a_ok)}, exact distribution)"
            return _verdict(
                gate, label, name, base, cand, change, evidence, decide_from_intervals(gate, base, cand, *ends), ""
            )
        if paired:  # a relative (%) change: a ratio of two correlated counts, resampled
            reps = paired_bootstrap(a_ok, b_ok, SCREEN_REPS)
            if not settled(gate, *reps).all():  # as for latency: the full resampling only near a boundary
                reps = paired_bootstrap(a_ok, b_ok, BOOTSTRAP)
            evidence = f"paired bootstrap (n={len(a_ok)}, {len(reps[0])} replicates)"
            return _verdict(gate, label, name, base, cand, change, evidence, decide(gate, base, cand, *reps), "")
    # no data to resample: the point estimate decides, and the evidence column says so
    if gate.violated(base, cand):
        reason = "threshold crossed (point estimate; no per-sample data to judge noise)"
        return Verdict(label, name, base, cand, change, evidence, "fail", "x", reason)
    return Verdict(label, name, base, cand, change, evidence, "pass", "")


def _verdict(
    gate: Gate, label: str, name: str, base: float, cand: float, change: str, evidence: str,
    decided: tuple[str, str, int, str], busy: str,
) -> Verdict:  # fmt: skip
    """The Verdict row of a decided gate (:func:`decide`'s answer), with the reason its verdict gets."""
    verdict, mark, _, interval = decided
    if verdict == "fail" and busy:
        return Verdict(
            label, name, base, cand, change, f"{interval}; {evidence}", "inconclusive", "~",
            f"threshold crossed, but {busy}: latency there is not the model's alone",
        )  # fmt: skip
    reason = {
        "fail": "threshold crossed and the whole interval is past it",
        "inconclusive": "threshold crossed but not significant: the interval reaches back inside the gate "
        "(noise cannot be ruled out)"
        if gate.violated(base, cand)
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
