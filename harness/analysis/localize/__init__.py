"""Where does a backend diverge? Per-layer error of each backend's compiled graph against the FP32 reference.

For one model and spec, every backend that can expose intermediate tensors is compiled exactly as a sweep cell
compiles it (same cache entry, options and calibration set); each float tensor of the *original* ONNX graph is
then read from the backend (see :mod:`qtbench.backends.taps` for how names are mapped) and from the FP32
reference on a few evaluation samples, and compared:

- ``sqnr_db`` = 10·log10(Σ ref² / Σ (ref − q)²) over the samples (the harness's definition,
``qtbench.harness.core.metrics``),
  ``cosine`` = mean per-sample cosine of the flattened tensors, ``max_abs_err``.
- **divergent layer** (``first_divergent_*``), named by one of two rules; ``rule`` says which:

  - ``decision`` (the default when the first output is N×C class scores and no ``threshold_db`` is given): each
    compared tensor's *backend* value is spliced into the FP32 model in place of its float value and propagated in
    float to the output, so ``decision_loss`` measures how much of FP32's top-1 decision the error carried by that
    tensor already destroys (per sample the share of the top-1 margin lost, a flipped sample counting 1; mean over
    samples) and ``spliced_agreement`` the top-1 agreement with FP32 it leaves. ``decision_added`` is the loss a
    tensor adds over its inputs (graph-aware, like ``added_nsr``); the tensor that adds the most, when that is at
    least :data:`DECISION_MIN_LOSS`, is named. An SQNR threshold judges signal power, which a decision need not
    follow: an outlier channel keeps a tensor's SQNR high while the channels the classifier reads are crushed
    (planted in tests/test_localize_rule.py: a residual add at 47–49 dB and a depthwise conv at 36 dB on openvino
    flip 25–38 % of decisions; the first tensor below 20 dB comes a layer or more later).
  - ``threshold``: the first tensor in topological order below ``threshold_db`` — default 20 dB when weights have
    ≥ 8 bits, :data:`INT4_THRESHOLD_DB` with 4-bit weights (see there why). Used when ``threshold_db`` is given,
    when the output is not class scores, or when no tensor adds :data:`DECISION_MIN_LOSS`. Its first crossing is
    always stored (``threshold_node``) beside the decision rule's pick (``decision_node``).
- **largest jump**: the tensor that adds the most noise relative to its signal, ``added_nsr`` = NSR(out) −
  max NSR(inputs) with NSR = 10^(−SQNR/10) (independent noise powers add; graph-aware, so a residual branch is not
  compared with its sibling). A dB ratio would rank a 54 → 24 dB step in a first layer above a 24 → 0 dB collapse
  later; ``jump_db`` (the drop in dB, SQNR capped at :data:`JUMP_CAP_DB`) is stored beside it.

Memory stays bounded: tensors are compared a layer batch at a time (``memory_mb`` of activations per batch,
reference and backend together) and samples stream through in chunks; only the per-tensor sums are kept.
Backends whose runtime exposes no intermediates (QNN context binaries, Vela, RKNN, TensorRT engines, vendor
runtimes) get ``output only`` with the reason, plus the final output's error.

Results: ``<results>/<sweep>/localize/<run_id>/`` with ``layers.parquet``, ``summary.parquet``, optionally
``fallback.parquet`` (``--fallback-search``), ``manifest.json``, one SQNR plot per spec and ``report.md``; read
them with :func:`load_localization`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtbench import backends
from qtbench.backends import taps
from qtbench.backends.base import ModelInput
from qtbench.harness.analysis.localize.fallback import describe, search
from qtbench.harness.analysis.localize.targets import BackendTarget, artifact_workdir, parse_backends
from qtbench.harness.core.config import Sweep, load_sweep, parse_sweep
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import ConfigError, QtbenchError
from qtbench.harness.core.intake import file_sha256
from qtbench.harness.core.metrics import logit_cosine, top1_agreement
from qtbench.harness.core.onnxfacts import model_facts, onnx_graph
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.tasks import plan_outputs
from qtbench.harness.run.cell import fp32_outputs, run_batched
from qtbench.harness.run.manifest import environment
from qtbench.harness.run.plan import _data_path

#: first-divergence threshold with 8-bit (or wider) weights: noise at 1 % of the signal power (cosine ≈ 0.995)
INT8_THRESHOLD_DB = 20.0
#: with 4-bit weights a conv's output is ~24 dB noisier by construction (6 dB per bit): 10 dB (noise at 10 % of
#: the signal power, cosine ≈ 0.95). Healthy INT4 layers can sit near it (docs/localisation.md has the demo's
#: figures), so the first crossing marks where compounded error passes 10 %, not necessarily a broken layer; the
#: largest jump says where the error enters. Pass --threshold-db to choose another.
INT4_THRESHOLD_DB = 10.0
#: SQNR ceiling used only when computing jumps (an exact tensor has infinite SQNR)
JUMP_CAP_DB = 60.0
#: the decision rule names a tensor only when it adds at least this decision loss (1 % of FP32's top-1 margin on
#: average, or one flip in 100 samples); below it no layer moves decisions and the threshold rule answers
DECISION_MIN_LOSS = 0.01
#: a sample whose FP32 top-1 margin is below this share of the median margin is a near-tie that any noise flips:
#: its margin loss is taken relative to that floor, so it counts by how far the error moved it, not as a flip
FRAGILE_MARGIN = 0.05
LAYER_TABLES = ("layers", "summary", "fallback")


def default_threshold(spec: Any) -> float:
    return INT4_THRESHOLD_DB if spec.weight_bits <= 4 else INT8_THRESHOLD_DB


@dataclass(frozen=True)
class LocalizeSettings:
    """How much data and memory a localisation uses (defaults: 16 samples, 256 MB of activations per batch)."""

    samples: int = 16
    threshold_db: float | None = None  # None: default_threshold(spec)
    memory_mb: float = 256.0
    chunk: int = 8  # samples per inference when the batch axis is dynamic
    threads: int = 1


@dataclass
class _Stats:
    """Running sums for one tensor (float64)."""

    signal: float = 0.0
    noise: float = 0.0
    cos_sum: float = 0.0
    n: int = 0
    max_abs: float = 0.0
    error: str = ""

    def add(self, ref: np.ndarray, q: np.ndarray) -> None:

        if ref.shape != q.shape:
            if ref.size == q.size:
                q = q.reshape(ref.shape)
            else:
                self.error = f"shape mismatch: reference {list(ref.shape)}, backend {list(q.shape)}"
                return
        r = ref.reshape(len(ref), -1).astype(np.float64)
        d = r - q.reshape(len(q), -1).astype(np.float64)
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum(d * d))
        self.cos_sum += logit_cosine(q.reshape(len(q), -1), r) * len(r)
        self.n += len(r)
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)

    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return float("inf")
        if self.signal == 0.0:
            return float("-inf")
        return 10.0 * float(np.log10(self.signal / self.noise))


def decision_margins(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FP32 top-1 class, its margin over the runner-up) per sample of N×C scores."""
    r = np.asarray(ref, np.float64).reshape(len(ref), -1)
    cls = np.argmax(r, axis=1)
    top = r[np.arange(len(r)), cls]
    rest = r.copy()
    rest[np.arange(len(r)), cls] = -np.inf
    return cls, top - rest.max(axis=1)


