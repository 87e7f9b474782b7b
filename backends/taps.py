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

from qtbench.backends._graph import ort_optimization_level, set_batch

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

        ONNX Runtime runs every node of a session whatever the outputs asked, so a layer batch early in the graph
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
        so.graph_optimization_level = ort_optimization_level(self.level)
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
# TFLite: preserve-all-tensors interpreter; original tensors found by walking both graphs from the inputs
# ---------------------------------------------------------------------------------------------------------
#: TFLite builtin op → the ONNX op types one such op can compute (what its output is matched to). Converters fold
#: BatchNormalization and constant Add/Sub/Mul/Div into a compute op's weights and fuse Relu/Clip into its output
#: (the op's fused activation), so a compute op's output can hold a later node's tensor: the walk follows them.
TFLITE_CORE: dict[str, frozenset[str]] = {
    k: frozenset(v)
    for k, v in {
        "CONV_2D": {"Conv"},
        "DEPTHWISE_CONV_2D": {"Conv"},
        "CONV_3D": {"Conv"},
        "TRANSPOSE_CONV": {"ConvTranspose"},
        "FULLY_CONNECTED": {"Gemm", "MatMul"},
        "BATCH_MATMUL": {"MatMul", "Gemm"},
        "ADD": {"Add", "Sum"},
        "ADD_N": {"Sum"},
        "SUB": {"Sub"},
        "MUL": {"Mul"},
        "DIV": {"Div"},
        "MEAN": {"GlobalAveragePool", "ReduceMean"},
        "AVERAGE_POOL_2D": {"AveragePool", "GlobalAveragePool"},
        "MAX_POOL_2D": {"MaxPool", "GlobalMaxPool"},
        "REDUCE_MAX": {"GlobalMaxPool", "ReduceMax"},
        "SUM": {"ReduceSum"},
        "RELU": {"Relu", "Clip"},
        "RELU6": {"Clip"},
        "RELU_N1_TO_1": {"Clip"},
        "RELU_0_TO_1": {"Clip", "HardSigmoid"},
        "MINIMUM": {"Min", "Clip", "HardSigmoid"},
        "MAXIMUM": {"Max", "Clip", "HardSigmoid", "Relu"},
        "LEAKY_RELU": {"LeakyRelu"},
        "PRELU": {"PRelu", "LeakyRelu"},
        "ELU": {"Elu"},
        "LOGISTIC": {"Sigmoid"},
        "TANH": {"Tanh"},
        "HARD_SWISH": {"HardSwish"},
        "GELU": {"Gelu"},
        "SOFTMAX": {"Softmax"},
        "LOG_SOFTMAX": {"LogSoftmax"},
        "CONCATENATION": {"Concat"},
        "RESIZE_BILINEAR": {"Resize", "Upsample"},
        "RESIZE_NEAREST_NEIGHBOR": {"Resize", "Upsample"},
        "RESHAPE": {"Reshape", "Flatten", "Squeeze", "Unsqueeze"},
        "SQUEEZE": {"Squeeze", "Reshape", "Flatten"},
        "EXPAND_DIMS": {"Unsqueeze", "Reshape"},
        "TRANSPOSE": {"Transpose"},
        "PAD": {"Pad"},
        "PADV2": {"Pad"},
        "MIRROR_PAD": {"Pad"},
    }.items()
}
#: ops that weights/bias/activation can be folded into
_COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL"}
#: ops that copy their input in another layout/padding/type when no original node matches: PAD before a Conv with
#: explicit pads, TRANSPOSE before a Flatten, (DE)QUANTIZE at an integer graph's edges
_LAYOUT = {
    "PAD",
    "PADV2",
    "MIRROR_PAD",
    "TRANSPOSE",
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "QUANTIZE",
    "DEQUANTIZE",
    "CAST",
}
#: single-input original nodes a compute op's weights absorb (their constant operand folded in)
_FOLDED = {"BatchNormalization", "Add", "Sub", "Mul", "Div"}
#: single-input original nodes that change no value in NCHW order (no TFLite op of their own)
_TRANSPARENT = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze"}
#: single-input original nodes the next TFLite op may absorb (a Pad into a conv's SAME padding): passed to find
#: that op, never mapped through (the sizes differ)
_ABSORBED = {"Pad"}
#: fused activation → the original activation nodes it computes
_FUSED_ACT = {"RELU": {"Relu", "Clip"}, "RELU6": {"Clip"}, "RELU_N1_TO_1": {"Clip"}, "TANH": {"Tanh"}}
#: HardSigmoid split up: x·α+β (MUL/ADD, or folded into the producer's weights), then a clip to [0, 1]
_AFFINE_OPS = {"MUL", "ADD", "SUB", "DIV"}
_CLIP_OPS = {"RELU_0_TO_1", "MINIMUM", "MAXIMUM", "RELU6", "RELU_N1_TO_1", "RELU"}
#: the original nodes a HARD_SWISH can stand for when the model spells x·relu6(x+3)/6 out
_HSWISH_PARTS = {"Add", "Clip", "Mul", "Div", "HardSigmoid", "Relu", "Min", "Max"}
_KERAS = re.compile(r"^model(?:_\d+)?/(?P<op>[A-Za-z0-9_.]+?)(?:_(?P<k>\d+))?/")


