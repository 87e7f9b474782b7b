"""Adapters record what actually ran, fail loudly when a compiler fails, and leave the user's files alone.

Each test pins one defect found by hand: a label that said more than the runtime did (INT4 granularity, NNCF's
per-layer bit widths, TFLite fp16, simnpu's size estimate), constants counted as host fallbacks, pre-converted
.tflite files reused for specs they cannot honour, compiler errors recorded as "SDK missing", ORT's quantizer
writing beside the source model, third-party chatter on the console, and executable paths from sweep files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtbench.backends.base import ModelInput
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

from models import tiny_data

FIX = Path(__file__).parent / "fixtures"


def _input(path: Path) -> ModelInput:
    facts = model_facts(path)
    return ModelInput(path, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)


def matmul_model(path: Path, k: int = 24, n: int = 6) -> Path:
    """x[N,k] → MatMul W[k,n] → Relu → MatMul W2[n,3]: what ORT's MatMulNBits quantizer rewrites."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (k, n)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (n, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@contextlib.contextmanager
def read_only_dir(path: Path):
    """Make ``path`` unwritable even for root (chattr +i), or skip where the filesystem does not allow it."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is unavailable here: cannot make a read-only folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# -- item 6: ORT quantizes a copy in the cell's workdir -----------------------------------------------------------
def test_ort_int8_works_with_a_read_only_model_folder(tmp_path: Path, tiny_model: Path):
    from qtbench.backends.ort import OrtBackend

    models = tmp_path / "models"
    models.mkdir()
    src = models / "tiny.onnx"
    shutil.copy(tiny_model, src)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 16, seed=2, labels=False), ["input"], None)
    x = load_dataset(tiny_data(tmp_path / "e.npz", 4, seed=3), ["input"]).batch(0, 4)
    with read_only_dir(models):
        with pytest.raises(OSError):
            (models / "probe").write_text("x")  # the folder really is read-only
        for spec_id in ("int8-static-pc-wsym-entropy", "int8-dynamic-pc-wsym"):
            spec = QuantSpec.parse(spec_id)
            with OrtBackend().compile(_input(src), spec, calib, tmp_path / "art" / spec.id) as c:
                assert np.isfinite(c.infer(x)[0]).all()
            assert len(list((tmp_path / "art" / spec.id).glob("source-*.onnx"))) == 1
    assert sorted(p.name for p in models.iterdir()) == ["tiny.onnx"]


# -- item 2: INT4 weight-only says which grouping ran ------------------------------------------------------------
def test_ort_int4_weightonly_is_per_channel_by_default_and_records_groups(tmp_path: Path):
    from qtbench.backends.ort import OrtBackend

    model = _input(matmul_model(tmp_path / "mm.onnx", k=24, n=6))
    x = {"x": np.random.default_rng(1).random((4, 24), dtype=np.float32)}
    spec = QuantSpec.parse("int4-weightonly-pc-sym")
    with OrtBackend().compile(model, spec, None, tmp_path / "pc") as c:
        c.infer(x)
        assert c.info.extra["int4_grouping"] == "per-channel"
        assert c.info.extra["int4_block_size"] >= 24  # one block spans K
        art = onnx.load(str(c.info.artifact_path)).graph
    scales = {i.name: list(i.dims) for i in art.initializer if "scale" in i.name}
    assert scales and all(int(np.prod(d)) in (6, 3) for d in scales.values()), scales  # one scale per column
    with OrtBackend({"int4_block_size": 16}).compile(model, spec, None, tmp_path / "g16") as c:
        assert c.info.extra["int4_grouping"] == "group-16" and c.info.extra["int4_block_size"] == 16
        assert any("not per output channel" in n for n in c.info.notes)
    assert "not per tensor" in OrtBackend().supports(QuantSpec.parse("int4-weightonly-pt-sym"))
    from qtbench.harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match="int4_block_size"):
        OrtBackend({"int4_block_size": 24})


# -- item 3: simnpu folds Constant nodes before counting operators -------------------------------------------------
def depthwise_model(path: Path, constants: bool) -> Path:
    """Depthwise + pointwise conv net whose weights and reshape target are Constant nodes (as torch exports
    them) or, with ``constants=False``, the same values as initializers."""
    rng = np.random.default_rng(5)
    dw = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    pw = rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32)
    fc = rng.normal(0, 0.5, (5, 8)).astype(np.float32)
    shape = np.array([-1, 8], np.int64)
    values = {"dw": dw, "pw": pw, "fc": fc, "shape": shape}
    nodes, inits = [], []
    for name, value in values.items():
        if constants:
            nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        else:
            inits.append(numpy_helper.from_array(value, name))
    nodes += [
        helper.make_node("Conv", ["x", "dw"], ["c1"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "pw"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_simnpu_does_not_count_constant_nodes_as_host_fallbacks(tmp_path: Path):
    from qtbench.backends.simnpu import SimNpuBackend

    rng = np.random.default_rng(6)
    np.savez(tmp_path / "c.npz", x=rng.random((16, 4, 8, 8), dtype=np.float32))
    calib = load_dataset(tmp_path / "c.npz", ["x"], None)
    x = {"x": rng.random((3, 4, 8, 8), dtype=np.float32)}
    spec = QuantSpec.parse("int8-static-pc-wsym-minmax")
    got = {}
    for constants in (True, False):
        model = _input(depthwise_model(tmp_path / f"dw{int(constants)}.onnx", constants))
        with SimNpuBackend({"profile": "hailo8"}).compile(model, spec, calib, tmp_path / f"w{int(constants)}") as c:
            got[constants] = (c.info, c.infer(x)[0])
    with_c, without = got[True][0], got[False][0]
    assert with_c.coverage == without.coverage == {"npu": 7}  # 7 compute nodes, no Constant among them
    assert "Constant" not in with_c.fallback_ops and with_c.extra["partitions"] == 0
    assert with_c.est_latency_ms == pytest.approx(without.est_latency_ms)
    assert any("folded 4 constant node(s)" in n for n in with_c.notes)
    np.testing.assert_allclose(got[True][1], got[False][1], rtol=1e-6, atol=1e-6)  # weights quantized alike


# -- item 2: simnpu's size is an estimate, kept out of the measured column ---------------------------------------
def test_simnpu_artifact_size_is_labelled_as_an_estimate(tmp_path: Path, tiny_model: Path):
    from qtbench.backends.simnpu import SimNpuBackend

    calib = load_dataset(tiny_data(tmp_path / "c.npz", 16, seed=2, labels=False), ["input"], None)
    spec = QuantSpec.parse("int8-static-pc-wsym-minmax")
    with SimNpuBackend({"profile": "hailo8"}).compile(_input(tiny_model), spec, calib, tmp_path / "w") as c:
        assert c.info.artifact_bytes is None  # the row's artifact_bytes becomes -1 (not measured)
        n_weights = 8 * 1 * 9 + 8 * 8 * 9 + 5 * 8
        n_other = 8 + 8 + 5  # biases at 32 bits
        assert c.info.extra["est_artifact_bytes"] == (n_weights * 8 + n_other * 32) // 8
        assert "estimated" in c.info.extra["est_artifact_source"]
        assert any("artifact_bytes not measured" in n for n in c.info.notes)


# -- item 2: TFLite fp16 says it computed in fp32 -------------------------------------------------------------------
def _tflite_setup(tmp_path: Path) -> tuple[ModelInput, Path]:
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT: pip install 'qtbench[tflite]'")
    d = tmp_path / "m"
    d.mkdir()
    for f in FIX.glob("tiny*"):
        shutil.copy(f, d / f.name)
    return _input(d / "tiny.onnx"), d


def test_tflite_fp16_row_records_fp32_compute_and_sha(tmp_path: Path):
    from qtbench.backends.tflite import TfliteBackend

    model, d = _tflite_setup(tmp_path)
    with TfliteBackend().compile(model, QuantSpec("fp16"), None, tmp_path / "fp16") as c:
        assert c.info.extra["executed_precision"] == "float32"
        assert any("arithmetic is fp32" in n for n in c.info.notes)
        import hashlib

        assert c.info.extra["tflite_sha256"] == hashlib.sha256((d / "tiny.float16.tflite").read_bytes()).hexdigest()
    with TfliteBackend().compile(model, QuantSpec.parse("int8-static-pc-wsym-minmax"), None, tmp_path / "i8") as c:
        assert c.info.extra["executed_precision"] == "int8"
        assert c.info.extra["calibration"] == "external (pre-converted file)"
        assert any("calibrated externally" in n for n in c.info.notes)


# -- item 4: a pre-converted .tflite runs for its one canonical spec ----------------------------------------------
def test_pre_converted_tflite_refuses_specs_it_cannot_honour(tmp_path: Path):
    from qtbench.backends.tflite import CANONICAL, TfliteBackend
    from qtbench.backends.vela import VelaBackend
    from qtbench.harness.core.errors import UnsupportedSpec

    model, d = _tflite_setup(tmp_path)
    n64 = QuantSpec.parse("int8-static-pc-wsym-minmax-n64")
    with pytest.raises(UnsupportedSpec, match=r"pre-converted.*int8-static-pc-wsym-minmax only"):
        TfliteBackend().compile(model, n64, None, tmp_path / "n64")
    with pytest.raises(UnsupportedSpec, match=r"int8-static-pt-wsym-minmax only"):
        TfliteBackend().compile(model, QuantSpec.parse("int8-static-pt-wsym-minmax-n32"), None, tmp_path / "pt32")
    assert CANONICAL["full_integer_quant"].id == "int8-static-pc-wsym-minmax"
    # the cell key sees the file: replacing the .tflite changes what artifact_inputs reports
    canon = QuantSpec.parse("int8-static-pc-wsym-minmax")
    before = TfliteBackend().artifact_inputs(model.path, canon)
    assert list(before) == ["tiny.full_integer_quant.tflite"]
    assert VelaBackend().artifact_inputs(model.path, canon) == before
    shutil.copy(d / "tiny.full_integer_quant_pt.tflite", d / "tiny.full_integer_quant.tflite")
    assert TfliteBackend().artifact_inputs(model.path, canon) != before


def test_tflite_unavailable_reason_names_ai_edge_litert(monkeypatch):
    import sys

    from qtbench.backends.tflite import TfliteBackend

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    av = TfliteBackend().availability()
    assert not av.available
    assert "ai-edge-litert" in av.reason and "pip install 'qtbench[tflite]'" in av.reason
    assert "tflite_runtime" not in av.reason


# -- item 5: compiler failures are failed cells with the compiler's message ---------------------------------------
def test_compile_error_is_a_failed_cell_not_unavailable(monkeypatch):
    import qtbench.harness.run.cell as cell
    from qtbench.harness.core.errors import BackendUnavailable, CompileError

    assert not issubclass(CompileError, BackendUnavailable)

    def boom(job, scoring=None):
        raise CompileError("vela failed on m.tflite (exit 1): Error: unsupported op")

    monkeypatch.setattr(cell, "_run_cell", boom)
    result = cell.run_cell(None)
    assert result.status == "failed" and "unsupported op" in result.message


@pytest.mark.skipif(__import__("importlib").util.find_spec("ethosu") is None, reason="ethos-u-vela not installed")
def test_vela_rejecting_a_file_raises_compile_error(tmp_path: Path):
    from qtbench.backends.vela import VelaBackend
    from qtbench.harness.core.errors import CompileError

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(CompileError, match=r"vela failed on bad\.tflite \(exit"):
        VelaBackend()._vela(bad, tmp_path)
    assert (tmp_path / "vela.log").is_file()


def _fake_rknn_python(tmp_path: Path, build_reply: dict) -> Path:
    """An executable that speaks the rknn worker protocol: hello ok, build answers ``build_reply``."""
    import sys

    script = tmp_path / "fake_worker.py"
    script.write_text(
        "import json, os, sys\n"
        "out = os.fdopen(int(sys.argv[-1]), 'w', buffering=1)\n"
        "for line in sys.stdin:\n"
        "    cmd = json.loads(line)['cmd']\n"
        "    if cmd == 'hello':\n"
        "        out.write(json.dumps({'ok': True, 'rknn_toolkit2': '0', 'numpy': '0'}) + '\\n')\n"
        "    elif cmd == 'build':\n"
        f"        out.write(json.dumps({build_reply!r}) + '\\n')\n"
        "    else:\n"
        "        out.write(json.dumps({'ok': True}) + '\\n'); break\n"
    )
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    py = env / "python"
    py.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    py.chmod(0o755)
    return py


def test_rknn_build_failure_is_a_compile_error_with_the_toolkit_message(tmp_path: Path, tiny_model: Path):
    from qtbench.backends.rknn import RknnBackend
    from qtbench.harness.core.errors import CompileError

    py = _fake_rknn_python(tmp_path, {"ok": False, "error": "RuntimeError: rknn.build failed (-1)"})
    with pytest.raises(CompileError, match=r"rknn-toolkit2 build failed: rknn build: RuntimeError: rknn\.build"):
        RknnBackend({"python": str(py)}).compile(_input(tiny_model), QuantSpec("fp16"), None, tmp_path / "w")


# -- item 2: OpenVINO INT4 weight-only records the formats NNCF applied per layer ---------------------------------
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("nncf") is None, reason="needs NNCF: pip install 'qtbench[openvino]'"
)
def test_openvino_int4_weightonly_records_per_layer_bit_widths(tmp_path: Path):
    from qtbench.backends.openvino import OpenVinoBackend
    from qtbench.harness.core.errors import UnsupportedSpec

    from models import tiny_mlp

    spec = QuantSpec.parse("int4-weightonly-pc-sym")
    with OpenVinoBackend().compile(_input(tiny_mlp(tmp_path / "mlp.onnx")), spec, None, tmp_path / "ov") as c:
        wc = c.info.extra["weight_compression"]
        notes = "; ".join(c.info.notes)
    # all_layers: both MatMuls and the classifier's Gemm in int4, nothing left in fp32
    assert wc["by_mode"]["int4_sym"]["layers"] == 3 and wc["by_mode"]["int4_sym"]["share"] == pytest.approx(1.0)
    assert "int4_sym to 3 layer(s)" in notes and "keep fp32" not in notes
    # the demo ResNet: NNCF would put the classifier in int4 and every convolution in int8_asym (>90% of the
    # weights), an INT8 model under an INT4 label: skipped with the share it would have had
    demo = Path(__file__).parents[1] / "harness" / "demo" / "fashion14_resnet_fp.onnx"
    with pytest.raises(UnsupportedSpec, match=r"keeps convolutions at 8 bit: [0-9]% of this model's weights"):
        OpenVinoBackend().compile(_input(demo), spec, None, tmp_path / "ov-demo")


# -- item 7: third-party chatter goes to the cell's log, not the console ------------------------------------------
QUIET_SCRIPT = r"""
import os, sys, shutil
from pathlib import Path
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import numpy as np
from qtbench.backends.base import quiet, ModelInput
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec
work = Path({work!r})
with quiet(work / "q.log"):
    os.write(1, b"c-level stdout\n"); os.write(2, b"c-level stderr\n"); print("python print")
