"""Simulated NPU (``simnpu``): a vendor quantization profile applied to the float graph, run by ONNX Runtime.

What it models, from a declarative profile (``devices/npu_profiles.yaml``, see :mod:`devices.profiles`):

* **Numerics.** The float graph is rewritten so every tensor the NPU would hold lies on the profile's integer
  grid: weights fake-quantized in place (bits, symmetric or not, per-tensor/per-channel, power-of-two scales,
  rounding mode), biases at ``s_in·s_w`` with ``bias_bits``, activations through QuantizeLinear/DequantizeLinear
  (8-bit round-half-even) or an explicit ``clip(round(x/s)+zp)`` subgraph for other bit widths and rounding
  modes, BatchNorm folded into Conv, fused activations not requantized, and an accumulator clip when the
  profile's accumulator is narrower than 32 bits. ONNX Runtime (CPU, no graph fusions) executes it, so results
  are exactly the grid's, in float arithmetic.
* **Operator coverage.** Ops outside the profile's ``ops`` list stay in float on the "host", as a vendor
  partitioner would leave them; their tensors are requantized where they re-enter the NPU.
* **Latency** (``est_latency_ms``, always *estimated*): a roofline per node from the catalog board's peak TOPS ×
  the profile's utilization and memory bandwidth, host GFLOP/s for fallback ops, link bandwidth for tensors that
  cross the NPU/host boundary, per-partition switch cost and a fixed invoke overhead. The breakdown is in
  ``backend_extra``.

Rows say ``numbers: simulated``; the harness's wall-clock figures time ONNX Runtime on this host, not the NPU.
``Constant`` nodes (and nodes computed from constants only) are folded into initializers first, as an NPU
compiler would, so they are neither counted as host fallbacks nor priced by the roofline. No deployable blob
exists, so ``artifact_bytes`` is not reported (-1); the packed-size estimate is ``est_artifact_bytes`` in
``backend_extra``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import taps
from qtbench.backends._graph import fix_batch
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once
from qtbench.backends.ort import OrtCompiled
from qtbench.backends.qdq import static_ranges
from qtbench.backends.tflite import audit_tflite
from qtbench.devices.profiles import get_profile, roofline_peak
from qtbench.harness.core.audit import ArtifactFacts, WeightFact, _channels, audit_onnx
from qtbench.harness.core.intake import fold_constants
from qtbench.harness.core.spec import QuantSpec

#: op → (weight input index, output-channel axis of that weight)
WEIGHTED = {"Conv": (1, 0), "ConvTranspose": (1, 1), "Gemm": (1, 0), "MatMul": (1, -1)}
FLOAT = 1  # onnx.TensorProto.FLOAT
#: Bumped whenever the rewrite or the cost model changes what a cell computes (cache keys include it).
REWRITE_VERSION = 3
#: ops whose output an NPU compiler fuses with a following activation (no requantization in between)
FUSING_PRODUCERS = {*WEIGHTED, "Add", "Sub", "Mul"}


# ---------------------------------------------------------------------------------------------------------
# The integer grid
# ---------------------------------------------------------------------------------------------------------
def round_mode(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "half_even":
        return np.round(x)
    if mode == "half_away":
        return np.sign(x) * np.floor(np.abs(x) + 0.5)
    if mode == "floor":
        return np.floor(x)
    raise ValueError(f"unknown rounding {mode!r}")


def pow2_scale(scale: np.ndarray) -> np.ndarray:
    """The next power of two ≥ scale (never shrinks the range, so nothing new clips)."""
    return np.exp2(np.ceil(np.log2(scale)))


@dataclass(frozen=True)
class Grid:
    """scale/zero-point (scalars or per-channel arrays) and the integer range [qmin, qmax]."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int

    def fake(self, x: np.ndarray, rounding: str, axis: int | None = None) -> np.ndarray:
        s, z = self.scale, self.zero_point
        if axis is not None and s.ndim:
            shape = [1] * x.ndim
            shape[axis] = -1
            s, z = s.reshape(shape), z.reshape(shape)
        q = np.clip(round_mode(x / s, rounding) + z, self.qmin, self.qmax)
        return ((q - z) * s).astype(np.float32)