@dataclass
class _TflOp:
    """One operator of the .tflite's main subgraph, in execution order."""

    pos: int
    code: str  # builtin op name: CONV_2D, ...
    inputs: list[int]  # activation inputs (computed from the graph inputs), operand order
    output: int  # -1 unless the op has exactly one output
    act: str  # fused activation ("" when none)
    name: str  # the output tensor's name (onnx2tf: its Keras ops, outermost first)


def _fused_activations(path: Path) -> dict[int, str] | None:
    """Operator position → fused activation ("RELU", "RELU6", ...), read from the flatbuffer's builtin options;
    None when the schema module is missing or the file cannot be parsed."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        sub = model.Subgraphs(0)
        option_names = {v: k for k, v in vars(schema.BuiltinOptions).items() if not k.startswith("_")}
        act_names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
        out: dict[int, str] = {}
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            table = op.BuiltinOptions()
            cls = getattr(schema, option_names.get(op.BuiltinOptionsType(), ""), None)
            if table is None or cls is None or not hasattr(cls, "FusedActivationFunction"):
                continue
            opts = cls()
            opts.Init(table.Bytes, table.Pos)
            act = act_names.get(opts.FusedActivationFunction(), "NONE")
            if act != "NONE":
                out[i] = act
        return out
    except Exception:  # noqa: BLE001 - an unusual file: fall back to the tensor names
        return None


def _name_activation(name: str) -> str:
    """The fused activation onnx2tf's outermost Keras op names (``…/tf.nn.relu6_2/Relu6;…``), else ""."""
    m = _KERAS.match(name)
    if m is None:
        return ""
    return {"tf.nn.relu6": "RELU6", "tf.nn.relu": "RELU"}.get(m["op"], "")


def _tflite_ops(interp: Any, path: Path) -> list[_TflOp]:
    """The interpreter's operators with their activation inputs and fused activations."""
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    live = {d["index"] for d in interp.get_input_details()}
    fused = _fused_activations(path)
    ops: list[_TflOp] = []
    for i, op in enumerate(interp._get_ops_details()):
        ins = [int(t) for t in op["inputs"] if int(t) in live]
        outs = [int(t) for t in op["outputs"]]
        if ins:
            live.update(outs)
        name = str(tensors[outs[0]]["name"]) if len(outs) == 1 and outs[0] in tensors else ""
        code = str(op["op_name"])
        act = fused.get(i, "") if fused is not None else (_name_activation(name) if code in _COMPUTE else "")
        ops.append(_TflOp(i, code, ins, outs[0] if len(outs) == 1 else -1, act, name))
    return ops


