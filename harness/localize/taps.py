"""Taps: read the value of an original ONNX tensor inside a backend's compiled graph, a batch of tensors at a time.

A tap maps each tensor of the *original* float model to where that value lives in the backend's graph (a QDQ
graph's DequantizeLinear output, a QOperator graph's integer tensor and its scale, an OpenVINO FakeQuantize, a
TFLite tensor found through onnx2tf's names) and opens a runner that returns those values for a batch of feeds,
in the original layout (NCHW) and as float32. Tensors a backend does not materialise are reported as ``fused``
(compared at the next boundary that exists) or ``absent``, never filled in.

Instrumenting a graph (marking tensors as outputs) can keep a runtime from fusing the marked nodes; the caller
compares the tap's final output with the uninstrumented one and records the difference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: activations an ONNX Runtime quantizer (and most NPU compilers) folds into the op that produces their input
FUSABLE_ACTIVATIONS = {"Relu", "Clip", "LeakyRelu"}
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class TensorInfo:
    """One tensor of the original float graph, in topological order."""

    name: str
    node: str  # producing node's name ("<op>_<i>" when unnamed; "" for graph inputs)
    op_type: str  # producer's op type, "input" for graph inputs
    topo_index: int
    numel: int  # elements per sample (batch axis at 1); 0 when unknown
    inputs: list[str] = field(default_factory=list)  # the producer's activation inputs


@dataclass
class GraphIndex:
    """The float tensors of the original model that depend on its inputs, with producers and consumers."""

    tensors: list[TensorInfo]
    consumers: dict[str, list[str]]  # tensor → names of consuming nodes
    node_ops: dict[str, str]  # node name → op type
    node_outputs: dict[str, list[str]]
    node_inputs: dict[str, list[str]]  # node → its activation inputs
    outputs: list[str]
    inputs: list[str]

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tensors}


def light_proto(path: Path, batch: int | None = None) -> Any:
    """``path`` loaded with large initializers emptied (dims and type kept), shapes inferred: names, types and
    sizes without the weights' memory (a ResNet-50 otherwise costs several 100 MB copies). Small initializers stay:
    shape inference reads Reshape targets from them. ``batch`` fixes a dynamic batch axis first."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        if len(init.raw_data) > 4096:
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.DEFAULT
            init.raw_data = b""
    if batch is not None:
        from backends._graph import set_batch

        set_batch(proto, batch)
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - contrib ops or an emptied tensor shape inference wanted: names still hold
        return proto


def index_graph(model_path: Path) -> GraphIndex:
    """Index ``model_path``: float, input-dependent tensors only (shape arithmetic and constants are skipped)."""
    proto = shaped = light_proto(model_path, batch=1)
    g = proto.graph
    vis = {v.name: v for v in [*shaped.graph.value_info, *shaped.graph.input, *shaped.graph.output]}
    inits = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    dependent = set(inputs)
    tensors: list[TensorInfo] = []

    def numel(name: str) -> int:
        v = vis.get(name)
        if v is None or not v.type.tensor_type.shape.dim:
            return 0
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        return int(np.prod([max(d, 1) for d in dims])) if all(d > 0 for d in dims[1:]) else 0

    def is_float(name: str) -> bool:
        v = vis.get(name)
        return v is None or v.type.tensor_type.elem_type in (1, 10, 16)  # float, float16, bfloat16

    for name in inputs:
        if is_float(name):
            tensors.append(TensorInfo(name, "", "input", 0, numel(name)))
    consumers: dict[str, list[str]] = {}
    node_ops: dict[str, str] = {}
    node_outputs: dict[str, list[str]] = {}
    node_inputs: dict[str, list[str]] = {}
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        node_ops[name] = n.op_type
        node_outputs[name] = list(n.output)
        acts = [x for x in n.input if x in dependent]
        node_inputs[name] = acts
        for x in n.input:
            consumers.setdefault(x, []).append(name)
        if not acts:
            continue  # a constant subgraph
        for o in n.output:
            if not o:
                continue
            dependent.add(o)
            if is_float(o):
                tensors.append(TensorInfo(o, name, n.op_type, len(tensors), numel(o), acts))
    return GraphIndex(tensors, consumers, node_ops, node_outputs, node_inputs, [o.name for o in g.output], inputs)


@dataclass
class Located:
    """Where an original tensor is read in the backend: ``name`` there, and how to turn it into float NCHW."""

    name: str
    scale: float | None = None  # integer tensor: (q - zero_point) * scale
    zero_point: float = 0.0
    nhwc: bool = False
    note: str = ""


