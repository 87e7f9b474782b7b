"""Intake: every model is validated and normalised once, before any backend sees it.

Exporters write the same network in many graph forms. Paddle2ONNX and some tf2onnx/torch paths store weights as
``Constant`` nodes, so ONNX Runtime's quantizer takes every weight for an activation (per-tensor, asymmetric,
calibrated) and re-quantizes it on every call; shape subgraphs over dynamic H/W leave NPU compilers with
partitions that have no inputs; opsets below 13 have no per-channel ``DequantizeLinear``; fp16 checkpoints feed
quantizers that expect float32. Intake rewrites the graph once into the form every adapter compiles:

1. dimensions written as ``-1``/``0`` become symbolic (they mean "dynamic");
2. fp16 weights and internal casts become float32, the graph's inputs and outputs keep their types;
3. ``Constant`` nodes and every node computed from constants only become initializers (deterministic
   default-domain ops, evaluated with onnx's reference runtime; expansions over 1 M elements stay nodes);
4. opsets below 13 are converted to 13 (onnx's version converter);
5. shapes are inferred;
6. a *static* variant, for backends that need static shapes (``Backend.static_shapes``), fixes every input
   dimension from the evaluation data (batch 1), folds the ``Shape``/``Size`` nodes this makes constant, and
   folds again.

Node names are kept, so float fallback and localisation still name the user's nodes. Each variant is then run
on ONNX Runtime against the user's original model on the first evaluation samples: a variant whose outputs are
not equal to float tolerance is dropped (the original is compiled as given) and the row says so. The FP32
reference of every cell is still computed from the original model, so intake can never hide its own error.

When nothing needs rewriting the original file is used as it is (same path, same sha, same artifact keys).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INTAKE_VERSION = 1
MIN_OPSET = 13  # per-channel DequantizeLinear (axis) and Squeeze/Unsqueeze/ReduceSum axes as inputs start here
FOLD_LIMIT = 1 << 20  # an expanding op (Tile, Expand, ConstantOfShape, Range) above this many elements stays a node
_EXPANDING = ("Tile", "Expand", "ConstantOfShape", "Range", "Resize", "Upsample")
_NONDETERMINISTIC = (
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)


@dataclass
class Variant:
    """One normalised form of a model: the file, its sha (external data included) and whether shapes are static."""

    path: str
    sha256: str
    notes: list[str] = field(default_factory=list)
    static: bool = False


@dataclass
class IntakeResult:
    """What intake made of one model: the form dynamic-shape backends compile, the static form, and the notes."""

    source: str
    source_sha256: str
    dynamic: Variant
    static: Variant
    version: int = INTAKE_VERSION

    def variant(self, static_shapes: bool) -> Variant:
        return self.static if static_shapes else self.dynamic

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> IntakeResult:
        d = json.loads(text)
        return cls(d["source"], d["source_sha256"], Variant(**d["dynamic"]), Variant(**d["static"]), d["version"])


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (models and data files can be large). The one definition: the
    sweep, localize, simgap and the backends' artifact inputs use it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalise(
    source: str | Path,
    source_sha: str,
    cache_dir: str | Path,
    sample: dict[str, np.ndarray] | None,
) -> IntakeResult:
    """Normalise ``source`` (cached under ``cache_dir/intake``); ``sample``: a few evaluation samples (input
    name → array, first axis samples) that fix static shapes and check each variant against the original."""
    import onnx

    shapes = {k: list(v.shape[1:]) for k, v in (sample or {}).items()}
    key = hashlib.sha256(json.dumps([source_sha, shapes, INTAKE_VERSION], sort_keys=True).encode()).hexdigest()[:20]
    entry = Path(cache_dir) / "intake" / key
    record = entry / "intake.json"
    if record.is_file():
        try:
            cached = IntakeResult.from_json(record.read_text())
            if all(Path(v.path).exists() for v in (cached.dynamic, cached.static)):
                return cached
        except (OSError, ValueError, KeyError, TypeError):
            pass
    entry.mkdir(parents=True, exist_ok=True)
    src = Path(source)
    original = Variant(str(src), source_sha)
    proto = onnx.load(str(src))
    dyn_notes = normalise_proto(proto)
    dynamic = _write(proto, entry / "model.onnx", dyn_notes, original, static=False)
    static_notes = fix_static_shapes(proto, shapes) if shapes else []
    if static_notes:
        static_notes = [*dyn_notes, *static_notes, *normalise_proto(proto, again=True)]
        static = _write(proto, entry / "model-static.onnx", static_notes, original, static=True)
    else:
        static = Variant(dynamic.path, dynamic.sha256, list(dynamic.notes), static=False)
    del proto
    if sample:
        dynamic = _checked(dynamic, original, src, sample)
        static = _checked(static, original, src, sample) if static.path != dynamic.path else static
    result = IntakeResult(str(src), source_sha, dynamic, static)
    tmp = record.with_name(f".tmp-{os.getpid()}.json")
    tmp.write_text(result.to_json())
    os.replace(tmp, record)
    return result


def normalise_many(todo: dict[str, tuple[str, str, Any]], cache_dir: str | Path) -> dict[str, IntakeResult]:
    """:func:`normalise` for several models (name → (path, sha, sample)); a model intake cannot read or rewrite
    is left out of the answer (its caller compiles it as given and says why)."""
    out: dict[str, IntakeResult] = {}
    for name, (path, sha, sample) in todo.items():
        try:
            out[name] = normalise(path, sha, cache_dir, sample)
        except Exception as exc:  # noqa: BLE001 - one model's failure is that model's note
            note = f"intake failed ({_first_line(exc)}); compiling the model as given"
            as_given = Variant(str(path), sha, [note])
            out[name] = IntakeResult(str(path), sha, as_given, as_given)
    return out


def _write(proto: Any, dst: Path, notes: list[str], original: Variant, static: bool) -> Variant:
    """The variant file, or the original when intake changed nothing (same path, same sha, same cache keys)."""
    import onnx

    if not notes:
        return Variant(original.path, original.sha256, [], static=False)
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    big = proto.ByteSize() > 1.8e9  # protobuf's 2 GB limit: large models keep their weights beside the graph
    onnx.save(proto, str(tmp), save_as_external_data=big, location=dst.name + ".data" if big else None)
    os.replace(tmp, dst)
    return Variant(str(dst), file_sha256(dst), list(notes), static=static)


def normalise_proto(proto: Any, again: bool = False) -> list[str]:
    """Steps 1–5 on ``proto`` in place; returns a note per step that changed something (none: nothing to do)."""
    import onnx

    notes: list[str] = []
    if not again:
        bad = _symbolic_bad_dims(proto)
        if bad:
            notes.append(f"{bad} dimension(s) written as -1/0 made symbolic")
        fp16 = upcast_fp16(proto)
        if fp16:
            notes.append(f"fp16 weights and casts made float32 ({fp16} tensors; inputs and outputs keep their types)")
    constants = sum(1 for n in proto.graph.node if n.op_type == "Constant")
    folded = fold_constants(proto)
    if folded and again:
        notes.append(f"folded {folded} node(s) that static shapes made constant")
    elif folded:
        weights = _constant_weights(proto)
        what = f"{constants} Constant node(s)" + (
            f", {folded - constants} constant-only node(s)" if folded > constants else ""
        )
        notes.append(f"folded {what} into initializers" + (f" ({weights} weight tensors)" if weights else ""))
    if not again:
        opset = default_opset(proto)
        if opset < MIN_OPSET:
            try:
                converted = onnx.version_converter.convert_version(proto, MIN_OPSET)
                proto.CopyFrom(converted)
                notes.append(f"opset {opset} converted to {MIN_OPSET} (per-channel QDQ needs ≥ 13)")
            except Exception as exc:  # noqa: BLE001 - the converter lacks some adapters; quantizers may still cope
                notes.append(f"opset {opset} kept: onnx's version converter failed ({_first_line(exc)})")
    if notes:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            proto.CopyFrom(inferred)
        except Exception as exc:  # noqa: BLE001 - shapes are a help, not a requirement
            notes.append(f"shape inference failed ({_first_line(exc)})")
    return notes


def default_opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _graph_inputs(proto: Any) -> list[Any]:
    inits = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _symbolic_bad_dims(proto: Any) -> int:
    """Dimensions stored as ``dim_value`` ≤ 0 (Paddle2ONNX writes -1 for "dynamic") become named symbols."""
    n = 0
    for v in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.ClearField("dim_value")
                d.dim_param = f"{v.name}_dim{i}"
                n += 1
    return n


def upcast_fp16(proto: Any) -> int:
    """fp16 initializers, ``Constant`` values and internal casts → float32; fp16 graph inputs get a Cast to
    float after them and fp16 outputs a Cast back, so callers feed and read the same types as before."""
    from onnx import TensorProto, helper, numpy_helper

    F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
    g = proto.graph
    n = 0
    for init in g.initializer:
        if init.data_type == F16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
            n += 1
    for node in g.node:
        for a in node.attribute:
            if a.type == a.TENSOR and a.t.data_type == F16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                n += 1
            elif a.name == "to" and node.op_type == "Cast" and a.i == F16:
                a.i = F32
                n += 1
            elif a.name == "dtype" and a.type == a.INT and a.i == F16:  # EyeLike, RandomX: output dtype
                a.i = F32
                n += 1
    if not n:
        return 0
    head, tail = [], []
    for v in _graph_inputs(proto):
        if v.type.tensor_type.elem_type == F16:
            inner = f"{v.name}__fp32"
            for node in g.node:
                node.input[:] = [inner if x == v.name else x for x in node.input]
            head.append(helper.make_node("Cast", [v.name], [inner], to=F32, name=f"{v.name}__intake_cast"))
    for v in g.output:
        if v.type.tensor_type.elem_type == F16:
            inner = f"{v.name}__fp32"
            for node in g.node:
                node.output[:] = [inner if x == v.name else x for x in node.output]
                node.input[:] = [inner if x == v.name else x for x in node.input]
            tail.append(helper.make_node("Cast", [inner], [v.name], to=F16, name=f"{v.name}__intake_cast"))
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return n


def _constant_weights(proto: Any) -> int:
    """Initializers that feed a compute node's weight input (what quantizers quantize as weights)."""
    inits = {i.name for i in proto.graph.initializer}
    return sum(
        1
        for n in proto.graph.node
        if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    )