def decision_loss(ref: np.ndarray, q: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the share of FP32's top-1 margin that ``q`` loses (1 for a flip; a near-tie below ``floor``
    counts by the margin lost relative to ``floor``) and whether ``q``'s top-1 agrees with FP32's."""
    cls, m_ref = decision_margins(ref)
    z = np.asarray(q, np.float64).reshape(len(q), -1)
    rows = np.arange(len(z))
    other = z.copy()
    other[rows, cls] = -np.inf
    m_q = z[rows, cls] - other.max(axis=1)
    agree = np.argmax(z, axis=1) == cls
    denom = np.maximum(m_ref, floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(denom > 0, np.clip((m_ref - m_q) / denom, 0.0, 1.0), np.where(agree, 0.0, 1.0))
    return loss, agree


@dataclass
class _Decision:
    """Per-sample decision loss and agreement of one tensor spliced into the FP32 model (chunks appended)."""

    loss: list[np.ndarray] = field(default_factory=list)
    agree: list[np.ndarray] = field(default_factory=list)
    error: str = ""
    upstream: bool = True  # False: the tensor does not feed the first output

    def add(self, loss: np.ndarray, agree: np.ndarray) -> None:
        self.loss.append(loss)
        self.agree.append(agree)

    def mean_loss(self) -> float:
        return float(np.mean(np.concatenate(self.loss))) if self.loss else float("nan")

    def agreement(self) -> float:
        return float(np.mean(np.concatenate(self.agree))) if self.agree else float("nan")


class Splicer:
    """The FP32 model with one tensor fed from outside: a backend's value of that tensor, propagated in float.

    Splicing tensor t answers "how many FP32 decisions does the error this backend carries at t already
    change?" with everything after t exact. Each spliced graph is cut to what the first output needs given t (a
    residual branch that bypasses t stays), so a late tensor costs only the tail of the network. Sessions are
    opened per tensor and kept, oldest dropped first, while their weights (:meth:`weight_bytes`) fit in
    ``max_bytes``; :meth:`release` drops them all (a splice session is reused across the sample chunks of a layer
    batch; re-opening one means building the session again).
    """

    SUFFIX = "__qtbench_float"

    def __init__(self, model_path: Path, threads: int = 1, max_bytes: float = float("inf")) -> None:
        import onnx

        self.proto = onnx.load(str(model_path))
        g = self.proto.graph
        self.output = g.output[0].name
        self.producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
        self.init_bytes = {i.name: _tensor_bytes(i) for i in g.initializer}
        inits = set(self.init_bytes)
        self.graph_inputs = [i for i in g.input if i.name not in inits]
        self.subgraphs = any(a.type in (5, 10) for n in g.node for a in n.attribute)  # GRAPH / GRAPHS
        light = taps.light_proto(model_path).graph
        self.types = {
            v.name: v.type.tensor_type.elem_type
            for v in [*light.value_info, *light.input, *light.output]
            if v.type.tensor_type.elem_type
        }
        self.threads = threads
        self.max_bytes = max_bytes
        self.sessions: dict[str, Any] = {}  # insertion order: the oldest first
        self._nodes: dict[str, list[int] | None] = {}
        self._bytes: dict[str, float] = {}

    def nodes(self, name: str) -> list[int] | None:
        """Indices of the nodes the first output needs once ``name`` is fed; None when ``name`` does not feed it."""
        if name in self._nodes:
            return self._nodes[name]
        g = self.proto.graph
        if self.subgraphs:  # implicit inputs of control flow: keep the whole graph
            self._nodes[name] = list(range(len(g.node)))
            return self._nodes[name]
        need: set[int] = set()
        seen: set[str] = set()
        stack, reached = [self.output], False
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            if x == name:
                reached = True
                continue
            i = self.producer.get(x)
            if i is None or i in need:
                continue
            need.add(i)
            stack += [y for y in g.node[i].input if y]
        self._nodes[name] = sorted(need) if reached else None
        return self._nodes[name]

    def weight_bytes(self, name: str) -> float:
        """Initializer bytes of ``name``'s spliced graph (×2: ONNX Runtime keeps prepacked copies)."""
        if name not in self._bytes:
            idx = self.nodes(name) if name != self.output else None
            g = self.proto.graph
            used = {x for i in idx or [] for x in g.node[i].input}
            self._bytes[name] = 2.0 * sum(b for n, b in self.init_bytes.items() if n in used)
        return self._bytes[name]

    def _session(self, name: str) -> Any:
        import onnxruntime as ort
        from onnx import helper

        if name in self.sessions:
            return self.sessions[name]
        need = self.weight_bytes(name)
        while self.sessions and sum(map(self.weight_bytes, self.sessions)) + need > self.max_bytes:
            del self.sessions[next(iter(self.sessions))]
        g = self.proto.graph
        idx = self.nodes(name) or []
        nodes = []
        for i in idx:
            n = g.node[i]
            if name in n.output:  # a multi-output producer whose other outputs are still needed
                c = type(n)()
                c.CopyFrom(n)
                c.output[:] = [o + self.SUFFIX if o == name else o for o in n.output]
                n = c
            nodes.append(n)
        used = {x for n in nodes for x in n.input}
        inputs = [i for i in self.graph_inputs if i.name in used and i.name != name]
        inputs.append(helper.make_tensor_value_info(name, self.types.get(name, 1), None))
        graph = helper.make_graph(
            nodes, g.name, inputs, [g.output[0]], [i for i in g.initializer if i.name in used and i.name != name]
        )
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        blob = model.SerializeToString()
        del model, graph  # the weights' copies go before ONNX Runtime makes its own
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_cpu_mem_arena = False  # a session runs a few chunks: give its activations back after each
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        del blob
        self.sessions[name] = sess
        return sess

    def run(self, name: str, feeds: dict[str, np.ndarray], value: np.ndarray) -> np.ndarray | None:
        """The first output with ``name`` set to ``value`` (None when ``name`` does not feed that output)."""
        if name == self.output:
            return np.asarray(value)
        if self.nodes(name) is None:
            return None
        sess = self._session(name)
        want = {i.name: i.type for i in sess.get_inputs()}
        dtypes = {"tensor(float16)": np.float16, "tensor(double)": np.float64}
        f = {k: v for k, v in feeds.items() if k in want and k != name}
        f[name] = np.asarray(value, dtypes.get(want[name], np.float32))
        return sess.run(None, f)[0]

    def release(self) -> None:
        self.sessions.clear()