@dataclass
class Mapping_:
    """An original tensor's fate in one backend: located, or why not (status ``fused`` / ``absent``)."""

    status: str
    located: Located | None = None
    note: str = ""


def finish_mapping(index: GraphIndex, found: dict[str, Located], backend: str) -> dict[str, Mapping_]:
    """Turn the tensors found in a backend graph into per-tensor fates, explaining fused and absent ones.

    When an activation's output is missing but its producer's output was found and feeds only that activation,
    the backend fused them and the producer's tensor holds the activation's value (ORT's QOperator graphs name the
    Conv output, which is post-Relu): the value is compared as the activation's, the producer as ``fused``.
    """
    found = dict(found)
    out: dict[str, Mapping_] = {}
    for t in index.tensors:
        if t.op_type in FUSABLE_ACTIVATIONS and t.name not in found and t.inputs:
            src = t.inputs[0]
            if src in found and len(index.consumers.get(src, [])) == 1 and src not in index.outputs:
                loc = found.pop(src)
                loc.note = f"{backend} fuses {index.by_name[src].op_type}+{t.op_type}: its tensor holds the {t.op_type}"
                found[t.name] = loc
                out[src] = Mapping_(
                    "fused", None, f"fused with {t.op_type} {t.node} (compared at its output, the fused boundary)"
                )
    for t in index.tensors:
        if t.name in out:
            continue
        if t.name in found:
            out[t.name] = Mapping_("compared", found[t.name], found[t.name].note)
            continue
        cons = [c for c in index.consumers.get(t.name, []) if c in index.node_ops]
        if t.op_type == "input":
            out[t.name] = Mapping_("absent", None, f"model input: {backend} reads the feed as is (not compared)")
        elif len(cons) == 1 and t.name not in index.outputs:
            c = cons[0]
            at = "compared at its output" if any(o in found for o in index.node_outputs[c]) else "not compared"
            out[t.name] = Mapping_(
                "fused", None, f"not materialised by {backend}: fused into {index.node_ops[c]} {c} ({at})"
            )
        else:
            out[t.name] = Mapping_("absent", None, f"no tensor of {backend}'s graph maps to it")
    return out


# ---------------------------------------------------------------------------------------------------------
# ONNX graphs run by ONNX Runtime: the reference, ORT QDQ / QOperator / dynamic / fp16, simnpu
# ---------------------------------------------------------------------------------------------------------
ORT_LEVELS = {"disabled": 0, "basic": 1, "extended": 2, "all": 99}


