"""The artifact audit: after every compile, read back what was built and say whether it honours the spec.

A row's label (``int4-static-pc-wsym-minmax``) is a claim about its artifact. Quantizers and vendor compilers
silently do something else when a graph surprises them: ONNX Runtime quantizes a weight stored as a ``Constant``
node as an activation (per-tensor, asymmetric, 8-bit), a compiler keeps a layer in float, a 4-bit request
becomes 8-bit. The adapter reads its artifact into :class:`ArtifactFacts` (one :class:`WeightFact` per compute
node with a weight: its bit width, whether its scale is per-channel, whether its zero point is symmetric, whether
its activation input is quantized) and :func:`judge` compares those facts with the spec.

Rules (a *weight parameter* is one element of a Conv/ConvTranspose/MatMul/Gemm weight):

* float specs: no integer weight may remain (fp16 specs also want most weight parameters in fp16);
* integer specs: at least ``MIN_SHARE`` of the weight parameters at the spec's bit width, and among those, at
  most ``MAX_OFF`` with the other granularity or symmetry; static specs also want most quantized compute nodes
  to read a quantized activation; dynamic specs want activations quantized at run time.

Layers a backend legitimately keeps in float (its fallback list, ``exclude_nodes``) lower the share without
failing the audit as long as most parameters are at the spec's bits; the row carries the share either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AUDIT_VERSION = 1
MIN_SHARE = 0.5  # of weight parameters at the spec's bit width
MAX_OFF = 0.1  # of those, at most this share with the wrong granularity or symmetry
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass
class WeightFact:
    """One compute node's weight as built. ``bits``: 32 float, 16 fp16/bf16, else the integer width;
    ``per_channel``/``symmetric``: None where the artifact does not say; ``activation``: whether the node's
    activation input is quantized ("static", "dynamic") or not ("float"), None when unknown."""

    node: str
    op: str
    params: int
    bits: int
    per_channel: bool | None = None
    symmetric: bool | None = None
    activation: str | None = None
    channels: int = 0  # output channels (a 1-channel weight is both per-tensor and per-channel)


@dataclass
class ArtifactFacts:
    """What an adapter read back from its artifact."""

    reader: str
    weights: list[WeightFact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # op type → why the backend builds it another way than asked (e.g. QNN: no per-channel MatMul); quoted in a
    # mismatch's reason so the user learns the cause, never used to excuse it
    why: dict[str, str] = field(default_factory=dict)


@dataclass
class Audit:
    """The verdict on one cell: ``verdict`` is ``honoured``, ``mismatch`` or ``not audited``."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    reader: str = ""
    share: float = float("nan")  # weight parameters at the spec's bits, granularity and symmetry
    float_share: float = float("nan")  # weight parameters left in float
    quantized_nodes: int = -1
    float_nodes: int = -1
    bits: str = ""  # e.g. "4:93%, float:7%"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool | None:
        return None if self.verdict == "not audited" else self.verdict == "honoured"

    def label(self) -> str:
        """One line for the row's ``audit`` column."""
        if self.verdict == "honoured":
            return "honoured" + (f" ({self.reasons[0]})" if self.reasons else "")
        return f"{self.verdict}: {'; '.join(self.reasons)}" if self.reasons else self.verdict

    def row_fields(self) -> dict[str, Any]:
        return {
            "audit": self.label(),
            "audit_reader": self.reader,
            "audit_share": self.share,
            "audit_float_share": self.float_share,
            "audit_quantized_nodes": self.quantized_nodes,
            "audit_float_nodes": self.float_nodes,
            "audit_bits": self.bits,
        }

    def to_json(self) -> str:
        return json.dumps({"version": AUDIT_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> Audit | None:
        d = json.loads(text)
        if d.pop("version", None) != AUDIT_VERSION:
            return None
        return cls(**d)


def not_audited(reason: str) -> Audit:
    return Audit("not audited", [reason])


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _which(off: list[WeightFact], why: dict[str, str]) -> str:
    """ " (MatMul ×4: <the backend's reason>)": which compute ops a deviation hit, and why where the adapter knows."""
    ops: dict[str, int] = {}
    for w in off:
        ops[w.op] = ops.get(w.op, 0) + 1
    text = ", ".join(f"{op} ×{n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1]))
    reasons = [why[op] for op in ops if op in why]
    return f" ({text}{': ' + '; '.join(reasons) if reasons else ''})" if text else ""


def judge(spec: Any, facts: ArtifactFacts) -> Audit:
    """Compare an artifact's facts with ``spec`` (a :class:`~qtbench.harness.core.spec.QuantSpec`)."""
    ws = facts.weights
    total = sum(w.params for w in ws)
    audit = Audit("honoured", reader=facts.reader, notes=list(facts.notes))
    if not ws or total == 0:
        audit.verdict = "not audited"
        audit.reasons = ["the artifact has no Conv/MatMul/Gemm weight to check"]
        return audit
    by_bits: dict[int, int] = {}
    for w in ws:
        by_bits[w.bits] = by_bits.get(w.bits, 0) + w.params
    audit.bits = ", ".join(
        f"{'float' if b == 32 else 'fp16' if b == 16 else b}:{_pct(n / total)}"
        for b, n in sorted(by_bits.items(), key=lambda kv: -kv[1])
    )
    quantized = [w for w in ws if w.bits < 16]
    audit.quantized_nodes = len(quantized)
    audit.float_nodes = len(ws) - len(quantized)
    audit.float_share = sum(w.params for w in ws if w.bits >= 16) / total
    found = audit.bits
    if spec.is_float:
        audit.share = sum(w.params for w in ws if w.bits == spec.weight_bits) / total
        if quantized:
            audit.verdict = "mismatch"
            audit.reasons.append(f"{len(quantized)} compute node(s) have integer weights in a {spec.id} artifact")
        elif spec.weight_bits == 16 and audit.share < MIN_SHARE:
            audit.verdict = "mismatch"
            audit.reasons.append(f"only {_pct(audit.share)} of weight parameters are fp16 (found {found})")
        return audit
    at_bits = [w for w in quantized if w.bits == spec.weight_bits]
    bits_share = sum(w.params for w in at_bits) / total
    if bits_share < MIN_SHARE:
        audit.verdict = "mismatch"
        audit.reasons.append(
            f"{_pct(bits_share)} of weight parameters are {spec.weight_bits}-bit (found {found})"
            if at_bits
            else f"no {spec.weight_bits}-bit weight in the artifact (found {found})"
        )
    matching = at_bits
    per_channel = spec.granularity == "per-channel"
    judged = [w for w in at_bits if w.per_channel is not None and w.channels != 1]
    if judged:
        off = [w for w in judged if w.per_channel != per_channel]
        off_share = sum(w.params for w in off) / sum(w.params for w in judged)
        if off_share > MAX_OFF and spec.scaling != "weightonly":
            audit.verdict = "mismatch"
            wrong = "per-tensor" if per_channel else "per-channel"
            audit.reasons.append(
                f"{_pct(off_share)} of {spec.weight_bits}-bit weight parameters are {wrong}{_which(off, facts.why)}"
            )
        off_names = {w.node for w in off}
        matching = [w for w in matching if w.node not in off_names]
    sym = [w for w in at_bits if w.symmetric is not None]
    if sym:
        off = [w for w in sym if w.symmetric != spec.weight_symmetric]
        off_share = sum(w.params for w in off) / sum(w.params for w in sym)
        if off_share > MAX_OFF:
            audit.verdict = "mismatch"
            wrong = "asymmetric, with a non-zero zero point" if spec.weight_symmetric else "symmetric"
            audit.reasons.append(
                f"{_pct(off_share)} of {spec.weight_bits}-bit weight parameters are {wrong}{_which(off, facts.why)}"
            )
        off_names = {w.node for w in off}
        matching = [w for w in matching if w.node not in off_names]
    audit.share = sum(w.params for w in matching) / total
    acts = [w.activation for w in quantized if w.activation is not None]
    if acts and spec.scaling in ("static", "dynamic"):
        want = spec.scaling
        share = sum(a == want for a in acts) / len(acts)
        if share < MIN_SHARE:
            audit.verdict = "mismatch"
            seen = max(set(acts), key=acts.count)
            audit.reasons.append(f"activations are {seen} at {_pct(1 - share)} of quantized compute nodes, not {want}")
    elif acts and spec.scaling == "weightonly" and any(a != "float" for a in acts):
        audit.verdict = "mismatch"
        audit.reasons.append("activations are quantized in a weight-only spec")
    if audit.verdict == "honoured" and audit.float_nodes:
        audit.reasons.append(f"{audit.float_nodes} of {len(ws)} compute node(s) kept in float")
    return audit


# ---------------------------------------------------------------------------------------------------------------
# ONNX artifacts: QDQ, QOperator, dynamic (ConvInteger/MatMulInteger), MatMulNBits, fp16
# ---------------------------------------------------------------------------------------------------------------
_INT_BITS = {2: 8, 3: 8, 5: 16, 4: 16, 21: 4, 22: 4, 17: 8, 18: 8, 19: 8, 20: 8}  # TensorProto type → bits
_SIGNED = {3, 5, 22}
_FLOAT_BITS = {1: 32, 10: 16, 16: 16, 11: 64}


def audit_onnx(path: str | Path, reader: str = "onnx") -> ArtifactFacts:
    """Read a quantized (or float) ONNX graph: each compute node's weight bits, granularity, symmetry, and
    whether its activation input is quantized statically, dynamically or not at all."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=False)
    g = proto.graph
    base = Path(path).parent
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def const(name: str) -> Any:
        """The tensor behind ``name`` when it is constant: an initializer or a ``Constant`` node's value (exports
        that bypass intake, e.g. Paddle2ONNX's, keep weights as Constant nodes)."""
        t = inits.get(name)
        if t is None:
            c = producer.get(name)
            if c is not None and c.op_type == "Constant":
                t = next((a.t for a in c.attribute if a.name == "value"), None)
        return t

    def arr(name: str) -> np.ndarray | None:
        t = const(name)
        if t is None:
            return None
        if t.data_location == onnx.TensorProto.EXTERNAL:
            onnx.external_data_helper.load_external_data_for_tensor(t, str(base))
        return numpy_helper.to_array(t)

    def dims(name: str) -> list[int] | None:
        t = const(name)
        return list(t.dims) if t is not None else None

    def elem_type(name: str) -> int | None:
        t = const(name)
        return t.data_type if t is not None else None

    def zp_symmetric(zp: np.ndarray | None, etype: int) -> bool:
        if zp is None or zp.size == 0:
            return True
        z = zp.astype(np.int64)
        if etype in _SIGNED or etype == 21 + 1:
            return bool(np.all(z == 0))
        mid = (2 ** _INT_BITS.get(etype, 8)) / 2
        return bool(np.all((z == int(mid)) | (z == int(mid) - 1)))

    def dequantized(name: str) -> tuple[int, bool | None, bool | None, int] | None:
        """(bits, per_channel, symmetric, channels) when ``name`` is a DequantizeLinear output, else None."""
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        src = dq.input[0]
        scale = dims(dq.input[1]) if len(dq.input) > 1 else None
        zp_name = dq.input[2] if len(dq.input) > 2 else ""
        etype = elem_type(src)
        if etype is None:  # DQ ← QuantizeLinear ← float tensor: the Q's zero point (or uint8) gives the type
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                qzp = q.input[2] if len(q.input) > 2 else ""
                etype = elem_type(qzp) if qzp else 2
                zp_name = qzp or zp_name
        if etype is None:
            etype = elem_type(zp_name) if zp_name else 2
        zp = arr(zp_name) if zp_name else None
        size = int(np.prod(scale)) if scale is not None else 1
        per_channel = size > 1
        return _INT_BITS.get(etype or 2, 8), per_channel, zp_symmetric(zp, etype or 2), size

    def activation_of(name: str) -> str:
        p = producer.get(name)
        if p is None:
            return "float"
        if p.op_type == "DequantizeLinear":
            q = producer.get(p.input[0])
            return "dynamic" if q is not None and q.op_type == "DynamicQuantizeLinear" else "static"
        if p.op_type == "DynamicQuantizeLinear":
            return "dynamic"
        return "float"

    facts = ArtifactFacts(reader)
    for n in g.node:
        op = n.op_type
        name = n.name or (n.output[0] if n.output else op)
        if op in COMPUTE_OPS and len(n.input) > 1:
            w = n.input[1]
            dq = dequantized(w)
            if dq is not None:
                src = producer[w].input[0]
                shape = dims(src) or dims(producer[src].input[0] if src in producer else "") or []
                params = int(np.prod(shape)) if shape else 0
                if not params:
                    continue
                bits, pc, sym, size = dq
                channels = _channels(op, n, shape)
                facts.weights.append(
                    WeightFact(name, op, params, bits, pc, sym, activation_of(n.input[0]), channels=channels)
                )
            elif const(w) is not None:
                t = const(w)
                params = int(np.prod(t.dims)) if t.dims else 1
                if op == "MatMul" and len(t.dims) < 2:
                    continue
                facts.weights.append(WeightFact(name, op, params, _FLOAT_BITS.get(t.data_type, 32), activation="float"))
            elif producer.get(w) is not None and producer[w].op_type == "Cast":
                src = producer[w].input[0]
                t = const(src)
                if t is not None:  # fp16 weight cast up (keep_io_types graphs)
                    facts.weights.append(
                        WeightFact(name, op, int(np.prod(t.dims)), _FLOAT_BITS.get(t.data_type, 32), activation="float")
                    )
        elif op in ("QLinearConv", "QLinearMatMul") and len(n.input) > 5:
            w, ws_name, wz = n.input[3], n.input[4], n.input[5]
            shape = dims(w) or []
            etype = elem_type(w) or 2
            size = int(np.prod(dims(ws_name) or [1]))
            facts.weights.append(
                WeightFact(
                    name,
                    op,
                    int(np.prod(shape)) if shape else 0,
                    _INT_BITS.get(etype, 8),
                    size > 1,
                    zp_symmetric(arr(wz), etype),
                    "static",
                    channels=shape[0] if shape and op == "QLinearConv" else (shape[-1] if shape else 0),
                )
            )
        elif op in ("ConvInteger", "MatMulInteger") and len(n.input) > 1:
            w = n.input[1]
            shape = dims(w) or []
            etype = elem_type(w) or 2
            wz = arr(n.input[3]) if len(n.input) > 3 and n.input[3] else None
            facts.weights.append(
                WeightFact(
                    name,
                    op,
                    int(np.prod(shape)) if shape else 0,
                    _INT_BITS.get(etype, 8),
                    None,  # the scale lives in a Mul after the node
                    zp_symmetric(wz, etype),
                    activation_of(n.input[0]) if producer.get(n.input[0]) is not None else "dynamic",
                )
            )
        elif op == "MatMulNBits":
            attrs = {a.name: a.i for a in n.attribute}
            facts.weights.append(
                WeightFact(name, op, attrs.get("K", 0) * attrs.get("N", 0), attrs.get("bits", 4), None, None, "float")
            )
    facts.weights = [w for w in facts.weights if w.params > 0]
    return facts


def _channels(op: str, node: Any, shape: list[int]) -> int:
    if not shape:
        return 0
    if op == "Conv":
        return shape[0]
    if op == "ConvTranspose":
        return shape[1] if len(shape) > 1 else shape[0]
    if op == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        return shape[0]
    return shape[-1]


def cached(workdir: Path, spec: Any, read: Any) -> Audit:
    """The audit of the artifact in ``workdir`` for ``spec``, computed once per cache entry (``audit.json``
    beside the artifact): ``read()`` returns :class:`ArtifactFacts`, or a string saying why it cannot."""
    import os

    record = Path(workdir) / f"audit-{spec.id}.json"
    if record.is_file():
        try:
            found = Audit.from_json(record.read_text())
            if found is not None:
                return found
        except (OSError, ValueError, TypeError):
            pass
    try:
        facts = read()
    except Exception as exc:  # noqa: BLE001 - an unreadable artifact is "not audited", never a failed cell
        text = str(exc).strip().splitlines()
        return not_audited(
            f"the artifact could not be read back ({type(exc).__name__}: {text[0][:160] if text else ''})"
        )
    audit = not_audited(facts) if isinstance(facts, str) else judge(spec, facts)
    try:
        tmp = record.with_name(f".tmp-audit-{os.getpid()}.json")
        tmp.write_text(audit.to_json())
        os.replace(tmp, record)
    except OSError:
        pass
    return audit
