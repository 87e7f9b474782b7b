"""``--fallback-search``: which layers to keep in float to recover top-1 agreement with the FP32 model.

Greedy and bounded by a time budget: (1) candidates are the quantized layers ranked by the localisation's jump
(added noise) (the largest first, at most ``max_candidates``); (2) each is kept in float alone and top-1 agreement with
FP32 measured on ``samples`` evaluation samples; (3) layers are then added in order of their single-layer gain,
k = 1, 2, … ``max_k``, until agreement reaches ``target_agreement``, nothing more is gained, or the budget is
spent (a step that would exceed it is not started; one compile+evaluate is the unit). Supported where the backend
takes an ``exclude_nodes`` option: ``ort`` (onnxruntime.quantization ``nodes_to_exclude``), ``openvino``
(NNCF ignored scope, or ORT's when ``quantizer: ort``) and ``simnpu`` (the nodes run on the host in float).

The best set is written as a sweep file ``qtbench sweep`` runs as is: the same model, data and spec, the backend
with ``exclude_nodes`` in its options (so the row's ``backend_options`` records it).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED = ("ort", "openvino", "simnpu")
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


def candidates(rows: list[dict[str, Any]], limit: int) -> list[tuple[str, float]]:
    """(node, added noise-to-signal ratio) for the quantized layers, the largest jump first.

    A node whose output is fused takes the jump of the tensor it is compared at (``covers``: a Conv fused with
    its Relu is ranked by the Relu output's jump).
    """
    by_node: dict[str, float] = {}
    ops = {r["node"]: r["op_type"] for r in rows if r.get("node")}
    for r in rows:
        if r["status"] != "compared" or not np.isfinite(r.get("added_nsr", np.nan)):
            continue
        for n in json.loads(r.get("covers") or "[]"):
            if ops.get(n) in CANDIDATE_OPS:
                by_node[n] = max(by_node.get(n, -np.inf), float(r["added_nsr"]))
    ranked = sorted(by_node.items(), key=lambda kv: -kv[1])
    return ranked[:limit]


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
    """Run the bounded greedy search for one backend; returns (result rows, suggested sweep file) or None."""
    import backends
    from backends.base import ModelInput
    from harness.cell import fp32_outputs, model_facts, run_batched
    from harness.localize import artifact_workdir
    from harness.metrics import top1_agreement
    from harness.sweep import file_sha256

    if target.slug not in SUPPORTED or spec.is_float:
        return None
    facts = model_facts(model_path)
    sha = file_sha256(model_path)
    model = ModelInput(model_path, sha, facts.input_names, facts.output_names, facts.dynamic_batch)
    data = evaluation.head(settings.samples)
    batch = 64 if facts.dynamic_batch else 1
    ref = fp32_outputs(model_path, data, 0, batch).reshape(len(data), -1)
    calib_sha = calib.head(spec.calib_samples).sha256 if calib is not None and spec.is_static else ""
    t_start = time.perf_counter()
    step_s: list[float] = []
    base_info = {
        "model": model_entry.display_name,
        "spec_id": spec.id,
        "backend": target.key,
        "backend_slug": target.slug,
        "samples": len(data),
        "budget_s": settings.budget_s,
    }

    def agreement(nodes: list[str]) -> float:
        t0 = time.perf_counter()
        options = {**target.options, "exclude_nodes": list(nodes)} if nodes else dict(target.options)
        backend = backends.create(target.slug, options)
        version = ";".join(f"{k}={v}" for k, v in sorted(backend.availability().versions.items()))
        wd = artifact_workdir(
            sweep.cache_path, type(target)(target.key, target.slug, options), version, sha, spec, calib_sha
        )
        with backend.compile(model, spec, calib, wd) as compiled:
            q = run_batched(compiled.infer, data, 0, batch).reshape(len(data), -1)
        step_s.append(time.perf_counter() - t0)
        return top1_agreement(q, ref)

    def room() -> bool:
        per = max(step_s) if step_s else 0.0
        return time.perf_counter() - t_start + per <= settings.budget_s

    results: list[dict[str, Any]] = []

    def record(step: str, nodes: list[str], agr: float, base: float) -> None:
        results.append(
            {
                **base_info,
                "step": step,
                "k": len(nodes),
                "nodes": json.dumps(nodes),
                "agreement": agr,
                "recovered_pp": 100 * (agr - base),
                "elapsed_s": time.perf_counter() - t_start,
            }
        )

    base = agreement([])
    record("baseline", [], base, base)
    ranked = candidates(rows, settings.max_candidates)
    singles: list[tuple[str, float]] = []
    for node, _jump in ranked:
        if not room():
            break
        a = agreement([node])
        singles.append((node, a))
        record("single", [node], a, base)
        if progress:
            progress(f"  {target.key} keep {node} in float: agreement {100 * a:.2f}% (base {100 * base:.2f}%)")
    order = [n for n, _ in sorted(singles, key=lambda s: -s[1])]
    best_nodes: list[str] = [order[0]] if order else []
    best = max((a for _, a in singles), default=base)
    if best <= base:
        best_nodes = []
    chosen = list(best_nodes)
    for node in order[1 : settings.max_k]:
        if best >= settings.target_agreement or not room():
            break
        trial = [*chosen, node]
        a = agreement(trial)
        record("greedy", trial, a, base)
        if a > best:
            chosen, best, best_nodes = trial, a, trial
    if results:
        results[-1]["budget_exhausted"] = not room()
    for r in results:
        r["best"] = json.loads(r["nodes"]) == best_nodes and r["step"] != "baseline"
    suggestion = None
    if best_nodes:
        suggestion = write_sweep(sweep, model_entry, spec, target, best_nodes, out)
    return results, suggestion


def write_sweep(sweep: Any, model_entry: Any, spec: Any, target: Any, nodes: list[str], out: Path) -> Path:
    """A sweep file for the model × spec with the backend as found and with ``exclude_nodes``; paths absolute."""
    import yaml

    from harness.sweep import _data_path

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
                "options": {**target.options, "exclude_nodes": list(nodes)},
            },
        ],
        "specs": [spec.id],
    }
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
        f"{target.key} for {spec.id}\n# run: qtbench sweep {path}\n"
    )
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path