class OnnxTap:
    """Marks tensors of an ONNX graph as outputs, a batch at a time, and runs it on ONNX Runtime's CPU EP.

    ``style`` picks the name rules: ``qdq`` (``t_DequantizeLinear_Output`` before ``t``), ``qoperator``
    (``t_quantized`` dequantized with its scale/zero point), ``simnpu`` (``t``; a graph input's grid value is
    ``t__simq``), ``plain`` (``t``: the float reference).
    """

    def __init__(self, path: Path, style: str, level: str = "all", threads: int = 1, label: str = "") -> None:
        import onnx

        self.path, self.style, self.level, self.threads = path, style, level, threads
        self.label = label or style
        self.proto = onnx.load(str(path))
        g = self.proto.graph
        self.inits = {i.name: i for i in g.initializer}
        self.produced = {o for n in g.node for o in n.output if o} | {i.name for i in g.input}
        self.types = self._types()
        self.n_outputs = len(g.output)
        self.description = f"ONNX Runtime CPU, graph_optimization={level}, {style} graph"

    def _types(self) -> dict[str, int]:
        g = light_proto(self.path).graph  # contrib ops may stay untyped: their types come from the name rules
        vis = [*g.value_info, *g.input, *g.output]
        return {v.name: v.type.tensor_type.elem_type for v in vis if v.type.tensor_type.elem_type}

    def locate(self, index: GraphIndex) -> dict[str, Mapping_]:
        found: dict[str, Located] = {}
        inputs = set(index.inputs)
        for t in index.tensors:
            if self.style == "qdq":
                cands = [f"{t.name}_DequantizeLinear_Output", t.name]
            elif self.style == "qoperator":
                cands = [f"{t.name}_DequantizeLinear_Output", f"{t.name}_quantized", t.name]
            elif self.style == "simnpu":
                cands = [f"{t.name}__simq", t.name] if t.name in inputs else [t.name]
            else:
                cands = [t.name]
            for c in cands:
                if c not in self.produced:
                    continue
                if c.endswith("_quantized") and self.style == "qoperator":
                    qp = self._qparams(c)
                    if qp is None:
                        continue
                    found[t.name] = Located(c, qp[0], qp[1], note="integer tensor dequantized with its scale")
                else:
                    found[t.name] = Located(c)
                break
        return finish_mapping(index, found, self.label)

    def _qparams(self, name: str) -> tuple[float, float] | None:
        """Scale and zero point of an integer tensor of a QOperator graph: the (x, x_scale, x_zp) triplet of a
        consumer (every QLinear op and DequantizeLinear takes its inputs that way)."""
        from onnx import numpy_helper

        for n in self.proto.graph.node:
            ins = list(n.input)
            for k, x in enumerate(ins):
                if x == name and k + 1 < len(ins):
                    s = self.inits.get(ins[k + 1])
                    z = self.inits.get(ins[k + 2]) if k + 2 < len(ins) else None
                    if s is not None and numpy_helper.to_array(s).size == 1:
                        zp = float(numpy_helper.to_array(z).reshape(-1)[0]) if z is not None else 0.0
                        return float(numpy_helper.to_array(s).reshape(-1)[0]), zp
        return None

    def _elem_type(self, name: str) -> int:
        import onnx

        if name in self.types:
            return self.types[name]
        if name.endswith("_quantized"):
            for n in self.proto.graph.node:
                ins = list(n.input)
                if name in ins:
                    k = ins.index(name)
                    if k + 2 < len(ins) and ins[k + 2] in self.inits:
                        return self.inits[ins[k + 2]].data_type
            return onnx.TensorProto.UINT8
        return onnx.TensorProto.FLOAT

    def _pruned(self, names: list[str], outputs: list[Any]) -> bytes:
        """The graph cut down to what ``names`` depend on, with them as its outputs, serialized.

        ONNX Runtime runs every node of a session whatever the outputs asked (measured: a ResNet-50 session that
        outputs its maxpool takes as long as one that outputs the logits), so a layer batch early in the graph
        would pay for the whole network. Graphs with control-flow subgraphs are not cut (their implicit inputs).
        """
        from onnx import helper

        g = self.proto.graph
        if any(a.type in (5, 10) for n in g.node for a in n.attribute):  # GRAPH / GRAPHS attributes
            keep_nodes = list(g.node)
        else:
            producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
            need, stack = set(), [producer[n] for n in names if n in producer]
            while stack:
                i = stack.pop()
                if i in need:
                    continue
                need.add(i)
                stack += [producer[x] for x in g.node[i].input if x in producer]
            keep_nodes = [n for i, n in enumerate(g.node) if i in need]
        used = {x for n in keep_nodes for x in n.input}
        inits = {i.name for i in g.initializer}
        inputs = [i for i in g.input if i.name not in inits or i.name in used]  # old IRs list initializers too
        graph = helper.make_graph(keep_nodes, g.name, inputs, outputs, [i for i in g.initializer if i.name in used])
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        blob = model.SerializeToString()
        del model, graph
        return blob

    def open(self, located: Sequence[Located]) -> Runner:
        """A runner returning ``{backend name: float32 array}`` for these tensors (graph outputs replaced)."""
        import onnx
        import onnxruntime as ort
        from onnx import helper

        names = list(dict.fromkeys(loc.name for loc in located))
        blob = self._pruned(names, [helper.make_tensor_value_info(n, self._elem_type(n), None) for n in names])
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.level]
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        del blob
        qp = {loc.name: loc for loc in located}
        _ = onnx  # imported for the proto types above

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            outs = sess.run(names, dict(feeds))
            return {n: _to_float(v, qp[n]) for n, v in zip(names, outs, strict=True)}

        return run


def _to_float(v: np.ndarray, loc: Located) -> np.ndarray:
    v = np.asarray(v)
    if loc.scale is not None:
        v = (v.astype(np.float32) - np.float32(loc.zero_point)) * np.float32(loc.scale)
    v = v.astype(np.float32, copy=False)
    if loc.nhwc and v.ndim == 4:
        v = np.transpose(v, (0, 3, 1, 2))
    return v