def fold_constants(proto: Any) -> int:
    """``Constant`` nodes, and nodes computed from constants only, become initializers; returns how many.

    Exporters emit ``Constant`` nodes for weights, shapes and scalars. A weight behind a Constant node is no
    initializer, so quantizers treat it as an activation; a constant-only subgraph becomes a partition without
    inputs on NPU compilers. The constant part of the graph is evaluated in one pass of onnx's reference runtime
    (deterministic default-domain ops only); a node that cannot be evaluated, or an expansion over
    ``FOLD_LIMIT`` elements, stays a node.
    """
    from onnx import numpy_helper

    g = proto.graph
    total = 0
    blocked: set[str] = set()
    for _round in range(4):
        inits = {i.name for i in g.initializer}
        const_nodes: list[Any] = []
        known = set(inits)
        for node in g.node:  # graph order is topological
            if (
                node.name + "|" + ",".join(node.output) in blocked
                or node.domain not in ("", "ai.onnx")
                or node.op_type in _NONDETERMINISTIC
                or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
            ):
                continue
            if node.op_type == "Constant" or (node.input and all(x == "" or x in known for x in node.input)):
                const_nodes.append(node)
                known.update(o for o in node.output if o)
        if not const_nodes:
            return total
        values = _evaluate(proto, const_nodes)
        if values is None:  # the subgraph as a whole did not evaluate: fall back to one node at a time
            values = _evaluate_each(proto, const_nodes)
        done, again = [], False
        for node in const_nodes:
            outs = [values.get(o) for o in node.output if o]
            if any(v is None for v in outs):
                blocked.add(node.name + "|" + ",".join(node.output))
                again = True
                continue
            if node.op_type in _EXPANDING and any(np.asarray(v).size > FOLD_LIMIT for v in outs):
                blocked.add(node.name + "|" + ",".join(node.output))
                again = True
                continue
            done.append(node)
        if again:  # recompute the set without the blocked nodes (their dependents are no longer constant)
            continue
        needed = {x for n in g.node if n not in done for x in n.input} | {o.name for o in g.output}
        for node in done:
            for o in node.output:
                if o and o in needed and o not in inits:
                    g.initializer.append(numpy_helper.from_array(np.asarray(values[o]), o))
        keep = [n for n in g.node if n not in done]
        del g.node[:]
        g.node.extend(keep)
        _drop_unused_initializers(proto)
        return total + len(done)
    return total


