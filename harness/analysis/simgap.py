"""Sim-vs-real: how far a simulated NPU profile is from the vendor's own toolchain, per output.

Runs the same model, spec, calibration and evaluation set through a real vendor backend (``qnn``, ``rknn``, ...)
and through its simulation twin (the adapter's ``simulation_twin``: ``simnpu`` with the profile that models it),
and compares their outputs sample by sample: top-1 agreement, mean KL
(real ‖ sim), cosine, max abs difference, and each side's agreement with the FP32 reference. A profile that
matches its vendor has agreement near the vendor's own run-to-run agreement and KL near 0; a large gap says
the profile misses something the vendor compiler does (rounding, fusion, calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtbench import backends
from qtbench.backends.base import ModelInput
from qtbench.harness.core import metrics as m
from qtbench.harness.core.errors import BackendUnavailable, UnsupportedSpec
from qtbench.harness.core.intake import file_sha256
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.run.cell import fp32_outputs, run_batched


def twin_of(real: str, profile: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """The backend (slug, options) that simulates ``real``: its adapter's ``simulation_twin``, with ``profile``
    (a simnpu profile id) replacing the twin's own when given; None when ``real`` declares no twin and no profile
    is given."""
    twin = backends.load_class(real).simulation_twin
    if profile:
        return (twin[0] if twin else "simnpu", {**(dict(twin[1]) if twin else {}), "profile": profile})
    return (twin[0], dict(twin[1])) if twin else None


@dataclass
class Gap:
    model: str
    spec: str
    real: str
    sim: str
    samples: int
    agreement: float
    kl_real_sim: float
    cosine: float
    max_abs: float
    real_vs_fp_agreement: float
    sim_vs_fp_agreement: float
    real_top1: float
    sim_top1: float


def output_gap(real: np.ndarray, sim: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """The gap between the two sides, with the harness's own metric definitions (real is the reference)."""

    real, sim, ref = (a.reshape(len(a), -1).astype(np.float64) for a in (real, sim, ref))
    nan = float("nan")
    return {
        "agreement": m.top1_agreement(sim, real),
        "kl_real_sim": m.kl_divergence(real, sim),
        "cosine": m.logit_cosine(sim, real),
        "max_abs": m.max_abs_error(sim, real),
        "real_vs_fp_agreement": m.top1_agreement(real, ref),
        "sim_vs_fp_agreement": m.top1_agreement(sim, ref),
        "real_top1": m.topk_accuracy(real, labels, 1) if labels is not None else nan,
        "sim_top1": m.topk_accuracy(sim, labels, 1) if labels is not None else nan,
    }


def run_gap(
    model_path: Path,
    spec: Any,
    real: str,
    real_options: dict[str, Any],
    twin: tuple[str, dict[str, Any]],
    evaluation: Any,
    calib: Any,
    workdir: Path,
    model_name: str = "",
) -> Gap:
    """Compile ``model_path`` under ``spec`` on both sides and compare outputs on ``evaluation``."""

    facts = model_facts(model_path)
    model = ModelInput(model_path, file_sha256(model_path), facts.input_names, facts.output_names, facts.dynamic_batch)
    batch = 64 if facts.dynamic_batch else 1
    outs = {}
    for side, slug, options in (("real", real, real_options), ("sim", *twin)):
        backend = backends.create(slug, options)
        av = backend.availability()
        if not av.available:
            raise BackendUnavailable(f"{slug}: {av.reason}")
        reason = backend.supports(spec)
        if reason:
            raise UnsupportedSpec(f"{slug}: {reason}")
        with backend.compile(model, spec, calib, workdir / model.sha256[:12] / side / spec.id) as compiled:
            outs[side] = run_batched(compiled.infer, evaluation, 0, batch)
    ref = fp32_outputs(model_path, evaluation, 0, batch)
    m = output_gap(outs["real"], outs["sim"], ref, evaluation.labels)
    sim = f"{twin[0]}:{','.join(str(v) for v in twin[1].values())}" if twin[1] else twin[0]
    return Gap(model_name or model_path.stem, spec.id, real, sim, len(evaluation), **m)