# ---------------------------------------------------------------------------------------------------------
# OpenVINO: ports by tensor name; NNCF's activation FakeQuantize after a port holds the quantized value
# ---------------------------------------------------------------------------------------------------------
class OpenVinoTap:
    def __init__(self, xml: Path, config: dict[str, str], device: str, qdq: bool, label: str = "openvino") -> None:
        import openvino as ov

        self.core = ov.Core()
        self.xml, self.config, self.device, self.qdq, self.label = xml, config, device, qdq, label
        model = self.core.read_model(str(xml))
        self.ports: dict[str, Any] = {}
        for op in model.get_ordered_ops():
            for o in op.outputs():
                for n in o.get_names():
                    self.ports.setdefault(n, (op.get_friendly_name(), o.get_index()))
        self._model = model
        self.description = (
            f"OpenVINO {device} ({'ORT QDQ graph' if qdq else 'NNCF FakeQuantize graph'}), extra outputs added"
        )

    def locate(self, index: GraphIndex) -> dict[str, Mapping_]:
        found: dict[str, Located] = {}
        ops = {op.get_friendly_name(): op for op in self._model.get_ordered_ops()}
        for t in index.tensors:
            cands = [f"{t.name}_DequantizeLinear_Output", t.name] if self.qdq else [t.name]
            for c in cands:
                if c not in self.ports:
                    continue
                op_name, idx = self.ports[c]
                out = ops[op_name].output(idx)
                fq = [i.get_node() for i in out.get_target_inputs() if i.get_node().get_type_name() == "FakeQuantize"]
                fq = [n for n in fq if n.input(0).get_source_output().get_node().get_friendly_name() == op_name]
                if fq and not self.qdq:
                    found[t.name] = Located(f"{fq[0].get_friendly_name()}:0", note="NNCF FakeQuantize output")
                elif ops[op_name].get_type_name() == "Parameter":
                    break  # the feed itself (a model input cannot be added as an output): exact, not compared
                else:
                    found[t.name] = Located(f"{op_name}:{idx}")
                break
        return finish_mapping(index, found, self.label)

    def open(self, located: Sequence[Located]) -> Runner:
        model = self.core.read_model(str(self.xml))
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        names = list(dict.fromkeys(loc.name for loc in located))
        ports = []
        for n in names:
            op_name, idx = n.rsplit(":", 1)
            ports.append(ops[op_name].output(int(idx)))
        model.add_outputs(ports)  # a port that already is an output is not added twice
        srcs = [r.input_value(0) for r in model.get_results()]  # results are in the compiled outputs' order
        where = {(o.get_node().get_friendly_name(), o.get_index()): i for i, o in enumerate(srcs)}
        pos = [where[(n.rsplit(":", 1)[0], int(n.rsplit(":", 1)[1]))] for n in names]
        compiled = self.core.compile_model(model, self.device, self.config)
        request = compiled.create_infer_request()
        inputs = [i.any_name for i in compiled.inputs]
        qp = {loc.name: loc for loc in located}

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            request.infer({k: np.ascontiguousarray(feeds[k]) for k in inputs})
            return {
                n: _to_float(request.get_output_tensor(j).data.copy(), qp[n]) for j, n in zip(pos, names, strict=True)
            }

        return run


# ---------------------------------------------------------------------------------------------------------
# TFLite: preserve-all-tensors interpreter, tensor names parsed from onnx2tf's Keras op names
# ---------------------------------------------------------------------------------------------------------
#: ONNX op → the TF op prefix onnx2tf names its Keras op after (k-th ONNX node of the type → "<prefix>_k")
ONNX2TF_OPS = {
    "Conv": "tf.nn.convolution",
    "Relu": "tf.nn.relu",
    "GlobalAveragePool": "tf.math.reduce_mean",
    "Sigmoid": "tf.math.sigmoid",
    "MatMul": "tf.linalg.matmul",
    "Softmax": "tf.nn.softmax",
}
_KERAS = re.compile(r"^model(?:_\d+)?/(?P<op>[A-Za-z0-9_.]+?)(?:_(?P<k>\d+))?/")