def weight_grid(w: np.ndarray, bits: int, symmetric: bool, axis: int | None, pow2: bool) -> Grid:
    """Per-tensor (axis None) or per-channel grid for a weight tensor; symmetric uses the restricted ±(2^(b-1)-1)."""
    if axis is None:
        lo, hi = np.array(min(w.min(), 0.0)), np.array(max(w.max(), 0.0))
    else:
        red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        lo, hi = np.minimum(w.min(axis=red), 0.0), np.maximum(w.max(axis=red), 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(np.abs(lo), np.abs(hi)) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        if pow2:
            scale = pow2_scale(scale)
        return Grid(scale.astype(np.float64), np.zeros_like(scale), -qmax, qmax)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    if pow2:
        scale = pow2_scale(scale)
    zp = np.clip(np.round(-lo / scale), 0, qmax)
    return Grid(scale.astype(np.float64), zp.astype(np.float64), 0, qmax)


def activation_grid(lo: float, hi: float, bits: int, symmetric: bool, pow2: bool) -> Grid:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = max(abs(lo), abs(hi)) / qmax or 1.0
        scale = float(pow2_scale(np.array(scale))) if pow2 else scale
        return Grid(np.array(scale), np.array(0.0), -qmax - 1, qmax)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax or 1.0
    scale = float(pow2_scale(np.array(scale))) if pow2 else scale
    zp = float(np.clip(round(-lo / scale), 0, qmax))
    return Grid(np.array(scale), np.array(zp), 0, qmax)


# ---------------------------------------------------------------------------------------------------------
# Graph preparation and rewrite
# ---------------------------------------------------------------------------------------------------------
def fold_batchnorm(proto: Any) -> int:
    """Fold BatchNormalization that directly follows a Conv (sole consumer) into the Conv; returns how many."""
    from onnx import numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers = Counter(x for n in g.node for x in n.input)
    producers = {o: n for n in g.node for o in n.output}
    folded, drop = 0, []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[bn.input[0]] != 1 or conv.input[1] not in inits:
            continue
        if not all(x in inits for x in bn.input[1:5]):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[x]).astype(np.float64) for x in bn.input[1:5])
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        k = gamma / np.sqrt(var + eps)
        w_name, b_name = conv.input[1] + "_bnfold", conv.output[0] + "_bias_bnfold"
        g.initializer.append(
            numpy_helper.from_array((w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32), w_name)
        )
        g.initializer.append(numpy_helper.from_array(((b - mean) * k + beta).astype(np.float32), b_name))
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.append(bn)
        folded += 1
    for n in drop:
        g.node.remove(n)
    return folded


@dataclass
class RewriteReport:
    npu_nodes: list[str] = field(default_factory=list)
    cpu_nodes: list[str] = field(default_factory=list)
    fallback_ops: dict[str, str] = field(default_factory=dict)
    weight_grids: dict[str, dict[str, Any]] = field(default_factory=dict)
    activation_grids: dict[str, dict[str, Any]] = field(default_factory=dict)  # tensor → scale/zp/qmin/qmax
    unquantized: list[str] = field(default_factory=list)  # NPU tensors with no calibrated range
    partitions: int = 0


