"""TFLite localize taps on the patterns onnx2tf fuses: Conv + Clip(0, 6) (ReLU6), depthwise Conv, residual Add and
HardSwish (the op, x·HardSigmoid(x), and x·Clip(x+3, 0, 6)/6 spelt out). Every tensor the .tflite holds is compared
(above 120 dB on the float32 model, where a wrong mapping would be near 0 dB); the ones it fuses away say into what.

The models are converted here with onnx2tf + TensorFlow, in the interpreter $QTBENCH_TF_PYTHON names (skipped
without it, like the other sdk tests): one process converts all of them, about 15 s on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.sdk

INT8 = "int8-static-pc-wsym-minmax"  # the spec full_integer_quant (per-channel) stands for
SHAPE = (3, 16, 16)
CLASSES = 5
SCRIPTS = Path(__file__).parents[1] / "scripts"


# -- the pattern models: tiny, seeded, dynamic batch (onnx2tf then fixes it to 1 itself) ----------------------------
class _Graph:
    """Nodes and weights of a small NCHW CNN built node by node."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}

    def const(self, name: str, value: float) -> str:
        self.inits[name] = np.array(value, np.float32)
        return name

    def conv(self, name: str, x: str, cin: int, cout: int, group: int = 1) -> str:
        self.inits[f"{name}_w"] = self.rng.normal(0, 0.5, (cout, cin // group, 3, 3)).astype(np.float32)
        self.inits[f"{name}_b"] = self.rng.normal(0, 0.1, cout).astype(np.float32)
        self.nodes.append(
            helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name, pads=[1, 1, 1, 1], group=group)
        )
        return name

    def op(self, op_type: str, name: str, inputs: list[str], **attrs: float) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def relu6(self, name: str, x: str) -> str:
        return self.op("Clip", name, [x, self.const("zero", 0.0), self.const("six", 6.0)])

    def save(self, path: Path, last: str, channels: int) -> Path:
        """GlobalAveragePool → Flatten → Gemm head on ``last``, checked and written to ``path``."""
        self.inits["fc_w"] = self.rng.normal(0, 1.0, (CLASSES, channels)).astype(np.float32)
        self.inits["fc_b"] = np.zeros(CLASSES, np.float32)
        self.op("GlobalAveragePool", "pool", [last])
        self.op("Flatten", "flat", ["pool"])
        self.op("Gemm", "logits", ["flat", "fc_w", "fc_b"], transB=1)
        graph = helper.make_graph(
            self.nodes,
            path.stem,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
            [numpy_helper.from_array(a, n) for n, a in self.inits.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return path


def relu6_cnn(path: Path) -> Path:
    """conv1 → Clip(0, 6) → conv2 → Clip(0, 6): TFLite fuses each Clip into its CONV_2D as RELU6."""
    g = _Graph(0)
    g.relu6("clip1", g.conv("conv1", "input", 3, 8))
    g.relu6("clip2", g.conv("conv2", "clip1", 8, 8))
    return g.save(path, "clip2", 8)


def depthwise_cnn(path: Path) -> Path:
    """conv1 → ReLU6 → depthwise conv (group = channels) → ReLU6 → pointwise-ish conv: a MobileNet block."""
    g = _Graph(1)
    g.relu6("clip1", g.conv("conv1", "input", 3, 8))
    g.relu6("clip2", g.conv("dw", "clip1", 8, 8, group=8))
    g.conv("pw", "clip2", 8, 8)
    return g.save(path, "pw", 8)


def residual_cnn(path: Path) -> Path:
    """x = ReLU6(conv1); add1 = x + conv2(x) (MobileNetV2: no activation); add2 = add1 + conv3(add1) → Relu (ResNet:
    TFLite fuses the Relu into the ADD)."""
    g = _Graph(2)
    g.relu6("clip1", g.conv("conv1", "input", 3, 8))
    g.op("Add", "add1", ["clip1", g.conv("conv2", "clip1", 8, 8)])
    g.op("Add", "add2", ["add1", g.conv("conv3", "add1", 8, 8)])
    g.op("Relu", "relu", ["add2"])
    return g.save(path, "relu", 8)


def hardswish_cnn(path: Path) -> Path:
    """The three spellings of HardSwish: the op (one HARD_SWISH), x·HardSigmoid(x) (onnx2tf: MUL, ADD, RELU_0_TO_1,
    MUL) and x·Clip(x+3, 0, 6)/6 as PyTorch exports without opset 14 (TFLite fuses it back into one HARD_SWISH)."""
    g = _Graph(3)
    g.op("HardSwish", "hswish1", [g.conv("conv1", "input", 3, 8)])
    c2 = g.conv("conv2", "hswish1", 8, 8)
    g.op("Mul", "hswish2", [c2, g.op("HardSigmoid", "hsig2", [c2], alpha=1.0 / 6.0, beta=0.5)])
    c3 = g.conv("conv3", "hswish2", 8, 8)
    plus3 = g.op("Add", "plus3", [c3, g.const("three", 3.0)])
    clip = g.op("Clip", "clip3", [plus3, g.const("zero", 0.0), g.const("six", 6.0)])
    times = g.op("Mul", "times3", [c3, clip])
    g.op("Div", "hswish3", [times, g.const("sixth", 6.0)])
    return g.save(path, "hswish3", 8)


MODELS: dict[str, Callable[[Path], Path]] = {
    "relu6": relu6_cnn,
    "depthwise": depthwise_cnn,
    "residual": residual_cnn,
    "hardswish": hardswish_cnn,
}

_CONVERT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from convert_tflite import convert
out = Path(sys.argv[2])
for name in sys.argv[3:]:
    convert(out / f"{name}.onnx", out / "calib.npz", out, "per-channel")
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with each pattern model and its .tflite variants beside it (pre-converted files, as the backend
    finds them), all converted in one TensorFlow process."""
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT: pip install 'qtbench[tflite]'")
    py = os.environ.get("QTBENCH_TF_PYTHON")
    if not py:
        pytest.skip("set QTBENCH_TF_PYTHON to a Python with onnx2tf and tensorflow to test TFLite taps")
    d = tmp_path_factory.mktemp("tflite_patterns")
    for name, build in MODELS.items():
        build(d / f"{name}.onnx")
    rng = np.random.default_rng(2)
    np.savez(d / "calib.npz", input=rng.random((16, *SHAPE), dtype=np.float32))
    np.savez(
        d / "eval.npz",
        input=rng.random((8, *SHAPE), dtype=np.float32),
        labels=rng.integers(0, CLASSES, 8).astype(np.int64),
    )
    proc = subprocess.run(
        [py, "-c", _CONVERT, str(SCRIPTS), str(d), *MODELS],
        cwd=d,  # onnx2tf writes its scratch files into the working directory
        capture_output=True,
        text=True,
        timeout=900,
    )
    made = {p.name for p in d.glob("*.tflite")}
    missing = [f"{n}.{v}.tflite" for n in MODELS for v in ("float32", "full_integer_quant")]
    missing = [m for m in missing if m not in made]
    assert proc.returncode == 0 and not missing, (missing, proc.stderr[-3000:])
    return d


def _localize(folder: Path, name: str) -> dict[str, dict]:
    """Layer rows of ``name`` on tflite at fp32 and INT8, as {spec: {tensor: row}}."""
    from qtbench.harness.analysis.localize import LocalizeSettings, localize

    cfg = {
        "name": f"taps-{name}",
        "models": [{"path": str(folder / f"{name}.onnx"), "name": name}],
        "evaluation": {"path": str(folder / "eval.npz")},
        "calibration": {"path": str(folder / "calib.npz")},
        "backends": ["tflite"],
        "specs": ["fp32", INT8],
        "measure": {"warmup": 1, "iterations": 3, "min_duration_s": 0},
        "run": {"results_dir": str(folder / "results"), "isolate": False},
    }
    run = localize(cfg, specs=["fp32", INT8], settings=LocalizeSettings(4))
    s = run.summary.set_index("spec_id")
    for spec in ("fp32", INT8):
        assert s.loc[spec, "status"] == "ok" and s.loc[spec, "kind"] == "per layer", s.loc[spec].to_dict()
    lay = run.layers
    return {spec: {r["tensor"]: r for r in lay[lay["spec_id"] == spec].to_dict("records")} for spec in ("fp32", INT8)}


def _check(rows: dict[str, dict], compared: set[str], fused: dict[str, str], covers: dict[str, list[str]]) -> None:
    """``compared`` compared above 120 dB at fp32 and also (quantized: below 60 dB) at INT8; each of ``fused`` fused
    into the named node; ``covers``: the original nodes a compared tensor stands for."""
    fp, q = rows["fp32"], rows[INT8]
    got = {t for t, r in fp.items() if r["status"] == "compared"}
    assert got == compared | {"logits"}, {t: (r["status"], r["note"]) for t, r in fp.items()}
    low = {t: fp[t]["sqnr_db"] for t in got if not fp[t]["sqnr_db"] > 120}
    assert not low, low  # the float model matches to rounding: a wrong tensor would be near 0 dB
    assert {t for t, r in q.items() if r["status"] == "compared"} == got  # the INT8 file has the same graph
    assert all(q[t]["sqnr_db"] < 60 for t in got), {t: q[t]["sqnr_db"] for t in got}
    for tensor, into in fused.items():  # (every node here is named as its output tensor)
        note = fp[tensor]["note"]
        assert fp[tensor]["status"] == "fused" and f" {into} (" in note, fp[tensor]
        assert ("(compared at its output)" in note) == (into in got), note
    for tensor, nodes in covers.items():
        assert json.loads(fp[tensor]["covers"]) == nodes, (tensor, fp[tensor]["covers"])


def test_relu6_is_compared_at_the_fused_conv(converted: Path) -> None:
    rows = _localize(converted, "relu6")
    _check(
        rows,
        {"clip1", "clip2", "pool", "flat"},
        {"conv1": "clip1", "conv2": "clip2"},
        {"clip1": ["conv1", "clip1"], "clip2": ["conv2", "clip2"]},
    )
    assert rows["fp32"]["clip2"]["note"].startswith("CONV_2D output")


def test_depthwise_conv_is_compared(converted: Path) -> None:
    rows = _localize(converted, "depthwise")
    _check(
        rows,
        {"clip1", "clip2", "pw", "pool", "flat"},
        {"conv1": "clip1", "dw": "clip2"},
        {"clip2": ["dw", "clip2"], "pw": ["pw"]},
    )
    assert rows["fp32"]["clip2"]["note"].startswith("DEPTHWISE_CONV_2D output")


def test_residual_adds_are_compared(converted: Path) -> None:
    rows = _localize(converted, "residual")
    _check(
        rows,
        {"clip1", "conv2", "add1", "conv3", "relu", "pool", "flat"},
        {"conv1": "clip1", "add2": "relu"},
        {"add1": ["add1"], "relu": ["add2", "relu"]},
    )
    assert rows["fp32"]["add1"]["note"].startswith("ADD output")


def test_hardswish_spellings_are_compared(converted: Path) -> None:
    rows = _localize(converted, "hardswish")
    _check(
        rows,
        {"conv1", "hswish1", "conv2", "hsig2", "hswish2", "conv3", "hswish3", "pool", "flat"},
        {"plus3": "clip3", "clip3": "times3", "times3": "hswish3"},
        {"hswish1": ["hswish1"], "hswish3": ["plus3", "clip3", "times3", "hswish3"]},
    )
    fp = rows["fp32"]
    assert fp["hswish1"]["note"].startswith("HARD_SWISH output") and fp["hswish3"]["note"].startswith("HARD_SWISH")
    assert fp["hsig2"]["note"].startswith("RELU_0_TO_1 output") and fp["hswish2"]["note"].startswith("MUL output")