def _tensor_bytes(t: Any) -> int:
    if t.raw_data:
        return len(t.raw_data)
    return 4 * int(np.prod(t.dims)) if t.dims else 4


def _tap_for(target: BackendTarget, backend: Any, compiled: Any, spec: Any) -> tuple[Any, str]:
    """(tap, "") where the adapter can read the compiled model's intermediates, else (None, its reason)."""
    tap = backend.tap(compiled, spec, target.key)
    return (None, tap) if isinstance(tap, str) else (tap, "")


def _groups(index: Any, names: list[str], budget_bytes: float, chunk: int) -> list[list[str]]:
    """Consecutive tensors (topological order) whose activations for one chunk, reference + backend, fit."""
    groups, cur, size = [], [], 0.0
    for n in names:
        t = index.by_name[n]
        b = 2 * 4 * chunk * (t.numel or 250_000)  # unknown size: count 1 MB per sample
        if cur and size + b > budget_bytes:
            groups.append(cur)
            cur, size = [], 0.0
        cur.append(n)
        size += b
    if cur:
        groups.append(cur)
    return groups


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def localize_cell(
    model_path: Path,
    model_name: str,
    spec: Any,
    targets: list[BackendTarget],
    data: Any,
    calib: Any,
    cache: Path,
    settings: LocalizeSettings,
    workdir: Path,
    task: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Layer rows and summary rows for one model × spec over ``targets`` (each compiled like a sweep cell).
    ``task``: the task that scores the first output (None: inferred, N×C scores are classification)."""

    facts = model_facts(model_path)
    sha = file_sha256(model_path)
    model = ModelInput(model_path, sha, facts.input_names, facts.output_names, facts.dynamic_batch)
    chunk = max(1, settings.chunk) if facts.dynamic_batch else 1
    index = taps.index_graph(model_path)
    threshold = settings.threshold_db if settings.threshold_db is not None else default_threshold(spec)
    explicit = settings.threshold_db is not None
    calib_sha = calib.head(spec.calib_samples).sha256 if calib is not None and spec.is_static else ""
    ref_out = fp32_outputs(model_path, data, 0, chunk)
    # the decision rule needs class scores (N×C) and is the default only when no threshold is asked for
    scores = ref_out.ndim == 2 and ref_out.shape[1] >= 2 and task in (None, "classification")
    if explicit:
        rule_note = f"--threshold-db {threshold:g} given: the first tensor below it"
    elif task not in (None, "classification"):
        rule_note = f"the first output is scored as {task}, not top-1 classes: the first tensor below {threshold:g} dB"
    elif not scores:
        rule_note = (
            f"the first output ({list(ref_out.shape[1:])} per sample) is not class scores, so no decision to follow: "
            f"the first tensor below {threshold:g} dB"
        )
    else:
        rule_note = ""
    floor = FRAGILE_MARGIN * float(np.median(decision_margins(ref_out)[1])) if scores else 0.0
    layers: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    live: list[tuple[BackendTarget, Any, dict[str, Any], dict[str, Any]]] = []
    base = {"model": model_name, "model_sha256": sha, "spec_id": spec.id, "threshold_db": threshold}

    for target in targets:
        t0 = time.perf_counter()
        summary: dict[str, Any] = {
            **base,
            "backend": target.key,
            "backend_slug": target.slug,
            "backend_options": json.dumps(target.options, sort_keys=True),
            "samples": len(data),
        }
        try:
            backend = backends.create(target.slug, target.options)
            av = backend.availability()
            if not av.available:
                summaries.append({**summary, "status": "unavailable", "reason": av.reason})
                continue
            reason = backend.supports(spec)
            if reason:
                summaries.append({**summary, "status": "skipped", "reason": reason})
                continue
            version = ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))
            wd = artifact_workdir(cache, target, version, sha, spec, calib_sha)
            with backend.compile(model, spec, calib, wd) as compiled:
                out = run_batched(compiled.infer, data, 0, chunk)
                tap, why = _tap_for(target, backend, compiled, spec)
                summary.update(backend_version=version, numbers=compiled.info.numbers)
        except QtbenchError as exc:
            summaries.append({**summary, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        except Exception as exc:  # noqa: BLE001 - an SDK error costs this backend only
            summaries.append({**summary, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"})
            continue
        st = _Stats()
        st.add(np.asarray(ref_out), np.asarray(out))
        summary.update(output_sqnr_db=st.sqnr_db(), output_cosine=st.cos_sum / max(st.n, 1))
        if ref_out.ndim == 2 and out.ndim == 2:
            summary["output_top1_agreement"] = top1_agreement(out, ref_out)
        summary["compile_and_output_s"] = time.perf_counter() - t0
        if tap is None:
            summaries.append({**summary, "status": "output_only", "reason": why, "kind": "output only"})
            for o in index.outputs[:1]:
                t = index.by_name.get(o)
                layers.append(
                    {
                        **base,
                        "backend": target.key,
                        "tensor": o,
                        "node": t.node if t else "",
                        "op_type": t.op_type if t else "",
                        "topo_index": t.topo_index if t else -1,
                        "status": "output_only",
                        "note": why,
                        "sqnr_db": summary["output_sqnr_db"],
                        "cosine": summary["output_cosine"],
                        "max_abs_err": st.max_abs,
                        "samples": len(data),
                    }
                )
            continue
        mapping = tap.locate(index)
        summary.update(kind="per layer", tap=tap.description, status="ok", reason="")
        live.append((target, tap, mapping, summary))
        summaries.append(summary)

    # -- streaming comparison: a layer batch at a time, samples in chunks ----------------------------------
    ref_tap = taps.OnnxTap(model_path, "plain", "all", settings.threads, "reference")
    wanted = [
        t.name
        for t in index.tensors
        if any(m[t.name].status == "compared" for _, _, m, _ in live) and t.name not in index.inputs
    ]
    inputs_wanted = [n for n in index.inputs if any(m[n].status == "compared" for _, _, m, _ in live if n in m)]
    stats = {tg.key: {} for tg, _, _, _ in live}
    decisions: dict[str, dict[str, _Decision]] = {tg.key: {} for tg, _, _, _ in live}
    t_cmp = time.perf_counter()
    budget = settings.memory_mb * 2**20
    splicer = Splicer(model_path, settings.threads, budget) if scores and not explicit and live else None
    groups = _groups(index, inputs_wanted + wanted, budget, chunk)
    for group in groups:
        ref_names = [n for n in group if n not in index.inputs]
        ref_run = ref_tap.open([taps.Located(n) for n in ref_names]) if ref_names else None
        runners = []
        for tg, tap, mapping, _s in live:
            locs = [mapping[n].located for n in group if mapping[n].status == "compared"]
            names = [n for n in group if mapping[n].status == "compared"]
            if not locs:
                continue
            try:
                runners.append((tg, names, locs, tap.open(locs)))
            except Exception as exc:  # noqa: BLE001 - record and go on with the other backends
                for n in names:
                    stats[tg.key].setdefault(n, _Stats()).error = f"tap failed: {type(exc).__name__}: {exc}"
        for start in range(0, len(data), chunk):
            feeds = data.batch(start, start + chunk)
            ref = ref_run(feeds) if ref_run else {}
            ref.update({n: feeds[n].astype(np.float32) for n in group if n in index.inputs})
            for tg, names, locs, run in runners:
                try:
                    got = run(feeds)
                except Exception as exc:  # noqa: BLE001
                    for n in names:
                        stats[tg.key].setdefault(n, _Stats()).error = f"tap run failed: {type(exc).__name__}: {exc}"
                    continue
                for n, loc in zip(names, locs, strict=True):
                    stats[tg.key].setdefault(n, _Stats()).add(ref[n], got[loc.name])
                    if splicer is not None:
                        _splice(
                            splicer, decisions[tg.key], n, feeds, got[loc.name], ref_out[start : start + chunk], floor
                        )
                del got
            del ref
        del runners, ref_run
        if splicer is not None:
            splicer.release()
    compare_s = time.perf_counter() - t_cmp

    for tg, _tap, mapping, summary in live:
        rows = _layer_rows(
            index, mapping, stats[tg.key], {**base, "backend": tg.key, "samples": len(data)}, decisions[tg.key]
        )
        rule, note = _mark(rows, index, threshold, use_decision=splicer is not None)
        layers += rows
        first = next((r for r in rows if r["first_divergent"]), None)
        below = next((r for r in rows if r["below_threshold_first"]), None)
        named = next((r for r in rows if r["decision_first"]), None)
        jump = next((r for r in rows if r["largest_jump"]), None)
        out_row = next((r for r in rows if r["tensor"] == index.outputs[0]), None)
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in ("compared", "fused", "absent", "failed")}
        summary.update(
            tensors=len(rows),
            compared=counts["compared"],
            fused=counts["fused"],
            absent=counts["absent"],
            tap_failed=counts["failed"],
            first_divergent_tensor=first["tensor"] if first else "",
            first_divergent_node=first["layer"] if first else "",
            first_divergent_sqnr_db=first["sqnr_db"] if first else float("nan"),
            rule=rule,
            rule_note=rule_note or note,
            decision_tensor=named["tensor"] if named else "",
            decision_node=named["layer"] if named else "",
            decision_added=named["decision_added"] if named else float("nan"),
            decision_agreement=named["spliced_agreement"] if named else float("nan"),
            threshold_tensor=below["tensor"] if below else "",
            threshold_node=below["layer"] if below else "",
            threshold_sqnr_db=below["sqnr_db"] if below else float("nan"),
            largest_jump_tensor=jump["tensor"] if jump else "",
            largest_jump_node=jump["layer"] if jump else "",
            largest_jump_db=jump["jump_db"] if jump else float("nan"),
            largest_jump_added_nsr=jump["added_nsr"] if jump else float("nan"),
            tap_output_sqnr_db=out_row["sqnr_db"] if out_row else float("nan"),
            compare_s=compare_s,
            layer_batches=len(groups),
        )
        if out_row and out_row["status"] == "compared":
            # output SQNR of the instrumented graph vs the cell's own: 0 means marking outputs changed nothing
            summary["tap_vs_cell_gap_db"] = _gap_db(summary["output_sqnr_db"], out_row["sqnr_db"])
    for s in summaries:
        s["peak_rss_mb"] = _peak_rss_mb()
    return layers, summaries


def _gap_db(a: float, b: float) -> float:
    """|a − b| of two output SQNRs in dB: 0 when the instrumented graph computes the cell's output."""
    return 0.0 if a == b or (np.isinf(a) and np.isinf(b)) else abs(a - b)


def _splice(
    splicer: Splicer,
    into: dict[str, _Decision],
    name: str,
    feeds: dict[str, np.ndarray],
    value: np.ndarray,
    ref: np.ndarray,
    floor: float,
) -> None:
    """Propagate a backend's value of ``name`` through the FP32 model and record the decisions it changes."""
    d = into.setdefault(name, _Decision())
    if d.error or not d.upstream:
        return
    try:
        out = splicer.run(name, feeds, value)
    except Exception as exc:  # noqa: BLE001 - this tensor gets no decision numbers; the others go on
        d.error = f"splice failed: {type(exc).__name__}: {str(exc)[:200]}"
        return
    if out is None:
        d.upstream = False
        return
    d.add(*decision_loss(ref, np.asarray(out).reshape(len(ref), -1), floor))


def _layer_rows(
    index: Any,
    mapping: dict[str, Any],
    stats: dict[str, _Stats],
    base: dict[str, Any],
    decisions: dict[str, _Decision] | None = None,
) -> list[dict]:
    rows = []
    decisions = decisions or {}
    for t in index.tensors:
        m = mapping[t.name]
        row = {
            **base,
            "tensor": t.name,
            "node": t.node,
            "op_type": t.op_type,
            "topo_index": t.topo_index,
            "status": m.status,
            "compared_as": m.located.name if m.located else "",
            "note": m.note,
            "sqnr_db": float("nan"),
            "cosine": float("nan"),
            "max_abs_err": float("nan"),
        }
        st = stats.get(t.name)
        if m.status == "compared":
            if st is None or st.error or st.n == 0:
                row.update(status="failed", note=(st.error if st else "no value read"))
            else:
                row.update(sqnr_db=st.sqnr_db(), cosine=st.cos_sum / st.n, max_abs_err=st.max_abs)
        d = decisions.get(t.name)
        row["decision_loss"] = d.mean_loss() if d and row["status"] == "compared" else float("nan")
        row["spliced_agreement"] = d.agreement() if d and row["status"] == "compared" else float("nan")
        if d and d.error:
            row["note"] = f"{row['note']}; {d.error}" if row["note"] else d.error
        rows.append(row)
    return rows


def _mark(rows: list[dict[str, Any]], index: Any, threshold: float, use_decision: bool = False) -> tuple[str, str]:
    """Per-tensor jumps (added noise and dB drop against its inputs) and added decision loss; marks the largest
    jump, the first tensor below ``threshold`` and the decision rule's pick, and names the divergent layer
    (``first_divergent``) by the decision rule when it finds one, else by the threshold. Returns (rule, note)."""
    eff: dict[str, float] = {}
    nsr: dict[str, float] = {}  # noise-to-signal power ratio, 10^(-SQNR/10)
    dec: dict[str, float] = {}  # decision loss carried by a tensor's value (its inputs' when not compared)
    by = {r["tensor"]: r for r in rows}
    covers: dict[str, list[str]] = {}
    for t in index.tensors:
        r = by[t.name]
        # the original nodes this tensor's value stands for: its producer plus producers fused into it
        group = [n for x in t.inputs if by.get(x, {}).get("status") == "fused" for n in covers.get(x, [])]
        covers[t.name] = [*dict.fromkeys([*group, t.node])] if t.node else []
        r["covers"] = json.dumps(covers[t.name])
        r["layer"] = covers[t.name][0] if covers[t.name] else t.name
        ins = [eff.get(x, JUMP_CAP_DB) for x in t.inputs]
        in_db = min(ins) if ins else JUMP_CAP_DB
        in_nsr = max([nsr.get(x, 0.0) for x in t.inputs], default=0.0)
        in_dec = max([dec.get(x, 0.0) for x in t.inputs], default=0.0)
        r["input_sqnr_db"] = in_db
        if r["status"] == "compared":
            own = min(float(r["sqnr_db"]), JUMP_CAP_DB)
            own_nsr = 10.0 ** (-float(r["sqnr_db"]) / 10.0)
            r["jump_db"] = in_db - own
            r["added_nsr"] = own_nsr - in_nsr
            eff[t.name], nsr[t.name] = own, own_nsr
        else:
            r["jump_db"] = r["added_nsr"] = float("nan")
            eff[t.name], nsr[t.name] = in_db, in_nsr
        own_dec = float(r.get("decision_loss", float("nan")))
        if r["status"] == "compared" and np.isfinite(own_dec):
            r["decision_added"] = own_dec - in_dec
            dec[t.name] = own_dec
        else:
            r["decision_added"] = float("nan")
            dec[t.name] = in_dec
    below = next((r for r in rows if r["status"] == "compared" and r["sqnr_db"] < threshold), None)
    comp = [r for r in rows if r["status"] == "compared" and np.isfinite(r["added_nsr"])]
    jump = max(comp, key=lambda r: r["added_nsr"]) if comp else None
    scored = [r for r in rows if r["status"] == "compared" and np.isfinite(r["decision_added"])]
    top = max(scored, key=lambda r: r["decision_added"]) if scored else None  # the first of equals wins
    named = top if top is not None and top["decision_added"] >= DECISION_MIN_LOSS else None
    for r in rows:
        r["largest_jump"] = r is jump
        r["below_threshold_first"] = r is below
        r["decision_first"] = r is named
        r["first_divergent"] = r is (named if named is not None else below)
    if named is not None:
        note = (
            f"adds {named['decision_added']:.2f} decision loss (share of FP32's top-1 margin lost, a flip counting 1); "
            f"spliced into FP32 alone it leaves {100 * named['spliced_agreement']:.0f}% top-1 agreement"
        )
        return "decision", note
    if use_decision and top is not None:
        return "threshold", (
            f"no tensor adds {DECISION_MIN_LOSS:g} decision loss (largest {top['decision_added']:.3f}, at "
            f"{top['layer']}): the first tensor below {threshold:g} dB"
        )
    if use_decision:
        return "threshold", f"no tensor could be spliced into FP32: the first tensor below {threshold:g} dB"
    return "threshold", ""


# ---------------------------------------------------------------------------------------------------------
# A run: models × specs over the backends, stored and plotted
# ---------------------------------------------------------------------------------------------------------
@dataclass
class LocalizationRun:
    path: Path
    layers: Any
    summary: Any
    fallback: Any = None
    plots: list[Path] = field(default_factory=list)


def run_localization(
    sweep: Any,
    models: list[str] | None = None,
    specs: list[Any] | None = None,
    backends: list[str] | None = None,
    settings: LocalizeSettings | None = None,
    fallback: Any = None,
    progress: Any = None,
) -> LocalizationRun:
    """Localise every model × spec × backend of ``sweep`` (or the subsets named) and store the run."""
    import pandas as pd

    settings = settings or LocalizeSettings()
    targets = parse_backends(backends, sweep)
    chosen = [m for m in sweep.models if not models or m.display_name in models]
    if models and len(chosen) != len(set(models)):
        known = ", ".join(m.display_name for m in sweep.models)
        raise ConfigError(f"--model {' '.join(models)}: not all in the sweep's models ({known})")
    specs = specs or [s for s in sweep.specs if not s.is_float] or list(sweep.specs)
    run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    out = sweep.results_path / "localize" / run_id
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    layers: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    fallbacks: list[dict[str, Any]] = []
    suggestions: list[Path] = []
    for m in chosen:
        path = sweep.resolve(m.path)
        facts = model_facts(path)
        ev_src, ev_path = _data_path(sweep, m, "evaluation")
        ca_src, ca_path = _data_path(sweep, m, "calibration")
        calib = load_dataset(ca_path, facts.input_names, None, ca_src.limit) if ca_path else None
        if ev_path:
            evaluation = load_dataset(ev_path, facts.input_names, ev_src.labels, ev_src.limit)
        elif calib is not None:
            evaluation = calib
        else:
            raise ConfigError("localize needs `evaluation:` (or `calibration:`) data in the sweep file")
        data = evaluation.head(settings.samples)
        task = _first_output_task(m, path)
        for spec in specs:
            if progress:
                progress(f"{m.display_name} × {spec.id}: {len(targets)} backend(s)")
            lr, sr = localize_cell(
                path, m.display_name, spec, targets, data, calib, sweep.cache_path, settings, out / "work", task
            )
            layers += lr
            summaries += sr
            if fallback is not None:
                for s in sr:
                    if s.get("status") != "ok":
                        continue
                    target = next(t for t in targets if t.key == s["backend"])
                    rows_b = [r for r in lr if r["backend"] == target.key]
                    res = search(sweep, m, path, spec, target, rows_b, evaluation, calib, fallback, out, progress)
                    if res is not None:
                        fallbacks += res[0]
                        if res[1]:
                            suggestions.append(res[1])
    import shutil

    shutil.rmtree(out / "work", ignore_errors=True)
    ldf, sdf = pd.DataFrame(layers), pd.DataFrame(summaries)
    for df in (ldf, sdf):
        if not df.empty:
            df.insert(0, "run_id", run_id)
            df.insert(1, "sweep", sweep.name)
    ldf.to_parquet(out / "layers.parquet", index=False)
    sdf.to_parquet(out / "summary.parquet", index=False)
    fdf = None
    if fallback is not None:
        fdf = pd.DataFrame(fallbacks)
        if not fdf.empty:
            fdf.insert(0, "run_id", run_id)
        fdf.to_parquet(out / "fallback.parquet", index=False)
    plots = plot_run(ldf, sdf, out) if not ldf.empty else []
    env = environment()
    manifest = {
        "run_id": run_id,
        "sweep": sweep.name,
        "created_utc": f"{dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}",
        "settings": settings.__dict__,
        "fallback": None if fallback is None else fallback.__dict__,
        "models": [m.display_name for m in chosen],
        "specs": [s.id for s in specs],
        "backends": [t.__dict__ for t in targets],
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": _peak_rss_mb(),
        "suggested_sweeps": [str(p) for p in suggestions],
        "environment": {k: env[k] for k in ("git_sha", "git_dirty", "device") if k in env},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (out / "report.md").write_text(markdown(sdf, fdf, plots, suggestions))
    return LocalizationRun(out, ldf, sdf, fdf, plots)


def _first_output_task(entry: Any, path: Path) -> str | None:
    """The task a sweep scores the model's first output with (``task:`` or the model's metadata); None when it
    would be inferred from the output's rank."""

    meta = {p.key: p.value for p in onnx_graph(path).metadata_props}
    plan = plan_outputs(entry.task, entry.output, model_facts(path).output_names, meta)
    return next((t.name for _, i, t in plan.scored if i == 0 and t is not None), None)


def load_localization(path: str | Path, table: str = "layers", latest: bool = True) -> Any:
    """A stored localisation table as a DataFrame.

    ``path``: a run folder (``…/localize/<run_id>``), a sweep's results folder or its ``localize`` folder (then
    the newest run, or every run with ``latest=False``). ``table``: ``layers`` | ``summary`` | ``fallback``.
    """
    import pandas as pd

    if table not in LAYER_TABLES:
        raise ConfigError(f"load_localization table={table!r}: choose one of {', '.join(LAYER_TABLES)}")
    p = Path(path)
    if (p / "summary.parquet").is_file():
        runs = [p]
    else:
        root = p / "localize" if (p / "localize").is_dir() else p
        runs = sorted(d for d in root.glob("*") if (d / "summary.parquet").is_file()) if root.is_dir() else []
        if not runs:
            raise ConfigError(f"{path}: no localisation runs here (run `qtbench localize` first)")
        if latest:
            runs = runs[-1:]
    frames = [pd.read_parquet(r / f"{table}.parquet") for r in runs if (r / f"{table}.parquet").is_file()]
    if not frames:
        raise ConfigError(f"{path}: no {table}.parquet (fallback tables exist only for --fallback-search runs)")
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------
# Plot and Markdown
# ---------------------------------------------------------------------------------------------------------
PLOT_CEILING_DB = 80.0


def plot_run(layers: Any, summary: Any, out: Path) -> list[Path]:
    """One PNG per spec: SQNR along the original graph's topological order, a line per backend, a panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    numbers = {(r["backend"], r["model"], r["spec_id"]): r.get("numbers", "") for _, r in summary.iterrows()}
    for spec_id, sdf in layers.groupby("spec_id", sort=False):
        models = list(dict.fromkeys(sdf["model"]))
        ncols = min(3, len(models))
        nrows = -(-len(models) // ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(6 * ncols, 3.8 * nrows), squeeze=False, sharey=True, layout="constrained"
        )
        flat = axes.ravel()
        for ax in flat[len(models) :]:
            ax.set_visible(False)
        for ax, model in zip(flat, models, strict=False):
            mdf = sdf[sdf["model"] == model]
            thr = float(mdf["threshold_db"].iloc[0])
            for backend, bdf in mdf.groupby("backend", sort=False):
                comp = bdf[bdf["status"] == "compared"].sort_values("topo_index")
                label = backend + (" (simulated)" if numbers.get((backend, model, spec_id)) == "simulated" else "")
                k = list(dict.fromkeys(mdf["backend"])).index(backend)  # styles differ: equal curves stay visible
                only = bdf[bdf["status"] == "output_only"]
                if not only.empty:  # one real point, the final output; no curve is drawn for it
                    ax.scatter(
                        only["topo_index"],
                        np.minimum(only["sqnr_db"], PLOT_CEILING_DB),
                        color=f"C{k % 10}",
                        marker="x",
                        label=f"{label}: output only",
                    )
                if comp.empty:
                    continue
                y = np.minimum(comp["sqnr_db"].to_numpy(float), PLOT_CEILING_DB)
                style = {"ls": ("-", "--", ":", "-.")[k % 4], "marker": ".ox^sv"[k % 6], "ms": 4, "lw": 1.3}
                style["color"] = f"C{k % 10}"
                (line,) = ax.plot(comp["topo_index"], y, label=label, **style)
                first = comp[comp["first_divergent"]]
                if not first.empty:
                    ax.scatter(
                        first["topo_index"],
                        np.minimum(first["sqnr_db"], PLOT_CEILING_DB),
                        s=80,
                        facecolors="none",
                        edgecolors=line.get_color(),
                        lw=1.5,
                    )
            ax.axhline(thr, ls="--", c="grey", lw=0.8)
            ax.text(
                0.01,
                thr,
                f"threshold {thr:g} dB",
                va="bottom",
                fontsize=7,
                color="grey",
                transform=ax.get_yaxis_transform(),
            )
            ax.set_title(f"{model}", fontsize=9)
            ax.set_xlabel("tensor index in the original graph's topological order")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        for row in axes:
            row[0].set_ylabel(f"SQNR vs FP32 (dB, capped at {PLOT_CEILING_DB:g})")
        fig.suptitle(f"{spec_id}: per-layer SQNR (circle: the divergent layer named, rule in report.md)", fontsize=10)
        p = out / f"sqnr-{spec_id}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def markdown(summary: Any, fallback: Any, plots: list[Path], suggestions: list[Path]) -> str:
    lines = ["## Where does a backend diverge?", ""]
    if summary.empty:
        return "\n".join([*lines, "no backend ran", ""])
    lines += [
        "| model | spec | backend | kind | divergent layer (SQNR dB) | rule | largest jump (dB drop) | output dB "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def text(v: Any) -> str:
        return v if isinstance(v, str) else ""

    def db(v: Any) -> str:
        return f" ({v:.1f})" if isinstance(v, float) and np.isfinite(v) else ""

    for _, r in summary.iterrows():
        first = text(r.get("first_divergent_node")) or text(r.get("first_divergent_tensor"))
        first = first + db(r.get("first_divergent_sqnr_db")) if first else "—"
        jump = text(r.get("largest_jump_node"))
        jump = jump + db(r.get("largest_jump_db")) if jump else "—"
        kind = r.get("kind") if isinstance(r.get("kind"), str) else r["status"]
        note = r["reason"] if r["status"] != "ok" else r.get("tap", "")
        rule = text(r.get("rule"))
        if rule and text(r.get("rule_note")):
            rule = f"{rule}: {r['rule_note']}"
        out_db = r.get("output_sqnr_db", float("nan"))
        lines.append(
            f"| {r['model']} | {r['spec_id']} | {r['backend']} | {kind} | {first} | {rule.replace('|', '/')} | "
            f"{jump} | {out_db:.1f} | {str(note).replace('|', '/')} |"
        )
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    if fallback is not None and not fallback.empty:
        lines += ["", "### Keep these layers in float", ""]
        lines += [
            "Chosen on the search split; confirmed only when, on the held-out confirmation split, top-1 agreement "
            "with FP32 rises with a 95 % paired interval above 0 (and the top-1 gap is not significantly wider).",
            "",
        ]
        for _, r in fallback[fallback["step"] == "confirm"].iterrows():
            nodes = ", ".join(json.loads(r["nodes"])) or "—"
            found = describe(r.to_dict()) if r["k"] and np.isfinite(r.get("agreement", np.nan)) else ""
            lines.append(
                f"- **{r['backend']} × {r['spec_id']} × {r['model']}**: {nodes}: {r['verdict']}"
                + (f" ({found})" if found else "")
            )
        lines += [
            "",
            "| backend | spec | model | step | split | k | agreement | recovered pp | nodes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def pct(v: Any) -> str:
            return f"{100 * v:.2f}%" if isinstance(v, float) and np.isfinite(v) else "—"

        def pp(r: Any) -> str:
            v = r.get("recovered_pp", float("nan"))
            if not (isinstance(v, float) and np.isfinite(v)):
                return "—"
            lo, hi = r.get("recovered_lo_pp", float("nan")), r.get("recovered_hi_pp", float("nan"))
            return f"{v:+.2f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if isinstance(lo, float) and np.isfinite(lo) else "")

        for _, r in fallback.iterrows():
            lines.append(
                f"| {r['backend']} | {r['spec_id']} | {r['model']} | {r['step']} | {r.get('split', '')} | {r['k']} | "
                f"{pct(r.get('agreement'))} | {pp(r)} | {', '.join(json.loads(r['nodes']))} |"
            )
        lines += ["", *[f"run it: `qtbench sweep {p}`" for p in suggestions]]
    return "\n".join(lines) + "\n"


def localize(
    config: Any,
    models: list[str] | None = None,
    specs: list[str] | None = None,
    backends: list[str] | None = None,
    settings: LocalizeSettings | None = None,
    fallback: Any = None,
) -> LocalizationRun:
    """:func:`run_localization` for a Sweep, a mapping or a YAML path, with specs given as ids."""

    if isinstance(config, str | Path):
        sweep = load_sweep(config)
    elif isinstance(config, dict):
        sweep = parse_sweep(config)
    elif isinstance(config, Sweep):
        sweep = config
    else:
        raise TypeError(f"localize: a Sweep, a mapping or a YAML path, not {type(config).__name__}")
    parsed = [QuantSpec.parse(s) if isinstance(s, str) else s for s in specs] if specs else None
    return run_localization(sweep, models, parsed, backends, settings, fallback)