def partition(proto: Any, ops: frozenset[str], exclude: frozenset[str] = frozenset()) -> tuple[set[str], int]:
    """Names of nodes the NPU runs, and the number of NPU↔host segment switches in topological order.

    Unnamed nodes get ``<op>_<index>`` names first (in place): membership is by name. Nodes named in ``exclude``
    stay on the host in float (mixed precision, the ``exclude_nodes`` option).
    """
    for i, n in enumerate(proto.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    npu = {n.name for n in proto.graph.node if n.op_type in ops and n.name not in exclude}
    seq = [n.name in npu for n in proto.graph.node]
    switches = sum(1 for a, b in itertools.pairwise(seq) if a != b)
    return npu, switches


def rewrite(
    proto: Any,
    profile: Any,
    spec: QuantSpec,
    ranges: Mapping[str, tuple[float, float]],
    exclude: frozenset[str] = frozenset(),
) -> RewriteReport:
    """Rewrite ``proto`` (float, BN already folded, node names unique) in place onto ``profile``'s grid."""
    import onnx
    from onnx import numpy_helper

    g = proto.graph
    wbits, abits = profile.bits(spec)
    rep = RewriteReport()
    npu, rep.partitions = partition(proto, profile.ops, exclude)  # also names unnamed nodes
    inits = {i.name: i for i in g.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    for n in g.node:
        (rep.npu_nodes if n.name in npu else rep.cpu_nodes).append(n.name)
        if n.name in exclude and n.op_type in profile.ops:
            rep.fallback_ops.setdefault(n.op_type, "kept in float on the host by exclude_nodes")
        elif n.name not in npu:
            rep.fallback_ops.setdefault(
                n.op_type, f"not in the {profile.name} operator list: runs on the host in float"
            )

    # -- activations: every float tensor an NPU node reads or writes, except outputs fused into an activation
    graph_outputs = {o.name for o in g.output}

    def fused_away(node: Any, out: str) -> bool:
        cons = consumers.get(out, [])
        return (
            node.op_type in FUSING_PRODUCERS
            and len(cons) == 1
            and cons[0].op_type in profile.fuse
            and cons[0].name in npu
            and out not in graph_outputs
        )

    fused = {o for n in g.node if n.name in npu for o in n.output if fused_away(n, o)}
    targets: list[str] = []
    for n in g.node:
        if n.name not in npu:
            continue
        for x in [*n.input, *n.output]:
            if not x or x in inits or x in targets or x in fused or types.get(x, FLOAT) != FLOAT:
                continue
            targets.append(x)
    grids: dict[str, Grid] = {}
    sym = spec.activation_symmetric
    for t in targets:
        if t not in ranges:
            rep.unquantized.append(t)
            continue
        grids[t] = activation_grid(*ranges[t], abits, sym, profile.activations.power_of_two)

    # -- weights and biases of NPU compute nodes
    per_channel = spec.granularity == "per-channel"
    for n in g.node:
        if n.name not in npu or n.op_type not in WEIGHTED:
            continue
        widx, axis = WEIGHTED[n.op_type]
        if len(n.input) <= widx or n.input[widx] not in inits:
            continue
        if n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute):
            axis = 1
        w = numpy_helper.to_array(inits[n.input[widx]]).astype(np.float32)
        ax = (axis % w.ndim) if per_channel else None
        grid = weight_grid(w, wbits, spec.weight_symmetric, ax, profile.weights.power_of_two)
        wq = grid.fake(w, profile.rounding, ax)
        new_w = f"{n.input[widx]}__simq_{n.name}"
        g.initializer.append(numpy_helper.from_array(wq, new_w))
        n.input[widx] = new_w
        rep.weight_grids[n.name] = {
            "tensor": new_w,
            "scale": grid.scale.tolist(),
            "zero_point": grid.zero_point.tolist(),
            "qmin": grid.qmin,
            "qmax": grid.qmax,
            "axis": ax,
        }
        s_in = grids.get(n.input[0])
        bidx = 2
        if s_in is not None and len(n.input) > bidx and n.input[bidx] in inits:
            b = numpy_helper.to_array(inits[n.input[bidx]]).astype(np.float64)
            s_b = float(s_in.scale) * np.broadcast_to(grid.scale, b.shape)
            lim = 2 ** (profile.bias_bits - 1)
            bq = (np.clip(round_mode(b / s_b, profile.rounding), -lim, lim - 1) * s_b).astype(np.float32)
            new_b = f"{n.input[bidx]}__simq_{n.name}"
            g.initializer.append(numpy_helper.from_array(bq, new_b))
            n.input[bidx] = new_b
        if s_in is not None and profile.accumulator_saturate and profile.accumulator_bits < 32:
            _clip_accumulator(g, n, float(s_in.scale), grid, profile.accumulator_bits, ax is not None, w.ndim)

    # -- insert fake-quant for each activation target
    new_nodes: list[Any] = []
    graph_inputs = {i.name for i in g.input}
    for t, grid in grids.items():
        src = t
        if t not in graph_inputs:
            src = f"{t}__simf"
            for n in g.node:
                for k, o in enumerate(n.output):
                    if o == t:
                        n.output[k] = src
            out = t
        else:
            out = f"{t}__simq"
            for n in g.node:
                for k, x in enumerate(n.input):
                    if x == t:
                        n.input[k] = out
        new_nodes += _fake_quant_nodes(g, src, out, grid, abits, profile.rounding)
        rep.activation_grids[t] = {
            "tensor": out,
            "scale": float(grid.scale),
            "zero_point": float(grid.zero_point),
            "qmin": grid.qmin,
            "qmax": grid.qmax,
        }
    g.node.extend(new_nodes)
    _toposort(g)
    used = {x for n in g.node for x in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)  # the float originals of re-gridded weights
    del g.value_info[:]
    onnx.checker.check_model(proto)
    return rep


def _const(g: Any, name: str, value: Any, dtype: Any = np.float32) -> str:
    from onnx import numpy_helper

    g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return name


def _fake_quant_nodes(g: Any, src: str, out: str, grid: Grid, bits: int, rounding: str) -> list[Any]:
    from onnx import helper

    p = f"{out}__fq"
    scale = float(grid.scale)
    if bits == 8 and rounding == "half_even":
        signed = grid.qmin < 0
        zp_t = np.int8 if signed else np.uint8
        s = _const(g, f"{p}_s", scale)
        z = _const(g, f"{p}_z", int(grid.zero_point), zp_t)
        return [
            helper.make_node("QuantizeLinear", [src, s, z], [f"{p}_q"], name=f"{p}_Q"),
            helper.make_node("DequantizeLinear", [f"{p}_q", s, z], [out], name=f"{p}_DQ"),
        ]
    s = _const(g, f"{p}_s", scale)
    z = _const(g, f"{p}_z", float(grid.zero_point))
    lo, hi = _const(g, f"{p}_lo", float(grid.qmin)), _const(g, f"{p}_hi", float(grid.qmax))
    nodes = [helper.make_node("Div", [src, s], [f"{p}_x"], name=f"{p}_div")]
    if rounding == "half_even":
        nodes.append(helper.make_node("Round", [f"{p}_x"], [f"{p}_r"], name=f"{p}_round"))
    elif rounding == "floor":
        nodes.append(helper.make_node("Floor", [f"{p}_x"], [f"{p}_r"], name=f"{p}_floor"))
    else:  # half away from zero: sign(x)·floor(|x| + 0.5)
        half = _const(g, f"{p}_half", 0.5)
        nodes += [
            helper.make_node("Abs", [f"{p}_x"], [f"{p}_a"], name=f"{p}_abs"),
            helper.make_node("Add", [f"{p}_a", half], [f"{p}_ah"], name=f"{p}_addh"),
            helper.make_node("Floor", [f"{p}_ah"], [f"{p}_af"], name=f"{p}_floor"),
            helper.make_node("Sign", [f"{p}_x"], [f"{p}_sg"], name=f"{p}_sign"),
            helper.make_node("Mul", [f"{p}_af", f"{p}_sg"], [f"{p}_r"], name=f"{p}_mulsg"),
        ]
    nodes += [
        helper.make_node("Add", [f"{p}_r", z], [f"{p}_rz"], name=f"{p}_addz"),
        helper.make_node("Clip", [f"{p}_rz", lo, hi], [f"{p}_c"], name=f"{p}_clip"),
        helper.make_node("Sub", [f"{p}_c", z], [f"{p}_cz"], name=f"{p}_subz"),
        helper.make_node("Mul", [f"{p}_cz", s], [out], name=f"{p}_mul"),
    ]
    return nodes


def _clip_accumulator(g: Any, n: Any, s_in: float, wgrid: Grid, bits: int, per_channel: bool, wndim: int) -> None:
    """Saturate the op's output at ±(2^(bits-1)-1) accumulator units (s_in·s_w per channel)."""
    from onnx import helper

    lim = (2 ** (bits - 1) - 1) * s_in * np.asarray(wgrid.scale, dtype=np.float64)
    if per_channel and n.op_type in ("Conv", "ConvTranspose"):
        lim = lim.reshape(-1, *[1] * (wndim - 2))
    out = n.output[0]
    pre = f"{out}__simacc"
    n.output[0] = pre
    hi = _const(g, f"{pre}_hi", lim)
    lo = _const(g, f"{pre}_lo", -lim)
    g.node.extend(
        [
            helper.make_node("Min", [pre, hi], [f"{pre}_min"], name=f"{pre}_Min"),
            helper.make_node("Max", [f"{pre}_min", lo], [out], name=f"{pre}_Max"),
        ]
    )


def _toposort(g: Any) -> None:
    produced = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(x in produced for x in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a dangling input after the simnpu rewrite")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        pending = [n for n in pending if n not in ready]
    del g.node[:]
    g.node.extend(ordered)


# ---------------------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------------------
def _shapes(proto: Any) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    out: dict[str, list[int]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if not v.type.tensor_type.HasField("shape"):
            continue  # unknown rank: the node's work is not counted (estimate_latency says how many)
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in v.type.tensor_type.shape.dim]
        out[v.name] = dims
    for i in inferred.graph.initializer:
        out[i.name] = list(i.dims)
    return out


def node_work(n: Any, shapes: Mapping[str, list[int]]) -> tuple[float, float]:
    """(multiply-accumulates, other elementwise ops) of one node at the shapes given."""

    def numel(name: str) -> float:
        return float(math.prod(shapes.get(name, [0]))) if name else 0.0

    out = numel(n.output[0]) if n.output else 0.0
    if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in shapes:
        w = shapes[n.input[1]]
        k = math.prod(w[2:]) if len(w) > 2 else 1
        if n.op_type == "Conv":
            return out * w[1] * k, 0.0
        return numel(n.input[0]) * w[1] * k, 0.0
    if n.op_type in ("Gemm", "MatMul") and shapes.get(n.input[0]):  # a rank-0 or unknown shape has no inner dim
        return out * shapes[n.input[0]][-1], 0.0
    if n.op_type in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
        return 0.0, numel(n.input[0])
    return 0.0, out


def estimate_latency(
    proto: Any, profile: Any, wbits: int, abits: int, split: tuple[set[str], int] | None = None
) -> tuple[float, dict[str, Any]]:
    """Roofline latency (ms) of one inference of the fixed-shape float graph ``proto`` under ``profile``.

    ``split`` is ``partition(proto, profile.ops)`` when the caller already has it.
    """

    npu, switches = split or partition(proto, profile.ops)
    tops, bw, src = roofline_peak(profile)
    c = profile.cost
    if abits >= 16 and wbits >= 16:
        tops /= 2  # fp16 throughput: half the INT8 figure on the parts we know
    npu_rate = tops * 1e12 * c["utilization"]
    host_rate = c["host_gflops"] * 1e9
    link = c["link_gbps"] * 1e9
    shapes = _shapes(proto)
    inits = {i.name for i in proto.graph.initializer}
    producers = {o: n.name for n in proto.graph.node for o in n.output}
    t_npu = t_host = t_link = 0.0
    macs_total = 0.0

    def numel(name: str) -> float:
        return float(math.prod(shapes.get(name, [0])))

    unknown = 0
    for n in proto.graph.node:
        macs, ops = node_work(n, shapes)
        macs_total += macs
        unknown += any(o and o not in shapes for o in n.output)
        if n.name in npu:
            w_bytes = sum(numel(x) for x in n.input if x in inits) * wbits / 8
            a_bytes = sum(numel(x) for x in [*n.input, *n.output] if x and x not in inits) * abits / 8
            compute = (2 * macs + ops) / npu_rate
            memory = (w_bytes + a_bytes) / (bw * 1e9) if bw else 0.0
            t_npu += max(compute, memory)
            for x in n.input:  # tensors arriving from the host (graph inputs or fallback ops)
                if x and x not in inits and producers.get(x) not in npu:
                    t_link += numel(x) * abits / 8 / link
        else:
            t_host += (2 * macs + ops) / host_rate
            for x in n.input:
                if x and x not in inits and producers.get(x) in npu:
                    t_link += numel(x) * 4 / link
    for o in proto.graph.output:
        if producers.get(o.name) in npu:
            t_link += numel(o.name) * abits / 8 / link
    ms = 1e3 * (t_npu + t_host + t_link) + c["invoke_overhead_ms"] + switches * c["partition_switch_ms"]
    breakdown = {
        "npu_ms": round(1e3 * t_npu, 5),
        "host_ms": round(1e3 * t_host, 5),
        "link_ms": round(1e3 * t_link, 5),
        "overhead_ms": c["invoke_overhead_ms"] + switches * c["partition_switch_ms"],
        "nodes_without_shapes": unknown,  # their work is missing from the estimate (0 after intake's static form)
        "partition_switches": switches,
        "gmacs": round(macs_total / 1e9, 6),
        "peak_tops": tops,
        "memory_gbps": bw,
        "figures_from": src,
    }
    return ms, breakdown


# ---------------------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------------------
class SimNpuBackend(Backend):
    """A vendor NPU's quantization and partitioning, simulated from a profile; latency from a roofline."""

    slug = "simnpu"
    float_fallback_option = "exclude_nodes"  # the nodes run on the host in float
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "Simulated NPU: vendor quantization profile → QDQ rewrite run by ONNX Runtime + roofline latency"
    option_defaults: ClassVar[dict[str, Any]] = {
        "profile": "qualcomm-htp",  # an id in devices/npu_profiles.yaml (or in profile_file)
        "profile_file": None,  # your own profiles YAML, same schema
        "threads": 1,
        "exclude_nodes": [],  # original-model node names kept in float on the host (mixed precision)
    }
    #: Set by the vendor stubs (hailo, nxp, edgetpu): why the simulation stands in for the real runtime.
    fallback_reason: str = ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)

        self.profile = get_profile(str(self.options["profile"]), self.options["profile_file"])

    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"simnpu executes with onnxruntime, which is not importable ({exc})")
        versions = {
            "onnxruntime": ort.__version__,
            "simnpu": str(REWRITE_VERSION),
            "profile": f"{self.profile.id}@{self.profile.digest}",
        }
        return Availability(True, "", versions, ("simulated",))

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.format == "qoperator":
            return "simnpu rewrites to QDQ/fake-quant graphs; use format qdq"
        return self.profile.check_spec(spec)

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        t0 = time.perf_counter()
        artifact = workdir / "model.onnx"
        meta = workdir / "simnpu.json"

        def build(_notes: list[str]) -> None:  # the facts go to simnpu.json, written before the commit marker
            meta.write_text(json.dumps(self._build(model, spec, calib, workdir, artifact), default=str))

        _notes, cache_hit = build_once(artifact, build)
        facts = json.loads(meta.read_text())
        compile_s = time.perf_counter() - t0
        session = self._session(artifact)
        p = self.profile
        info = CompiledInfo(
            artifact_path=artifact,
            artifact_bytes=None,  # no deployable blob exists here; its estimated size is in extra
            numbers="simulated",
            execution_device="npu",
            notes=list(facts["notes"]),
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.coverage = {k: v for k, v in {"npu": facts["npu_nodes"], "cpu": facts["cpu_nodes"]}.items() if v}
        info.fallback_ops = facts["fallback_ops"]
        info.est_latency_ms = facts["est_latency_ms"]
        info.est_source = (
            f"simnpu roofline for {p.name} ({facts['cost']['figures_from']}: {facts['cost']['peak_tops']:g} TOPS × "
            f"{p.cost['utilization']:g} utilization, host {p.cost['host_gflops']:g} GFLOP/s, link "
            f"{p.cost['link_gbps']:g} GB/s, {p.cost['invoke_overhead_ms']:g} ms invoke); uncertain: "
            + (", ".join(p.uncertain) or "none")
        )
        info.extra.update(
            {
                "profile": p.id,
                "profile_name": p.name,
                "vendor": p.vendor,
                "rounding": p.rounding,
                "power_of_two": p.weights.power_of_two or p.activations.power_of_two,
                "bits": facts["bits"],
                "cost": facts["cost"],
                "quantized_activations": facts["quantized_activations"],
                "partitions": facts["partitions"],
                "est_artifact_bytes": facts["est_artifact_bytes"],
                "est_artifact_source": "estimated: weights packed at the profile's bits, other constants 32-bit",
            }
        )
        if self.options["exclude_nodes"]:
            info.extra["exclude_nodes"] = list(self.options["exclude_nodes"])
        if self.fallback_reason:
            info.notes.insert(0, self.fallback_reason)
        info.notes.append(f"simulated {p.name}: numerics on the profile's grid, executed by ONNX Runtime on CPU")
        return OrtCompiled(session, info)  # a plain ORT session over the rewritten graph

    def audit(self, compiled: Compiled, spec: QuantSpec) -> Any:
        """Read back the grids the rewrite put the graph on (``grids.json`` beside ``model.onnx``, see
        :func:`audit_grids`): the artifact's weights are fake-quantized floats, so the ONNX reader would call them
        float. fp16 artifacts are float16 graphs (no grids): the ONNX reader reads them. A vendor stub that ran
        the vendor's real runtime has that runtime's artifact: a .tflite is read by the tflite reader."""

        path = compiled.info.artifact_path
        if path is not None and path.suffix == ".tflite" and path.is_file():
            return audit_tflite(path, self.slug)
        if path is None or path.suffix != ".onnx" or not path.is_file():
            return f"{self.slug} has no reader for its artifact ({path.name if path else 'none'})"
        grids = path.with_name("grids.json")
        if grids.is_file():
            return audit_grids(path, json.loads(grids.read_text()), self.slug)
        if spec.is_float:
            return audit_onnx(path, self.slug)
        return f"no grids.json beside {path.name}: the simulated grids of this artifact are not recorded"

    def _build(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path, out: Path) -> dict[str, Any]:
        import onnx

        p = self.profile
        notes: list[str] = []
        proto = onnx.load(str(model.path))
        constants = fold_constants(proto)
        if constants:
            notes.append(f"folded {constants} constant node(s) into initializers (not counted as operators)")
        folded = fold_batchnorm(proto) if p.bn_folding else 0
        if folded:
            notes.append(f"folded {folded} BatchNormalization into Conv")
        proto = onnx.shape_inference.infer_shapes(proto)
        prepared = workdir / "prepared.onnx"
        onnx.save(proto, str(prepared))
        fixed = fix_batch(prepared, workdir / "fixed.onnx")
        fixed_proto = onnx.load(str(fixed))
        wbits, abits = p.bits(spec)
        exclude = frozenset(self.options["exclude_nodes"])
        npu, switches = partition(fixed_proto, p.ops, exclude)
        est_ms, cost = estimate_latency(fixed_proto, p, wbits, abits, (npu, switches))
        if spec.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(proto, keep_io_types=True), str(out))
            rep = RewriteReport(
                npu_nodes=sorted(npu), cpu_nodes=[n.name for n in fixed_proto.graph.node if n.name not in npu]
            )
            notes.append("fp16: weights and activations rounded to float16 (ONNX Runtime casts where no fp16 kernel)")
        else:
            ranges = self._ranges(model, prepared, spec, calib, workdir, notes)
            rep = rewrite(proto, p, spec, ranges, exclude)
            if exclude:
                notes.append(f"kept {len(exclude)} node(s) in float on the host (exclude_nodes)")
            if rep.unquantized:
                notes.append(f"{len(rep.unquantized)} NPU tensor(s) had no calibrated range and stay float")
            onnx.save(proto, str(out))
            (workdir / "grids.json").write_text(
                json.dumps({"weights": rep.weight_grids, "activations": rep.activation_grids})
            )
        for f in (prepared, fixed):
            f.unlink(missing_ok=True)
        second_inputs = {n.input[1] for n in fixed_proto.graph.node if len(n.input) > 1}
        packed = sum(
            int(np.prod(i.dims)) * (wbits if i.name in second_inputs else 32) for i in fixed_proto.graph.initializer
        )
        notes.append(
            f"artifact_bytes not measured (no deployable blob); est_artifact_bytes={packed // 8} assumes weights "
            f"packed at {wbits} bits, other constants 32"
        )
        return {
            "notes": notes,
            "est_artifact_bytes": packed // 8,
            "npu_nodes": len(rep.npu_nodes),
            "cpu_nodes": len(rep.cpu_nodes),
            "fallback_ops": rep.fallback_ops,
            "est_latency_ms": est_ms,
            "cost": cost,
            "bits": [wbits, abits],
            "quantized_activations": len(rep.activation_grids),
            "partitions": switches,
        }

    def _ranges(
        self, model: ModelInput, prepared: Path, spec: QuantSpec, calib: Any, workdir: Path, notes: list[str]
    ) -> dict[str, tuple[float, float]]:
        from onnxruntime.quantization.calibrate import load_tensors_data

        pm = ModelInput(prepared, model.sha256, model.input_names, model.output_names, model.dynamic_batch)
        cache, _ = static_ranges(pm, spec, calib, workdir, notes)
        data = load_tensors_data(cache)
        return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])
        so.inter_op_num_threads = 1
        # no fusions: QDQ→QLinear kernels would requantize with their own rounding, off the profile's grid
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The simulated graph (the profile's QDQ rewrite) run by ONNX Runtime with the original tensors marked."""
        return taps.OnnxTap(Path(compiled.info.artifact_path), "simnpu", "disabled", 1, label)


# ---------------------------------------------------------------------------------------------------------
# The artifact audit
# ---------------------------------------------------------------------------------------------------------
def audit_grids(path: Path, grids: Mapping[str, Any], reader: str = "simnpu") -> Any:
    """Facts for :mod:`qtbench.harness.core.audit` from the rewritten graph ``path`` and the grids its rewrite recorded.

    Each weighted node (Conv/ConvTranspose/Gemm/MatMul with an initializer weight) in ``grids["weights"]`` is
    quantized: bits = log2(qmax − qmin + 1), per-channel when the grid has an axis, symmetric when every zero point
    is 0 (signed grid) or the grid's midpoint (unsigned); its activation is "static" when the tensor it reads is the
    output of an activation grid's fake-quant (``grids["activations"][t]["tensor"]``), else "float" (no calibrated
    range). Weighted nodes without a grid stayed on the host in float (bits 32, or 16 for a float16 initializer).
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    weight_grids = grids.get("weights", {})
    quantized_inputs = {v["tensor"] for v in grids.get("activations", {}).values()}
    facts = ArtifactFacts(reader)
    stale = []
    for n in g.node:
        if n.op_type not in WEIGHTED:
            continue
        widx, _axis = WEIGHTED[n.op_type]
        if len(n.input) <= widx or n.input[widx] not in inits:
            continue
        w = inits[n.input[widx]]
        shape = list(w.dims)
        if n.op_type == "MatMul" and len(shape) < 2:
            continue
        params = int(np.prod(shape)) if shape else 1
        name = n.name or n.output[0]
        grid = weight_grids.get(name)
        if grid is None or grid.get("tensor") != n.input[widx]:
            if grid is not None:
                stale.append(name)
            bits = 16 if w.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16) else 32
            facts.weights.append(WeightFact(name, n.op_type, params, bits, activation="float"))
            continue
        qmin, qmax = int(grid["qmin"]), int(grid["qmax"])
        bits = round(math.log2(qmax - qmin + 1))
        zps = np.asarray(grid["zero_point"], dtype=np.float64).ravel()
        mid = (qmin + qmax) / 2
        symmetric = bool(np.all(zps == 0)) if qmin < 0 else bool(np.all(np.abs(zps - mid) <= 0.5))
        per_channel = grid.get("axis") is not None
        channels = len(np.ravel(grid["scale"])) if per_channel else _channels(n.op_type, n, shape)
        activation = "static" if n.input[0] in quantized_inputs else "float"
        facts.weights.append(
            WeightFact(name, n.op_type, params, bits, per_channel, symmetric, activation, channels=channels)
        )
    if stale:
        facts.notes.append(f"grids.json does not match the graph at {len(stale)} node(s); read as float")
    return facts
