"""``--fallback-search``: which layers to keep in float to recover top-1 agreement with the FP32 model.

The ``samples`` evaluation samples are split once, seeded, into a **search** split and a disjoint
**confirmation** split (``confirm_fraction`` of them, default half). Every compile is evaluated on all samples, but
only the search split's numbers choose:

1. candidates are the quantized layers the localisation ranks first — by the decision loss they add when the
   decision rule ran (``decision_added``), then by added noise (``added_nsr``); at most ``max_candidates``;
2. each is kept in float alone and its top-1 agreement with FP32 measured on the search split;
3. layers are added in order of their single-layer gain, k = 1, 2, … ``max_k``, while agreement on the search
   split rises, until it reaches ``target_agreement`` or the time budget is spent (a step that would exceed it is
   not started; one compile+evaluate is the unit).

The chosen set is then measured once on the confirmation split against the unchanged backend: the change in top-1
agreement with FP32 with its exact paired-bootstrap 95 % interval over those samples
(``qtbench.harness.analysis.resample``'s
trinomial distribution: the interval a Monte Carlo paired bootstrap approaches), and with labels the change in the
top-1 gap to FP32 likewise, plus the mean KL to FP32 before and after. The suggestion is **confirmed** only when the
agreement interval lies above 0 and, with labels, the gap is not significantly wider; otherwise the search says it
found nothing and writes no sweep file (a file a user could run as is should not exist for a change that was not
shown to help). Choosing on the same few flipped samples that report the gain is selection bias: on held-out
samples such a choice can make things worse.

Supported where the adapter names an option that keeps nodes in float (``Backend.float_fallback_option``; the
built-ins: ``exclude_nodes`` on ``ort``, ``openvino`` and ``simnpu``). A confirmed set is written as a sweep file
``qtbench sweep`` runs as is: the same model, data and spec, the backend with and without that option (so the
row's ``backend_options`` records it), and the confirmed effect in its header and ``description``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtbench import backends
from qtbench.backends.base import ModelInput
from qtbench.backends.taps import FUSABLE_ACTIVATIONS, index_graph
from qtbench.harness.analysis.localize.targets import artifact_workdir
from qtbench.harness.analysis.resample import _sum_quantiles
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.intake import file_sha256
from qtbench.harness.core.metrics import log_softmax
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.run.cell import fp32_outputs, run_batched
from qtbench.harness.run.plan import _data_path

#: ops worth keeping in float (compute and requantizing ops; a Relu or a Reshape carries no quantizer of its own)
CANDIDATE_OPS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Sub",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "Softmax",
    "LayerNormalization",
    "Resize",
}


@dataclass(frozen=True)
class FallbackSettings:
    budget_s: float = 300.0
    max_candidates: int = 8
    max_k: int = 4
    samples: int = 500
    target_agreement: float = 0.99
    #: share of the samples held out to confirm the chosen set (never used to choose)
    confirm_fraction: float = 0.5
    #: seed of the search/confirmation split
    seed: int = 0


#: fewest samples on each side of the split: below it no interval can exclude 0 for a real but modest gain
MIN_SPLIT = 10


def split_samples(n: int, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(search, confirmation) sample indices: a seeded random partition of ``range(n)``, each sorted."""

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fallback confirm_fraction {fraction}: choose a share between 0 and 1 (default 0.5)")
    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * fraction)
    return np.sort(perm[k:]), np.sort(perm[:k])


def paired_change(base: np.ndarray, new: np.ndarray) -> tuple[float, float, float]:
    """(change, lo, hi) of the mean of two paired 0/1 vectors: the point change and its exact paired-bootstrap
    95 % interval (resampling samples draws how many land in "only base" and "only new";
    ``qtbench.harness.analysis.resample``)."""

    b, q = np.asarray(base, bool), np.asarray(new, bool)
    n = len(b)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    n_minus, n_plus = int(np.sum(b & ~q)), int(np.sum(~b & q))
    lo, hi = _sum_quantiles(n, n_minus, n_plus)
    return (n_plus - n_minus) / n, float(lo), float(hi)