def _drop_unused_initializers(proto: Any) -> None:
    g = proto.graph
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    used |= {x for n in g.node for a in n.attribute if a.type in (a.GRAPH, a.GRAPHS) for x in _subgraph_inputs(a)}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        dropped = {i.name for i in g.initializer} - {i.name for i in keep}
        del g.initializer[:]
        g.initializer.extend(keep)
        inputs = [i for i in g.input if i.name not in dropped]  # IR < 4 lists initializers as inputs too
        del g.input[:]
        g.input.extend(inputs)


def _subgraph_inputs(attr: Any) -> set[str]:
    graphs = [attr.g] if attr.type == attr.GRAPH else list(attr.graphs)
    out: set[str] = set()
    for sg in graphs:
        for n in sg.node:
            out.update(n.input)
            for a in n.attribute:
                if a.type in (a.GRAPH, a.GRAPHS):
                    out |= _subgraph_inputs(a)
    return out


def _subgraph(proto: Any, nodes: list[Any], outputs: list[str]) -> Any:
    from onnx import helper

    inits = {i.name: i for i in proto.graph.initializer}
    used = {x for n in nodes for x in n.input if x in inits}
    graph = helper.make_graph(
        list(nodes),
        "intake-fold",
        [],
        [helper.make_tensor_value_info(o, 0, None) for o in outputs],
        initializer=[inits[x] for x in sorted(used)],
    )
    return helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)