print("after quiet")
def inp(p):
    f = model_facts(p)
    return ModelInput(p, "sha", f.input_names, f.output_names, f.dynamic_batch)
x = {{"input": np.zeros((3, 1, 8, 8), np.float32)}}
if {tflite}:
    from qtbench.backends.tflite import TfliteBackend
    with TfliteBackend().compile(inp(Path({fix!r}) / "tiny.onnx"), QuantSpec("fp32"), None, work / "t") as c:
        c.infer(x)
if {nncf}:
    from qtbench.backends.openvino import OpenVinoBackend
    from models import tiny_mlp
    m = tiny_mlp(work / "tiny.onnx")
    with OpenVinoBackend().compile(inp(m), QuantSpec.parse("int4-weightonly-pc-sym"), None, work / "ov") as c:
        c.infer(x)
if {qnn}:
    from qtbench.backends.qnn import QnnBackend
    from qtbench.harness.core.data import load_dataset
    from models import tiny_data
    calib = load_dataset(tiny_data(work / "c.npz", 8, labels=False), ["input"], None)
    spec = QuantSpec.parse("int8-static-pc-wsym-minmax")
    with QnnBackend().compile(inp(Path({fix!r}) / "tiny.onnx"), spec, calib, work / "qnn") as c:
        c.infer({{"input": x["input"][:1]}})
