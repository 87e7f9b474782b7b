"""The verdict card at the top of a report: the question the sweep answers, the answer per precision with its
interval in plain words, the worst backend × spec cells, and what was not measured on this host.

Every number here comes from the same frames the rest of the report draws: the study comparison of
:func:`qtbench.harness.analysis.compare.compare_study` (the ``all`` slice, metric ``mean_gap_pp``: the very rows behind
``qtbench compare``'s headlines) and the per group × backend × spec intervals of
:func:`qtbench.harness.analysis.compare.replica_intervals` (the gap bars). Nothing is recomputed differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qtbench.harness.analysis.compare import md_escape as m
from qtbench.harness.core.tables import html_text

#: a top-1 change smaller than this (in points) is "unchanged"; anything larger is said with its sign
UNCHANGED_PP = 0.05
WORST_CELLS = 4


@dataclass
class Answer:
    precision: str  # "INT4"
    short: str  # "yes", "no", "no detectable difference", "5 of 6 cells"
    sentence: str  # the answer in plain words, with its interval
    detail: str = ""  # the numbers behind it


@dataclass
class Verdict:
    question: str
    answers: list[Answer]
    worst: list[str] = field(default_factory=list)
    worst_title: str = ""
    origin: list[str] = field(default_factory=list)  # what was simulated / estimated / not run (counts)
    caveats: list[str] = field(default_factory=list)  # audit mismatches, flagged cells, unstable timing

    def html(self) -> str:
        e = html_text
        parts = [
            "<section id='verdict' class='verdict'>",
            "<h2>Verdict</h2>",
            f"<p class='question'><b>Question:</b> {e(self.question)}</p>",
        ]
        if self.answers:
            short = "; ".join(f"{a.precision}: {a.short}" for a in self.answers)
            parts.append(f"<p class='short'><b>Answer:</b> {e(short)}</p><ul class='answers'>")
            for a in self.answers:
                detail = f"<br><span class='detail'>{e(a.detail)}</span>" if a.detail else ""
                parts.append(f"<li><b>{e(a.precision)}:</b> {e(a.sentence)}{detail}</li>")
            parts.append("</ul>")
        else:
            parts.append("<p class='short'><b>Answer:</b> no quantized cell with a top-1 result to judge.</p>")
        if self.worst_title:
            parts.append(f"<p class='sub'><b>{e(self.worst_title)}</b></p>")
        if self.worst:
            parts.append("<ul class='worst'>" + "".join(f"<li>{e(w)}</li>" for w in self.worst) + "</ul>")
        for label, lines in (("Where the numbers come from", self.origin), ("Caveats", self.caveats)):
            if lines:
                parts.append(f"<p class='sub'><b>{label}:</b> " + " ".join(e(x) for x in lines) + "</p>")
        parts.append("</section>")
        return "\n".join(parts)

    def markdown(self) -> str:

        parts = ["## Verdict", "", f"**Question:** {m(self.question)}", ""]
        if self.answers:
            parts += ["**Answer:** " + m("; ".join(f"{a.precision}: {a.short}" for a in self.answers)), ""]
            for a in self.answers:
                parts.append(f"- **{m(a.precision)}:** {m(a.sentence)}" + (f" — {m(a.detail)}" if a.detail else ""))
            parts.append("")
        else:
            parts += ["**Answer:** no quantized cell with a top-1 result to judge.", ""]
        if self.worst_title:
            parts += [f"**{m(self.worst_title)}**", ""]
        if self.worst:
            parts += [*[f"- {m(w)}" for w in self.worst], ""]
        for label, lines in (("Where the numbers come from", self.origin), ("Caveats", self.caveats)):
            if lines:
                parts += [f"**{label}:** " + " ".join(m(x) for x in lines), ""]
        return "\n".join(parts)


def _pp(v: float) -> str:
    return f"{v:+.2f}"


def _ci(lo: float, hi: float) -> str:
    return f"95 % CI {lo:+.2f} to {hi:+.2f} pp"


def study_answers(cmp: Any) -> list[Answer]:
    """Per precision, the candidate − baseline difference of the mean FP→Q gap ('all' slice), in words."""
    b, c = cmp.attrs["baseline"], cmp.attrs["candidate"]
    sel = cmp[(cmp["slice"] == "all") & (cmp["metric"] == "mean_gap_pp")]
    out = []
    for r in sel.to_dict("records"):
        d, lo, hi = r["difference"], r["ci_lo"], r["ci_hi"]
        bm, cm = r["baseline_mean"], r["candidate_mean"]
        detail = (
            f"mean FP→Q top-1 gap: {b} {_pp(bm)} pp, {c} {_pp(cm)} pp over {r['cells']} backend × spec cell(s); "
            f"seeds {r['baseline_seeds']}/{r['candidate_seeds']}{' (paired)' if r['paired'] else ''}; "
            f"interval covers {r['interval_covers']}"
        )
        prec = str(r["precision"]).upper()
        if not math.isfinite(lo):
            out.append(Answer(prec, "no interval", f"{c} − {b} = {_pp(d)} pp; no interval can be given", detail))
            continue
        if not r["significant"]:
            sentence = f"no detectable difference: {c} − {b} = {_pp(d)} pp ({_ci(lo, hi)}, which includes 0)"
            out.append(Answer(prec, "no detectable difference", sentence, detail))
            continue
        better = d > 0  # a larger (less negative) gap is better
        mag, (ilo, ihi) = abs(d), ((lo, hi) if better else (-hi, -lo))
        ci = f"95 % CI {ilo:.2f} to {ihi:.2f} pp"
        if bm <= 0 and cm <= 0:
            sentence = f"{c} loses {mag:.2f} pp {'less' if better else 'more'} top-1 than {b} ({ci})"
        else:
            sentence = f"{c}'s top-1 change under quantization is {mag:.2f} pp {'better' if better else 'worse'} "
            sentence += f"than {b}'s ({ci})"
        sentence += " — a real difference (the interval excludes 0)"
        out.append(Answer(prec, f"yes, {c} is more robust" if better else f"no, {b} is more robust", sentence, detail))
    return out


def fidelity_answers(rep: Any) -> list[Answer]:
    """A sweep without a comparison: per precision, how many backend × spec cells (per model) show no
    detectable top-1 drop against FP32 (their 95 % interval reaches 0), and the worst one."""
    out = []
    if rep is None or rep.empty:
        return out
    many = rep["group"].nunique() > 1
    for prec in [p for p in ("int4", "int8", "fp16") if p in set(rep["precision"])]:
        r = rep[rep["precision"] == prec]
        drop = r[r["hi"] < 0]
        n, keep = len(r), len(r) - len(drop)
        worst = r.sort_values("gap_pp").iloc[0]
        where = (f"{worst['group']} · " if many else "") + f"{worst['backend']} · {worst['spec_id']}"
        if drop.empty:
            sentence = f"all {n} cell(s) keep top-1: none shows a detectable drop against FP32"
        else:
            sentence = f"{keep} of {n} cell(s) keep top-1; {len(drop)} lose{'s' * (len(drop) == 1)} it"
        sentence += f" (worst: {where}, {_pp(worst['gap_pp'])} pp, {_ci(worst['lo'], worst['hi'])})"
        out.append(
            Answer(
                prec.upper(),
                f"{keep} of {n} cells keep top-1",
                sentence,
                "keeps top-1 = the 95 % interval of its FP→Q gap reaches 0 (no detectable drop)",
            )
        )
    return out


def worst_cells(rep: Any, tags: dict[tuple[str, str], str], k: int = WORST_CELLS) -> list[str]:
    """The k backend × spec cells with the largest top-1 loss (any group), each with every group's mean gap over
    seeds and its 95 % interval (the gap bars' numbers); only cells that lose more than UNCHANGED_PP."""
    if rep is None or rep.empty:
        return []
    key = ["backend", "spec_id"]
    worst = rep.groupby(key)["gap_pp"].min().sort_values()
    worst = worst[worst <= -UNCHANGED_PP].head(k)
    most = int(rep["seeds"].max())
    groups = sorted(rep["group"].unique())
    out = []
    for (b, s), _ in worst.items():
        sub = rep[(rep["backend"] == b) & (rep["spec_id"] == s)].set_index("group")
        shown = [g for g in groups if g in sub.index]
        if len(shown) > 3:  # a sweep over many models: the worst model only
            shown = [sub["gap_pp"].idxmin()]
        vals = []
        for g in shown:
            r = sub.loc[g]
            seeds = "" if int(r["seeds"]) >= most else f", {int(r['seeds'])} seed"
            vals.append(f"{g} {_pp(r['gap_pp'])} pp ({r['lo']:+.2f} to {r['hi']:+.2f}{seeds})")
        out.append(f"{b} · {s}{tags.get((b, s), '')}: " + ", ".join(vals))
    return out


def origin_lines(rows: Any, ok: Any, not_ok: Any) -> list[str]:
    """Counts of what was measured, simulated, estimated, and what did not run."""
    kinds = ok["numbers"].fillna("").astype(str).value_counts() if "numbers" in ok else {}
    measured, sim, est = (int(kinds.get(k, 0)) for k in ("measured", "simulated", "estimated"))
    parts = [f"{measured} of {len(ok)} ok cell(s) measured on this host"]
    if sim:
        parts.append(f"{sim} SIMULATED (target numerics from a simulator; their host latency is the simulator's)")
    if est:
        parts.append(f"{est} ESTIMATED (a stand-in runtime with a performance model for the target)")
    if "est_fps" in ok and (sim or est):
        parts.append(f"{int(ok['est_fps'].notna().sum())} with the target's FPS ESTIMATED by a performance model")
    if "energy_numbers" in ok:
        e = ok["energy_numbers"].fillna("").astype(str).value_counts()
        metered, guessed = int(e.get("measured", 0)), int(e.get("estimated", 0))
        if metered or guessed:
            parts.append(f"energy: {guessed} ESTIMATED from CPU time, {metered} metered")
    lines = ["; ".join(parts) + "."]
    if len(not_ok):
        st = not_ok["status"].astype(str).value_counts()
        lines.append(f"{len(not_ok)} cell(s) did not run (" + ", ".join(f"{v} {k}" for k, v in st.items()) + ").")
    return lines


def build_verdict(
    rows: Any,
    ok: Any,
    not_ok: Any,
    rep: Any,
    cmp: Any,
    tags: dict[tuple[str, str], str],
    caveats: list[str],
) -> Verdict:
    """The card. ``cmp``: compare_study's frame (a study with two groups) or None; ``rep``: replica_intervals."""
    if cmp is not None and not cmp.empty:
        b, c = cmp.attrs["baseline"], cmp.attrs["candidate"]
        question = f"Is {c} more robust to quantization than {b} across backends and specs?"
        answers = study_answers(cmp)
    else:
        question = "Which backend × spec cells keep top-1 fidelity to FP32 after quantization?"
        answers = fidelity_answers(rep)
    worst = worst_cells(rep, tags)
    title = (
        "Worst backend × spec cells (mean FP→Q top-1 gap over seeds, 95 % interval):"
        if worst
        else "No backend × spec cell loses top-1."
    )
    if rep is None or rep.empty:
        title = ""
    return Verdict(question, answers, worst, title, origin_lines(rows, ok, not_ok), caveats)