def _evaluate(proto: Any, nodes: list[Any]) -> dict[str, np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    outputs = [o for n in nodes for o in n.output if o]
    try:
        vals = ReferenceEvaluator(_subgraph(proto, nodes, outputs)).run(None, {})
    except Exception:  # noqa: BLE001 - one op the reference runtime lacks: see _evaluate_each
        return None
    return {o: np.asarray(v) for o, v in zip(outputs, vals, strict=True)}


def _evaluate_each(proto: Any, nodes: list[Any]) -> dict[str, np.ndarray]:
    """Node by node, feeding earlier results: whatever evaluates is folded, the rest stays."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inits = {i.name: i for i in proto.graph.initializer}
    values: dict[str, np.ndarray] = {}
    for node in nodes:
        feeds: dict[str, np.ndarray] = {}
        ok = True
        for x in node.input:
            if not x:
                continue
            if x in values:
                feeds[x] = values[x]
            elif x in inits:
                feeds[x] = numpy_helper.to_array(inits[x])
            else:
                ok = False
        if not ok:
            continue
        inputs = [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for k, v in feeds.items()
        ]
        outputs = [helper.make_tensor_value_info(o, 0, None) for o in node.output if o]
        model = helper.make_model(
            helper.make_graph([node], "fold", inputs, outputs),
            opset_imports=list(proto.opset_import),
            ir_version=proto.ir_version,
        )
        try:
            outs = ReferenceEvaluator(model).run(None, feeds)
        except Exception:  # noqa: BLE001 - stays a node
            continue
        for o, v in zip([o for o in node.output if o], outs, strict=False):
            values[o] = np.asarray(v)
    return values


def fix_static_shapes(proto: Any, shapes: dict[str, list[int]]) -> list[str]:
    """Every graph input's dimensions fixed from the data (batch 1), then ``Shape``/``Size`` of tensors whose
    shape is now known replaced by constants; returns notes (none: already static)."""
    import onnx
    from onnx import numpy_helper

    fixed: list[str] = []
    for v in _graph_inputs(proto):
        dims = v.type.tensor_type.shape.dim
        want = [1, *shapes.get(v.name, [])]
        if len(want) != len(dims):
            continue
        changed = []
        for i, (d, w) in enumerate(zip(dims, want, strict=True)):
            if not d.HasField("dim_value") or d.dim_value != w:
                if i > 0 and d.HasField("dim_value"):
                    continue  # a fixed non-batch dim the data contradicts: the data check reports it
                changed.append(f"{d.dim_param or '?'}={w}" if i else "batch=1")
                d.ClearField("dim_param")
                d.dim_value = w
        if any(not c.startswith("batch") for c in changed):
            fixed.append(f"{v.name}[{', '.join(changed)}]")
    if not fixed:
        return []
    for v in proto.graph.output:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    del proto.graph.value_info[:]
    try:
        proto.CopyFrom(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    except Exception:  # noqa: BLE001 - folding below then finds fewer static shapes
        pass
    known = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
        if v.type.tensor_type.HasField("shape")
        and all(d.HasField("dim_value") and d.dim_value > 0 for d in v.type.tensor_type.shape.dim)
    }
    known.update({i.name: list(i.dims) for i in proto.graph.initializer})
    shapes_folded = 0
    keep = []
    for node in proto.graph.node:
        if node.op_type in ("Shape", "Size") and node.input and node.input[0] in known:
            shape = np.array(known[node.input[0]], dtype=np.int64)
            if node.op_type == "Size":
                value = np.array(int(np.prod(shape)), dtype=np.int64)
            else:
                attrs = {a.name: a.i for a in node.attribute}
                value = shape[attrs.get("start", 0) : attrs.get("end", len(shape))]
            proto.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            shapes_folded += 1
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    note = f"static shapes from the evaluation data: {'; '.join(fixed)} (batch 1)"
    return [note + (f", {shapes_folded} Shape/Size node(s) folded" if shapes_folded else "")]


# ---------------------------------------------------------------------------------------------------------------
# The check against the original
# ---------------------------------------------------------------------------------------------------------------
def _session(path: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare graphs, not ORT's rewrites
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare_outputs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest error between two output lists relative to each reference's range (0 = identical)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return float("inf")
        if x.dtype.kind in "biu" or y.dtype.kind in "biu":
            worst = max(worst, float(np.mean(x != y)))  # ids/indices: the share that differs
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        if not (np.isfinite(x64).all() and np.isfinite(y64).all()):
            same = np.array_equal(np.isfinite(x64), np.isfinite(y64))
            worst = max(worst, 0.0 if same else float("inf"))
            x64, y64 = np.nan_to_num(x64), np.nan_to_num(y64)
        scale = max(float(np.max(np.abs(x64))) if x64.size else 0.0, 1e-6)
        worst = max(worst, float(np.max(np.abs(x64 - y64))) / scale if x64.size else 0.0)
    return worst


def tolerance(proto_has_fp16: bool) -> float:
    return 2e-2 if proto_has_fp16 else 1e-4


def _checked(variant: Variant, original: Variant, src: Path, sample: dict[str, np.ndarray]) -> Variant:
    """``variant`` when it reproduces the original on ``sample`` (one sample at a time for the static form),
    else the original with a note saying why intake's rewrite was not used."""
    if variant.path == original.path:
        return variant
    try:
        ref_sess = _session(str(src))
    except Exception as exc:  # noqa: BLE001 - the cells report the original model's own failure
        return Variant(
            variant.path,
            variant.sha256,
            [*variant.notes, f"original not runnable on ORT to check intake ({_first_line(exc)})"],
            variant.static,
        )
    try:
        sess = _session(variant.path)
        fp16 = any("fp16" in n for n in variant.notes)
        worst = 0.0
        n = len(next(iter(sample.values())))
        for i in range(n):
            feeds = {k: v[i : i + 1] for k, v in sample.items()}
            worst = max(worst, compare_outputs(ref_sess.run(None, feeds), sess.run(None, feeds)))
        if worst <= tolerance(fp16):
            return Variant(
                variant.path,
                variant.sha256,
                [*variant.notes, f"checked: equals the original to {worst:.1e} (relative) on {n} sample(s)"],
                variant.static,
            )
        why = f"its outputs differ from the original's by {worst:.3g} (relative) on {n} sample(s)"
    except Exception as exc:  # noqa: BLE001
        why = f"it does not run on ONNX Runtime ({_first_line(exc)})"
    return Variant(original.path, original.sha256, [f"intake's rewrite not used: {why}; compiling the model as given"])