def _input_map(details: list[dict[str, Any]], names: list[str]) -> dict[int, str]:
    """TFLite input tensor → original input: by name (onnx2tf's ``serving_default_<name>:0``, its signature may
    sort them), else by position; empty when the counts differ."""
    if len(details) != len(names):
        return {}
    bare = {re.sub(r"^serving_default_|:\d+$", "", str(d["name"])): d["index"] for d in details}
    if set(bare) == set(names):
        return {bare[n]: n for n in names}
    return {d["index"]: n for d, n in zip(details, names, strict=True)}


class _Walk:
    """Aligns a .tflite's operators with the original graph's nodes, from the inputs forward.

    Each operator whose activation inputs hold known original tensors is matched to the node that consumes those
    tensors and has a type it can compute (:data:`TFLITE_CORE`); its output then holds that node's output, or a
    later node's: one its fused activation stands for, or (found when a consumer needs it) a BatchNormalization or
    constant Add/Mul the converter folded into its weights. Layout copies (PAD, TRANSPOSE, QUANTIZE, ...) hold their
    input's value. Tensor names only order sibling ops (two convs of one input: onnx2tf numbers each TF op type in
    ONNX node order), so depthwise and regular convs, residual Adds and fused activations need no name rules.
    """

    def __init__(self, index: GraphIndex, ops: list[_TflOp], numel: dict[int, int]) -> None:
        self.index, self.ops, self.numel = index, ops, numel
        self.order = {n: i for i, n in enumerate(index.node_ops)}
        self.holds: dict[int, str] = {}  # TFLite tensor → the original tensor whose value it holds
        self.holder: dict[str, int] = {}
        self.base: dict[int, int] = {}  # layout copy → the tensor it copies
        self.split: dict[int, tuple[str, bool]] = {}  # tensor inside a split-up node → (node, clip reached)
        self.claimed: set[str] = set()
        self.made_by: dict[int, str] = {}  # tensor → its op's code
        self.confirmed: set[int] = set()  # tensors a matched consumer read as what they are said to hold
        self.copies = {op.output: op.inputs[0] for op in ops if op.code in _LAYOUT and len(op.inputs) == 1}
        self.by_spelling: dict[str, set[str]] = {}  # ABS → {"Abs"}: TFLite ops named as the ONNX op they compute
        for kind in set(index.node_ops.values()):
            self.by_spelling.setdefault(kind.lower(), set()).add(kind)

    def kinds(self, code: str) -> frozenset[str]:
        """The original node types a TFLite op computes: :data:`TFLITE_CORE`, or the type spelt as the op is."""
        return TFLITE_CORE.get(code, frozenset()) | self.by_spelling.get(code.replace("_", "").lower(), set())

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def src(self, t: int) -> int:
        while t in self.base:
            t = self.base[t]
        return t

    def hold(self, t: int, name: str) -> None:
        old = self.holds.get(t)
        if old is not None and self.holder.get(old) == t:
            del self.holder[old]
        prev = self.holder.get(name)
        if prev is not None and prev != t:
            self.holds.pop(prev, None)
        self.holds[t] = name
        self.holder[name] = t

    def drop(self, t: int) -> None:
        old = self.holds.pop(t, None)
        if old is not None and self.holder.get(old) == t:
            del self.holder[old]

    def fits(self, t: int, name: str) -> bool:
        n = self.index.by_name[name].numel if name in self.index.by_name else 0
        return n == 0 or self.numel.get(t, 0) in (0, n)

    def consumers(self, name: str) -> list[str]:
        return [c for c in self.index.consumers.get(name, []) if c in self.index.node_ops and c not in self.claimed]

    def only_input(self, node: str) -> str | None:
        ins = list(dict.fromkeys(self.index.node_inputs[node]))
        return ins[0] if len(ins) == 1 else None

    def out_of(self, node: str) -> str:
        return self.index.node_outputs[node][0]

    # -- the original graph seen from a TFLite tensor -------------------------------------------------------------
    def chain(self, t: int) -> list[tuple[str, str, list[str]]]:
        """(tensor, value t holds if consumed there, nodes skipped) for the tensor t holds and the ones it reaches
        through nodes TFLite leaves no op for: transparent reshapes, and folded affine nodes after a compute op."""
        y = self.holds[t]
        held, skipped = y, []
        out = [(y, held, [])]
        fold = self.made_by.get(t) in _COMPUTE
        while y not in self.index.outputs:
            cons = [c for c in self.index.consumers.get(y, []) if c in self.index.node_ops]
            if len(cons) != 1 or cons[0] in self.claimed or self.only_input(cons[0]) != y:
                break
            n, kind = cons[0], self.index.node_ops[cons[0]]
            nxt = self.out_of(n)
            if kind in _FOLDED and fold and held == y:
                held = nxt
            elif kind not in _TRANSPARENT and kind not in _ABSORBED:
                break
            y, skipped = nxt, [*skipped, n]
            out.append((y, held, skipped))
        return out

    def activation(self, exit_: str, act: str, fold: bool) -> tuple[str, list[str]] | None:
        """The output of the activation node a fused activation stands for, past folded affine nodes."""
        y, passed = exit_, []
        while y not in self.index.outputs:
            cons = [c for c in self.index.consumers.get(y, []) if c in self.index.node_ops]
            if len(cons) != 1 or cons[0] in self.claimed or self.only_input(cons[0]) != y:
                return None
            n, kind = cons[0], self.index.node_ops[cons[0]]
            passed.append(n)
            if kind in _FUSED_ACT.get(act, ()):
                return self.out_of(n), passed
            if not (fold and kind in _FOLDED):
                return None
            y = self.out_of(n)
        return None

    # -- matching -----------------------------------------------------------------------------------------------
    def candidates(self, op: _TflOp, ins: list[int], kinds: frozenset[str]) -> list[tuple[str, str, dict, list]]:
        """(node, output it stands for, {input tensor: value held}, nodes claimed) for each node ``op`` can be."""
        chains = [self.chain(t) for t in ins]
        seen: set[str] = set()
        out = []
        for ch in chains:
            for y, _, _ in ch:
                for n in self.consumers(y):
                    if n in seen or self.index.node_ops[n] not in kinds:
                        continue
                    seen.add(n)
                    need = list(dict.fromkeys(self.index.node_inputs[n]))
                    if len(need) != len(ins):
                        continue
                    assign: dict[int, tuple[str, list[str]]] = {}
                    for x in need:
                        i = next(
                            (i for i, c in enumerate(chains) if i not in assign and any(x == e[0] for e in c)), None
                        )
                        if i is None:
                            break
                        entry = next(e for e in chains[i] if e[0] == x)
                        assign[i] = (entry[1], entry[2])
                    if len(assign) != len(need):
                        continue
                    exit_, claim = self.out_of(n), [n]
                    if op.act:
                        act = self.activation(exit_, op.act, op.code in _COMPUTE)
                        if act is None:
                            continue
                        exit_, claim = act[0], [n, *act[1]]
                    if not self.fits(op.output, exit_):
                        continue
                    skipped = [s for _, sk in assign.values() for s in sk]
                    out.append((n, exit_, {ins[i]: held for i, (held, _) in assign.items()}, claim + skipped))
        return sorted(out, key=lambda c: self.order[c[0]])

    def rivals(self, op: _TflOp, ins: list[int], kinds: frozenset[str]) -> list[_TflOp]:
        """Ops from ``op`` on that read the same tensors and could compute the same node types (siblings)."""

        def base(t: int) -> int:
            while t in self.copies or t in self.base:
                t = self.base.get(t, self.copies.get(t, t))
            return t

        want = {base(t) for t in ins}
        return [
            o
            for o in self.ops[op.pos :]
            if o.output >= 0 and self.kinds(o.code) & kinds and {base(t) for t in o.inputs} == want
        ]

    @staticmethod
    def _name_keys(ops: list[_TflOp]) -> list[int] | None:
        """Per op, the number onnx2tf gave the innermost Keras op type all their names share (numbers grow in
        ONNX node order within a type); None when the names share none."""
        parsed = [[(m["op"], int(m["k"] or 0)) for p in o.name.split(";") if (m := _KERAS.match(p))] for o in ops]
        common = set.intersection(*[{op for op, _ in p} for p in parsed]) if parsed else set()
        if not common:
            return None
        inner = next(op for op, _ in reversed(parsed[0]) if op in common)
        return [next(k for op, k in reversed(p) if op == inner) for p in parsed]

    def pick(self, op: _TflOp, ins: list[int], kinds: frozenset[str], cands: list) -> tuple | None:
        """The candidate ``op`` is: the only one, or by rank among sibling ops (by name numbers, else by order)."""
        if len(cands) == 1:
            return cands[0]
        rivals = self.rivals(op, ins, kinds)
        if len(rivals) != len(cands):
            return None  # ambiguous: left unmapped rather than guessed
        keys = self._name_keys(rivals)
        rank = sorted(range(len(rivals)), key=lambda i: (keys[i] if keys else 0, rivals[i].pos))
        return cands[rank.index(0)]

    def hard_swish(self, y: str) -> tuple[str, list[str]] | None:
        """x·relu6(x+3)/6 spelt out in the original graph (Add, Clip, Mul, Div or HardSigmoid, Mul) from ``y``: the
        largest closed region of such nodes with one tensor leaving it."""
        region: list[str] = []
        made = {y}
        best = None
        while len(region) < 8:
            nxt = sorted(
                {
                    c
                    for x in made
                    for c in self.consumers(x)
                    if c not in region
                    and self.index.node_ops[c] in _HSWISH_PARTS
                    and all(i in made for i in self.index.node_inputs[c])
                },
                key=self.order.__getitem__,
            )
            if not nxt:
                break
            region.append(nxt[0])
            made |= set(self.index.node_outputs[nxt[0]])
            leaving = [
                x for x in made - {y} if x in self.index.outputs or any(c not in region for c in self.consumers(x))
            ]
            kinds = {self.index.node_ops[n] for n in region}
            if len(leaving) == 1 and "Mul" in kinds and kinds & {"Clip", "HardSigmoid", "Relu", "Min", "Max"}:
                best = (leaving[0], list(region))
        return best

    # -- the walk -----------------------------------------------------------------------------------------------
    def step(self, op: _TflOp) -> None:
        ins = list(dict.fromkeys(self.src(t) for t in op.inputs))
        split = [self.split[t] for t in ins if t in self.split]
        if split and len(ins) == 1:
            node, clipped = split[0]
            if op.code in _CLIP_OPS:  # the clip that ends a split-up HardSigmoid (MAXIMUM, then MINIMUM)
                self.split[op.output] = (node, True)
                self.claimed.add(node)
                if self.fits(op.output, self.out_of(node)):
                    self.hold(op.output, self.out_of(node))
                return
            if op.code in _AFFINE_OPS and not clipped:
                self.split[op.output] = (node, False)
                return
        if any(t not in self.holds for t in ins):
            return  # an input of unknown provenance: nothing downstream of it is guessed
        kinds = self.kinds(op.code)
        cands = self.candidates(op, ins, kinds) if kinds else []
        chosen = self.pick(op, ins, kinds, cands) if cands else None
        if chosen is not None:
            node, exit_, held, claim = chosen
            for t, y in held.items():
                if self.holds.get(t) != y:
                    self.hold(t, y)
            self.confirmed.update(held)
            self.claimed.update(claim)
            if self.index.node_ops[node] == "HardSigmoid":
                # a clip straight after a compute op: α·x+β went into its weights, so that tensor holds neither
                # the HardSigmoid's input nor its output
                self.drop(ins[0])
            self.hold(op.output, exit_)
            if op.code in ("MINIMUM", "MAXIMUM", "RELU_0_TO_1") and self.index.node_ops[node] in (
                "Clip",
                "HardSigmoid",
            ):
                self.split[op.output] = (node, True)
            return
        if op.code == "HARD_SWISH" and len(ins) == 1:
            for y, held, skipped in self.chain(ins[0]):
                found = self.hard_swish(y)
                if found is not None and self.fits(op.output, found[0]):
                    self.hold(ins[0], held)
                    self.confirmed.add(ins[0])
                    self.claimed.update([*skipped, *found[1]])
                    self.hold(op.output, found[0])
                    return
        if op.code in _AFFINE_OPS and len(ins) == 1:  # HardSigmoid's α·x+β as MUL/ADD ops of its own
            for y, held, skipped in self.chain(ins[0]):
                hs = [c for c in self.consumers(y) if self.index.node_ops[c] == "HardSigmoid"]
                if len(hs) == 1:
                    self.hold(ins[0], held)
                    self.confirmed.add(ins[0])
                    self.claimed.update(skipped)
                    self.split[op.output] = (hs[0], False)
                    return
        if op.code in _LAYOUT and len(ins) == 1:
            self.base[op.output] = ins[0]

    def run(self, inputs: dict[int, str], outputs: list[int]) -> dict[str, tuple[int, str]]:
        """{original tensor: (TFLite tensor, code of the op that made it)} for the tensors found."""
        for t, name in inputs.items():
            self.hold(t, name)
        for op in self.ops:
            if op.output >= 0 and op.inputs:
                self.step(op)
                self.made_by[op.output] = op.code
        # a graph output past nodes no op was left for (a folded BatchNormalization, a Flatten): its value is there
        same: dict[str, int] = {}
        for name in self.index.outputs:
            for t in outputs if name not in self.holder else []:
                s = self.src(t)
                entry = next((e for e in self.chain(s) if e[0] == name), None) if s in self.holds else None
                if entry is not None and self.fits(s, name):
                    self.confirmed.add(s)
                    if entry[1] == name:  # folded in: the tensor holds the output, no longer its producer's input
                        self.hold(s, name)
                    else:  # reshaped only: the same values in NCHW order
                        same[name] = s
                    break
        # a compute op's output no matched op read: whether a BatchNormalization or affine node after it was
        # folded in is unknown, so it is left unmapped rather than compared as the wrong tensor
        for t in [t for t in self.holds if t not in self.confirmed and self.made_by.get(t) in _COMPUTE]:
            if any(held != self.holds[t] for _, held, _ in self.chain(t)):
                self.drop(t)
        found = {name: t for name, t in self.holder.items() if name not in inputs.values()} | same
        return {name: (t, self.made_by.get(t, "")) for name, t in found.items()}