class TfliteTap:
    """TFLite interpreter with ``experimental_preserve_all_tensors`` (no XNNPACK: its fused kernels keep nothing).

    onnx2tf names each fused tensor by the ops it holds (``model/tf.nn.relu_1/Relu;model/tf.math.add_1/Add;
    model/tf.nn.convolution_1/convolution``), the first being the outermost. The k-th ONNX node of a type maps to
    the k-th distinct ``<tf op>_n`` for the types in :data:`ONNX2TF_OPS`; residual Adds share their counter with
    bias Adds and cannot be mapped by count, so they (and other types) are reported ``absent``.
    """

    def __init__(self, path: Path, threads: int = 1, label: str = "tflite") -> None:
        from backends.tflite import _interpreter_module

        mod = _interpreter_module()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.interp = mod.Interpreter(
                model_path=str(path),
                num_threads=threads,
                experimental_op_resolver_type=mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                experimental_preserve_all_tensors=True,
            )
        self.interp.allocate_tensors()
        self.path, self.label = path, label
        self.description = "TFLite builtin kernels (XNNPACK off: it keeps no intermediates), preserve-all-tensors"
        self._batch = 1

    def locate(self, index: GraphIndex) -> dict[str, Mapping_]:
        ordinal: dict[tuple[str, int], str] = {}
        counts: dict[str, int] = {}
        for t in index.tensors:
            if t.op_type in ONNX2TF_OPS:
                k = counts.get(t.op_type, 0)
                counts[t.op_type] = k + 1
                ordinal[(ONNX2TF_OPS[t.op_type], k)] = t.name
        # onnx2tf's Keras op numbers are per TF session and skip (a second model built in one run starts at
        # relu_7, conv numbers may jump by 3): the j-th distinct number of an op is its j-th ONNX node, and an op
        # type is mapped only when the counts agree (weights name every conv, even fused ones)
        seen: dict[str, set[int]] = {}
        for d in self.interp.get_tensor_details():
            for part in d["name"].split(";"):
                m = _KERAS.match(part)
                if m:
                    seen.setdefault(m["op"], set()).add(int(m["k"] or 0))
        rank = {
            (op, k): j
            for op, ks in seen.items()
            if len(ks) == counts.get(next((o for o, tf in ONNX2TF_OPS.items() if tf == op), ""), -1)
            for j, k in enumerate(sorted(ks))
        }
        found: dict[str, Located] = {}
        outs = {d["index"] for d in self.interp.get_output_details()}
        ins = {d["index"] for d in self.interp.get_input_details()}
        for d in self.interp.get_tensor_details():
            shape = list(d["shape"])
            if len(shape) < 2 or shape[0] != 1 or d["index"] in ins:
                continue
            parts = d["name"].split(";")
            m = _KERAS.match(parts[0])
            name = None
            if m:
                name = ordinal.get((m["op"], rank.get((m["op"], int(m["k"] or 0)), -1)))
                if name is None and m["op"] == "tf.math.add":  # a Conv's bias Add: the Conv's output
                    for p in parts[1:]:
                        mc = _KERAS.match(p)
                        if mc and mc["op"] == "tf.nn.convolution":
                            name = ordinal.get((mc["op"], rank.get((mc["op"], int(mc["k"] or 0)), -1)))
            if d["index"] in outs:
                name = index.outputs[sorted(outs).index(d["index"])] if len(outs) == len(index.outputs) else name
            if name is None or name in found:
                continue
            scale, zero = d["quantization"]
            found[name] = Located(
                str(d["index"]),
                float(scale) if scale and d["dtype"] != np.float32 else None,
                float(zero),
                nhwc=len(shape) == 4,
                note="onnx2tf name " + parts[0],
            )
        return finish_mapping(index, found, self.label)

    def open(self, located: Sequence[Located]) -> Runner:
        interp = self.interp
        idx = [int(loc.name) for loc in located]
        qp = {loc.name: loc for loc in located}
        ins = interp.get_input_details()

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            arrays = list(feeds.values())
            n = len(arrays[0])
            per: list[dict[str, np.ndarray]] = []
            for s in range(n):  # the converted models have a fixed batch of 1
                for d, x in zip(ins, arrays, strict=True):
                    x = x[s : s + 1]
                    if len(d["shape"]) == 4 and x.ndim == 4 and d["shape"][-1] == x.shape[1] != d["shape"][1]:
                        x = np.transpose(x, (0, 2, 3, 1))
                    scale, zero = d["quantization"]
                    if d["dtype"] in (np.int8, np.uint8, np.int16) and scale:
                        info = np.iinfo(d["dtype"])
                        x = np.clip(np.round(x / scale) + zero, info.min, info.max)
                    interp.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
                interp.invoke()
                per.append({str(i): _to_float(interp.get_tensor(i).copy(), qp[str(i)]) for i in idx})
            return {k: np.concatenate([p[k] for p in per], axis=0) for k in per[0]}

        return run