print("done")
"""


def test_sdk_chatter_is_captured_into_the_workdir_log(tmp_path: Path):
    import importlib.util
    import sys

    has_tflite = importlib.util.find_spec("ai_edge_litert") is not None
    has_nncf = importlib.util.find_spec("nncf") is not None
    has_qnn = importlib.util.find_spec("onnxruntime_qnn") is not None
    root = Path(__file__).parents[1]
    script = QUIET_SCRIPT.format(
        root=str(root),
        tests=str(root / "tests"),
        work=str(tmp_path),
        fix=str(FIX),
        tflite=has_tflite,
        nncf=has_nncf,
        qnn=has_qnn,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["after quiet", "done"], proc.stdout
    assert proc.stderr == "", proc.stderr
    log = (tmp_path / "q.log").read_text()
    assert "c-level stdout" in log and "c-level stderr" in log and "python print" in log
    if has_tflite:
        assert "XNNPACK" in (tmp_path / "t" / "tflite.log").read_text()
    if has_nncf:
        assert "int4" in (tmp_path / "ov" / "nncf.log").read_text()


# -- item 8: executable paths from untrusted sweep files ----------------------------------------------------------
@pytest.mark.parametrize(
    ("slug", "key"),
    [
        ("tflite", "converter_python"),
        ("tflite", "delegate"),
        ("vela", "converter_python"),
        ("rknn", "python"),
        ("nxp", "delegate"),
        ("edgetpu", "delegate"),
    ],
)
def test_untrusted_sweep_files_cannot_name_executables(monkeypatch, tmp_path: Path, slug, key):
    from qtbench import backends
    from qtbench.harness.core.errors import ConfigError

    exe = tmp_path / "bin" / "tool"
    monkeypatch.delenv("QTBENCH_TRUSTED", raising=False)
    monkeypatch.delenv("QTBENCH_ALLOWED_EXECUTABLES", raising=False)
    backends.create(slug, {key: str(exe)})  # trusted by default: the feature works as before
    monkeypatch.setenv("QTBENCH_TRUSTED", "0")
    with pytest.raises(ConfigError, match=rf"^backends\.{slug}\.options\.{key}: .*untrusted.*QTBENCH_ALLOWED"):
        backends.create(slug, {key: str(exe)})
    backends.create(slug)  # options left at their defaults are fine
    monkeypatch.setenv("QTBENCH_ALLOWED_EXECUTABLES", str(tmp_path / "bin"))  # the operator's allow-list
    backends.create(slug, {key: str(exe)})
    monkeypatch.setenv("QTBENCH_TRUSTED", "maybe")
    with pytest.raises(ConfigError, match=r"QTBENCH_TRUSTED='maybe'"):
        backends.create(slug, {key: str(exe)})


def test_cli_untrusted_flag_refuses_the_key_in_one_line(tmp_path: Path):
    import sys

    import yaml

    from models import tiny_sweep

    marker = tmp_path / "ran"
    tool = tmp_path / "convert.sh"
    tool.write_text(f"#!/bin/sh\ntouch {marker}\n")
    tool.chmod(0o755)
    cfg = tiny_sweep(tmp_path, backends=[{"name": "tflite", "options": {"converter_python": str(tool)}}])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTBENCH_")} | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "qtbench", "sweep", str(tmp_path / "s.yaml"), "--untrusted", "--no-report", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "backends.tflite.options.converter_python" in err[0] and "untrusted" in err[0]
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_rknn_probe_never_runs_the_worker_interpreter(monkeypatch, tmp_path: Path):
    from qtbench.backends.rknn import RknnBackend

    marker = tmp_path / "ran"
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    py = env / "bin" / "python"
    py.write_text(f"#!/bin/sh\ntouch {marker}\n")
    py.chmod(0o755)
    monkeypatch.setenv("QTBENCH_RKNN_PYTHON", str(py))
    av = RknnBackend().availability()
    assert not av.available and "no rknn-toolkit2 installed" in av.reason
    site = env / "lib" / "python3.11" / "site-packages"
    (site / "rknn_toolkit2-2.5.0.dist-info").mkdir(parents=True)
    (site / "numpy-1.26.4.dist-info").mkdir()
    av = RknnBackend().availability()
    assert av.available and av.versions["rknn-toolkit2"] == "2.5.0" and av.versions["worker-numpy"] == "1.26.4"
    assert not marker.exists()  # probing (and `qtbench backends`) read the env; nothing was executed