class TfliteTap:
    """TFLite interpreter with ``experimental_preserve_all_tensors`` (no XNNPACK: its fused kernels keep nothing).

    Original tensors are found by aligning the two graphs from the inputs (:class:`_Walk`): a CONV_2D or
    DEPTHWISE_CONV_2D with a fused RELU6 holds the Clip's output (the Conv's is ``fused``), an ADD of two known
    tensors is the residual Add, a HARD_SWISH the HardSwish (or the Add/Clip/Mul/Div it is spelt as). Graph outputs
    the walk did not reach map by position, as onnx2tf keeps their order.
    """

    def __init__(self, path: Path, interpreter: Any, threads: int = 1, label: str = "tflite") -> None:
        """``interpreter``: the LiteRT (or tflite_runtime) ``interpreter`` module the adapter runs."""
        import warnings

        mod = interpreter

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
        details = {d["index"]: d for d in self.interp.get_tensor_details()}
        numel = {i: int(np.prod(d["shape"])) for i, d in details.items()}
        outs = [d["index"] for d in self.interp.get_output_details()]
        feeds = _input_map(self.interp.get_input_details(), index.inputs)
        held = _Walk(index, _tflite_ops(self.interp, self.path), numel).run(feeds, outs)
        if len(outs) == len(index.outputs):  # outputs the walk did not reach: onnx2tf keeps their order
            taken = {t for t, _ in held.values()}
            for t, name in zip(outs, index.outputs, strict=True):
                if name not in held and t not in taken:
                    held[name] = (t, "graph output")
        found: dict[str, Located] = {}
        for name, (t, code) in held.items():
            d = details[t]
            scale, zero = d["quantization"]
            found[name] = Located(
                str(t),
                float(scale) if scale and d["dtype"] != np.float32 else None,
                float(zero),
                nhwc=len(d["shape"]) == 4,
                note=f"{code} output {str(d['name']).split(';')[0]}",
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