def candidates(rows: list[dict[str, Any]], limit: int) -> list[tuple[str, float]]:
    """(node, score) for the quantized layers, the most harmful first: by the decision loss the layer adds when the
    localisation's decision rule ran (``decision_added``: what flips decisions), else by its jump (``added_nsr``).

    A node whose output is fused takes the numbers of the tensor it is compared at (``covers``: a Conv fused with
    its Relu is ranked by the Relu output's).
    """
    by_node: dict[str, tuple[float, float]] = {}
    ops = {r["node"]: r["op_type"] for r in rows if r.get("node")}
    for r in rows:
        if r["status"] != "compared" or not np.isfinite(r.get("added_nsr", np.nan)):
            continue
        dec = float(r.get("decision_added", np.nan))
        key = (dec if np.isfinite(dec) else -np.inf, float(r["added_nsr"]))
        for n in json.loads(r.get("covers") or "[]"):
            if ops.get(n) in CANDIDATE_OPS:
                by_node[n] = max(by_node.get(n, (-np.inf, -np.inf)), key)
    ranked = sorted(by_node.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
    return [(n, k[0] if np.isfinite(k[0]) else k[1]) for n, k in ranked[:limit]]


def fused_groups(index: Any) -> dict[str, list[str]]:
    """node → the node plus the activation that alone consumes its output (Conv → Relu): kept in float together,
    since a float Conv before a quantized Relu gets a quantizer of its own on the pre-activation tensor (ORT's
    QDQ; simnpu requantizes it on re-entry), whose range a dead or negative channel can make far wider than the
    post-activation one (measured on simnpu, tests' planted depthwise model: a float dwconv before a quantized
    Relu took agreement from 64 % to 33 %, with its Relu to 94 %)."""

    groups: dict[str, list[str]] = {}
    for node, outs in index.node_outputs.items():
        cons = [c for o in outs if o for c in index.consumers.get(o, [])]
        live = [o for o in outs if o]
        if len(live) == 1 and len(cons) == 1 and index.node_ops.get(cons[0]) in FUSABLE_ACTIVATIONS:
            if live[0] not in index.outputs:
                groups[node] = [node, cons[0]]
    return groups


@dataclass
class _Outcome:
    """Per-sample results of one compiled set on all samples."""

    agree: np.ndarray  # top-1 equals FP32's
    correct: np.ndarray | None  # top-1 equals the label
    kl: np.ndarray  # KL(FP32 ‖ quantized) per sample


def _outcome(q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> _Outcome:

    lp, lq = log_softmax(ref), log_softmax(q)
    kl = np.sum(np.exp(lp) * (lp - lq), axis=1)
    top = np.argmax(q, axis=1)
    return _Outcome(top == np.argmax(ref, axis=1), None if labels is None else top == labels, kl)


def confirm(base: _Outcome, best: _Outcome, ref_correct: np.ndarray | None, idx: np.ndarray) -> dict[str, Any]:
    """The chosen set against the unchanged backend on the confirmation samples ``idx``: changes with intervals
    and the verdict (confirmed only when agreement rises with an interval above 0 and the gap is not wider)."""
    d, lo, hi = paired_change(base.agree[idx], best.agree[idx])
    out: dict[str, Any] = {
        "agreement": float(np.mean(best.agree[idx])),
        "base_agreement": float(np.mean(base.agree[idx])),
        "recovered_pp": 100 * d,
        "recovered_lo_pp": 100 * lo,
        "recovered_hi_pp": 100 * hi,
        "kl_base": float(np.mean(base.kl[idx])),
        "kl": float(np.mean(best.kl[idx])),
    }
    worse_gap = False
    if base.correct is not None and best.correct is not None and ref_correct is not None:
        t, tlo, thi = paired_change(base.correct[idx], best.correct[idx])
        fp = float(np.mean(ref_correct[idx]))
        out.update(
            gap_base_pp=100 * (fp - float(np.mean(base.correct[idx]))),
            gap_pp=100 * (fp - float(np.mean(best.correct[idx]))),
            gap_change_pp=-100 * t,
            gap_change_lo_pp=-100 * thi,
            gap_change_hi_pp=-100 * tlo,
        )
        worse_gap = -thi > 0
    if lo > 0 and not worse_gap:
        out.update(confirmed=True, verdict="confirmed: agreement interval above 0 on the confirmation split")
    elif worse_gap:
        out.update(confirmed=False, verdict="rejected: the top-1 gap to FP32 is significantly wider")
    elif d <= 0:
        out.update(confirmed=False, verdict="rejected: no gain in agreement on the confirmation split")
    else:
        out.update(confirmed=False, verdict="rejected: the agreement interval on the confirmation split includes 0")
    return out


def search(
    sweep: Any,
    model_entry: Any,
    model_path: Path,
    spec: Any,
    target: Any,
    rows: list[dict[str, Any]],
    evaluation: Any,
    calib: Any,
    settings: FallbackSettings,
    out: Path,
    progress: Any = None,
) -> tuple[list[dict[str, Any]], Path | None] | None:
    """Run the bounded greedy search for one backend on the search split, confirm its choice on the held-out
    split; returns (result rows, suggested sweep file or None when nothing was confirmed) or None (unsupported)."""

    option = fallback_option(target.slug)
    if option is None or spec.is_float:
        return None

    facts = model_facts(model_path)
    groups = fused_groups(index_graph(model_path))
    sha = file_sha256(model_path)
    model = ModelInput(model_path, sha, facts.input_names, facts.output_names, facts.dynamic_batch)
    data = evaluation.head(settings.samples)
    batch = 64 if facts.dynamic_batch else 1
    ref = fp32_outputs(model_path, data, 0, batch).reshape(len(data), -1)
    labels = None if data.labels is None else np.asarray(data.labels).reshape(-1)
    ref_correct = None if labels is None else np.argmax(ref, axis=1) == labels
    calib_sha = calib.head(spec.calib_samples).sha256 if calib is not None and spec.is_static else ""
    search_idx, confirm_idx = split_samples(len(data), settings.confirm_fraction, settings.seed)
    t_start = time.perf_counter()
    step_s: list[float] = []
    base_info = {
        "model": model_entry.display_name,
        "spec_id": spec.id,
        "backend": target.key,
        "backend_slug": target.slug,
        "samples": len(data),
        "search_samples": len(search_idx),
        "confirm_samples": len(confirm_idx),
        "budget_s": settings.budget_s,
    }
    results: list[dict[str, Any]] = []

    def record(step: str, nodes: list[str], extra: dict[str, Any]) -> None:
        results.append(
            {
                **base_info,
                "step": step,
                "split": "confirmation" if step == "confirm" else "search",
                "k": len(nodes),
                "nodes": json.dumps(nodes),
                **extra,
                "elapsed_s": time.perf_counter() - t_start,
            }
        )

    if min(len(search_idx), len(confirm_idx)) < MIN_SPLIT:
        why = (
            f"not run: {len(data)} evaluation sample(s) give {len(search_idx)} to search and {len(confirm_idx)} to "
            f"confirm; at least {MIN_SPLIT} each are needed (raise --agreement-samples or add evaluation data)"
        )
        record("confirm", [], {"confirmed": False, "chosen": False, "best": False, "verdict": why})
        return results, None

    def evaluate(nodes: list[str]) -> _Outcome:
        t0 = time.perf_counter()
        options = {**target.options, option: list(nodes)} if nodes else dict(target.options)
        backend = backends.create(target.slug, options)
        version = ";".join(f"{k}={v}" for k, v in sorted(backend.availability().versions.items()))
        wd = artifact_workdir(
            sweep.cache_path, type(target)(target.key, target.slug, options), version, sha, spec, calib_sha
        )
        with backend.compile(model, spec, calib, wd) as compiled:
            q = run_batched(compiled.infer, data, 0, batch).reshape(len(data), -1)
        step_s.append(time.perf_counter() - t0)
        return _outcome(q, ref, labels)

    def room() -> bool:
        per = max(step_s) if step_s else 0.0
        return time.perf_counter() - t_start + per <= settings.budget_s

    def on_search(o: _Outcome) -> float:
        return float(np.mean(o.agree[search_idx]))

    base = evaluate([])
    base_a = on_search(base)
    record("baseline", [], {"agreement": base_a, "recovered_pp": 0.0})
    singles: list[tuple[str, float, _Outcome]] = []
    for node, _score in candidates(rows, settings.max_candidates):
        if not room():
            break
        group = groups.get(node, [node])
        o = evaluate(group)
        a = on_search(o)
        singles.append((group, a, o))
        record("single", group, {"agreement": a, "recovered_pp": 100 * (a - base_a)})
        if progress:
            progress(
                f"  {target.key} keep {', '.join(group)} in float: agreement {100 * a:.2f}% on the search split "
                f"(base {100 * base_a:.2f}%)"
            )
    singles.sort(key=lambda s: -s[1])
    best_nodes: list[str] = []
    best_a, best_o = base_a, base
    if singles and singles[0][1] > base_a:
        best_nodes, best_a, best_o = list(singles[0][0]), singles[0][1], singles[0][2]
        for group, _a, _o in singles[1 : settings.max_k]:
            if best_a >= settings.target_agreement or not room():
                break
            trial = [*best_nodes, *[n for n in group if n not in best_nodes]]
            o = evaluate(trial)
            a = on_search(o)
            record("greedy", trial, {"agreement": a, "recovered_pp": 100 * (a - base_a)})
            if a > best_a:
                best_nodes, best_a, best_o = trial, a, o
    results[-1]["budget_exhausted"] = not room()
    for r in results:
        r["chosen"] = bool(best_nodes) and json.loads(r["nodes"]) == best_nodes and r["step"] != "baseline"
        r["best"] = False
    if not best_nodes:
        record(
            "confirm",
            [],
            {
                "confirmed": False,
                "chosen": False,
                "best": False,
                "verdict": "nothing found: no candidate raised agreement on the search split",
            },
        )
        return results, None
    verdict = confirm(base, best_o, ref_correct, confirm_idx)
    record("confirm", best_nodes, {**verdict, "chosen": True, "best": verdict["confirmed"]})
    if progress:
        progress(
            f"  {target.key} keep {', '.join(best_nodes)} in float: {verdict['verdict']} ({describe(results[-1])})"
        )
    if not verdict["confirmed"]:
        return results, None
    return results, write_sweep(sweep, model_entry, spec, target, option, best_nodes, out, describe(results[-1]))


def describe(r: dict[str, Any]) -> str:
    """The confirmed effect of a confirm row in one sentence (the sweep file's header and description)."""
    text = (
        f"on {r['confirm_samples']} held-out samples not used to choose: top-1 agreement with FP32 "
        f"{100 * r['base_agreement']:.1f}% -> {100 * r['agreement']:.1f}% ({r['recovered_pp']:+.1f} pp, 95% paired "
        f"interval {r['recovered_lo_pp']:+.1f} to {r['recovered_hi_pp']:+.1f} pp)"
    )
    if np.isfinite(r.get("gap_pp", np.nan)):
        text += (
            f"; top-1 gap to FP32 {r['gap_base_pp']:.1f} -> {r['gap_pp']:.1f} pp ({r['gap_change_pp']:+.1f} pp, "
            f"{r['gap_change_lo_pp']:+.1f} to {r['gap_change_hi_pp']:+.1f})"
        )
    return text + f"; mean KL to FP32 {r['kl_base']:.3g} -> {r['kl']:.3g}"


def write_sweep(
    sweep: Any,
    model_entry: Any,
    spec: Any,
    target: Any,
    option: str,
    nodes: list[str],
    out: Path,
    effect: str = "",
) -> Path:
    """A sweep file for the model × spec with the backend as found and with ``nodes`` in its float-fallback
    ``option``; paths absolute. ``effect``: the confirmed effect, written in the header and as its ``description``."""
    import yaml

    digest = hashlib.sha256(json.dumps(nodes).encode()).hexdigest()[:6]
    plain = sweep.to_dict()
    plain.pop("base_dir", None)
    ev_src, ev_path = _data_path(sweep, model_entry, "evaluation")
    ca_src, ca_path = _data_path(sweep, model_entry, "calibration")
    model = {"path": str(sweep.resolve(model_entry.path)), "name": model_entry.display_name}
    if model_entry.output:
        model["output"] = model_entry.output
    cfg: dict[str, Any] = {
        "name": f"{sweep.name}-fallback",
        "models": [model],
        "backends": [
            {"name": target.slug, "label": target.key, "options": dict(target.options)},
            {
                "name": target.slug,
                "label": f"{target.key}-keep{len(nodes)}-{digest}",
                "options": {**target.options, option: list(nodes)},
            },
        ],
        "specs": [spec.id],
    }
    if effect:
        cfg["description"] = f"keep {', '.join(nodes)} in float: {effect}"
    if ev_path:
        cfg["evaluation"] = {
            k: v for k, v in {"path": ev_path, "labels": ev_src.labels, "limit": ev_src.limit}.items() if v is not None
        }
    if ca_path:
        cfg["calibration"] = {k: v for k, v in {"path": ca_path, "limit": ca_src.limit}.items() if v is not None}
    for key in ("measure", "device"):
        if key in plain:
            cfg[key] = plain[key]
    cfg["run"] = {"results_dir": str(sweep.resolve(sweep.run.results_dir))}
    path = out / f"fallback-{model_entry.display_name}-{target.key}-{spec.id}.yaml"
    header = (
        f"# qtbench localize --fallback-search: keep {len(nodes)} layer(s) of {model_entry.display_name} in float on "
        f"{target.key} for {spec.id}\n"
    )
    if effect:
        header += f"# confirmed {effect}\n"
    header += f"# run: qtbench sweep {path}\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def fallback_option(slug: str) -> str | None:
    """The option through which ``slug``'s adapter keeps named nodes in float (``Backend.float_fallback_option``),
    or None when it cannot (or its adapter does not load)."""
    try:
        return backends.load_class(slug).float_fallback_option
    except Exception:  # noqa: BLE001 - an adapter that fails to import cannot be searched; localize says why
        return None
