"""TFLite / LiteRT adapter (``tflite``, extra ``qtbench[tflite]``: ai-edge-litert, fallback tflite-runtime).

Runs ``.tflite`` variants of the ONNX checkpoint: ``<stem>.<variant>.tflite`` next to the model (made by
``scripts/convert_tflite.py`` with onnx2tf + TensorFlow, or by the user's own converter), or converted on demand
when the ``converter_python`` option names an interpreter that has ``qtbench[tflite-convert]``. Specs map to
variants: fp32 → float32, fp16 → float16 (weights fp16, compute fp32 on CPU), int8 dynamic → dynamic_range_quant,
int8 static per-channel → full_integer_quant, per-tensor → full_integer_quant_pt (int8 in/out; the adapter
quantizes inputs and dequantizes outputs with the model's own scale/zero-point).

A pre-converted static INT8 file was calibrated when it was made, so it stands for exactly one spec
(``CANONICAL``: ``int8-static-pc-wsym-minmax`` for full_integer_quant, ``int8-static-pt-wsym-minmax`` for
full_integer_quant_pt); other static specs (``-n64``, …) are skipped with that reason instead of silently
reusing it. Rows record the .tflite's sha256, how it was calibrated and the dtype its compute ops ran in (fp16
variants compute in fp32 on CPU: their weights are dequantized at load).

onnx2tf converts NCHW graphs to NHWC; the adapter transposes 4-D inputs and records the layout. XNNPACK (the
default CPU delegate) can be turned off; other delegates (NNAPI on Android, GPU, EdgeTPU, vendor) load by path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import taps
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, quiet
from qtbench.harness.core.audit import ArtifactFacts, WeightFact
from qtbench.harness.core.errors import BackendUnavailable, ConfigError, UnsupportedSpec
from qtbench.harness.core.intake import file_sha256
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.trust import ENVS_ROOT

CONVERTER = Path(__file__).resolve().parents[1] / "scripts" / "convert_tflite.py"


def variant_for(spec: QuantSpec) -> str | None:
    if spec.precision == "fp32":
        return "float32"
    if spec.precision == "fp16":
        return "float16"
    if spec.precision == "int8" and spec.scaling == "dynamic":
        return "dynamic_range_quant"
    if spec.precision == "int8" and spec.is_static:
        return "full_integer_quant" if spec.granularity == "per-channel" else "full_integer_quant_pt"
    return None


#: The one spec each pre-converted static INT8 variant stands for. Such a file was calibrated when it was made
#: (by scripts/convert_tflite.py or the user's converter), so a spec asking for other calibration settings (a
#: sample count, a method) cannot be honoured by it and is skipped with that reason.
CANONICAL = {
    "full_integer_quant": QuantSpec.parse("int8-static-pc-wsym-minmax"),
    "full_integer_quant_pt": QuantSpec.parse("int8-static-pt-wsym-minmax"),
}


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError as first:
        try:
            from tflite_runtime import interpreter  # the pre-LiteRT package; needs numpy<2
        except ImportError:
            raise ImportError(f"ai-edge-litert is not importable ({first})") from None
        return interpreter


def pre_converted(model_path: Path, spec: QuantSpec, suffix: str = "") -> Path | None:
    """The ``<stem>.<variant><suffix>.tflite`` beside the model that ``spec`` would run, if there is one."""
    variant = variant_for(spec)
    if variant is None:
        return None
    beside = model_path.with_name(f"{model_path.stem}.{variant}{suffix}.tflite")
    return beside if beside.is_file() else None


class TfliteCompiled(Compiled):
    def __init__(self, interp: Any, info: CompiledInfo, nhwc: dict[str, bool]) -> None:
        super().__init__(info)
        self.interp = interp
        self.inputs = interp.get_input_details()
        self.outputs = interp.get_output_details()
        self.nhwc = nhwc
        self._batch = 0

    def _resize(self, batch: int) -> None:
        for d in self.inputs:
            shape = list(d["shape"])
            shape[0] = batch
            self.interp.resize_tensor_input(d["index"], shape)
        self.interp.allocate_tensors()
        self.inputs, self.outputs = self.interp.get_input_details(), self.interp.get_output_details()
        self._batch = batch

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = list(feeds.values())
        if len(arrays[0]) != self._batch:
            self._resize(len(arrays[0]))
        for d, (name, x) in zip(self.inputs, feeds.items(), strict=True):
            if self.nhwc.get(name):
                x = np.transpose(x, (0, 2, 3, 1))
            scale, zero = d["quantization"]
            if d["dtype"] in (np.int8, np.uint8, np.int16) and scale:
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale) + zero, info.min, info.max)
            self.interp.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
        self.interp.invoke()
        outs = []
        for d in self.outputs:
            y = self.interp.get_tensor(d["index"])
            scale, zero = d["quantization"]
            outs.append((y.astype(np.float32) - zero) * scale if scale else y.copy())
        return outs

    def _close(self) -> None:
        self.interp = None


class TfliteBackend(Backend):
    slug = "tflite"
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "LiteRT / TFLite interpreter (XNNPACK; delegates by path), .tflite via onnx2tf"
    executable_options: ClassVar[tuple[str, ...]] = ("converter_python", "delegate")
    option_defaults: ClassVar[dict[str, Any]] = {
        "threads": 1,
        "xnnpack": True,  # False: builtin kernels without the default XNNPACK delegate
        "delegate": None,  # path of a delegate library (libedgetpu.so.1, a vendor NPU delegate, ...)
        "delegate_options": {},
        "converter_python": None,  # a Python with qtbench[tflite-convert], to convert when no .tflite is found
        "variant_suffix": "",  # e.g. "_edgetpu": run <stem>.<variant>_edgetpu.tflite (an edgetpu_compiler output)
    }

    def availability(self) -> Availability:
        try:
            mod = _interpreter_module()
        except ImportError as exc:
            return Availability(False, f"no TFLite runtime: {exc}: pip install 'qtbench[tflite]'")
        versions = {}
        from importlib.metadata import PackageNotFoundError, version

        for pkg in ("ai-edge-litert", "tflite-runtime"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        if self.options["delegate"]:
            try:
                mod.load_delegate(self.options["delegate"], dict(self.options["delegate_options"]))
            except (ValueError, OSError, RuntimeError) as exc:
                return Availability(False, f"delegate {self.options['delegate']} failed to load: {exc}", versions)
        return Availability(True, "", versions)

    def artifact_inputs(self, model_path: Path, spec: QuantSpec) -> dict[str, str]:
        """The pre-converted .tflite this cell would run, by sha256: replacing the file must change the cell key."""
        beside = pre_converted(model_path, spec, str(self.options["variant_suffix"] or ""))
        return {beside.name: file_sha256(beside)} if beside else {}

    def supports(self, spec: QuantSpec) -> str | None:
        if variant_for(spec) is None:
            return f"TFLite has no {spec.id} path here (fp32, fp16, int8 dynamic-range and full-integer int8 only)"
        if spec.is_static and spec.calibration != "minmax":
            return "the TFLite converter calibrates with min/max only; use calibration minmax"
        if spec.is_static and (spec.activation_symmetric or not spec.weight_symmetric):
            return "TFLite int8 uses symmetric weights and asymmetric activations (use *-wsym-*)"
        if spec.format == "qoperator":
            return "format qoperator is an ONNX Runtime notion"
        return None

    def audit(self, compiled: Compiled, spec: QuantSpec) -> Any:
        """Read the .tflite back for :mod:`qtbench.harness.core.audit` (see :func:`audit_tflite`)."""
        path = compiled.info.artifact_path
        if path is None or path.suffix != ".tflite" or not path.is_file():
            return f"tflite: no .tflite to read ({path.name if path else 'none'})"
        facts = audit_tflite(path, self.slug)
        small = [w for w in facts.weights if w.bits == 32 and w.params < 1024]
        if spec.scaling == "dynamic" and small:
            facts.notes.append(
                f"{len(small)} weight(s) under 1024 elements stay float32: the TFLite converter's dynamic-range "
                "quantization skips small weights"
            )
        return facts

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        variant = variant_for(spec)
        t0 = time.perf_counter()
        notes: list[str] = []
        path, cache_hit = self._artifact(model, spec, variant, calib, workdir, notes)
        mod = _interpreter_module()
        kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": int(self.options["threads"])}
        if not self.options["xnnpack"]:
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if self.options["delegate"]:
            kwargs["experimental_delegates"] = [
                mod.load_delegate(self.options["delegate"], dict(self.options["delegate_options"]))
            ]
        with quiet(workdir / "tflite.log"):  # LiteRT prints "Created TensorFlow Lite XNNPACK delegate" on fd 2
            interp = mod.Interpreter(**kwargs)
            interp.allocate_tensors()
        nhwc = {}
        for name, d in zip(model.input_names, interp.get_input_details(), strict=False):
            shape = list(d["shape"])
            nhwc[name] = len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)
        if any(nhwc.values()):
            notes.append("model input is NHWC (onnx2tf layout); the adapter transposes NCHW feeds")
        int_io = [d for d in interp.get_input_details() if d["dtype"] != np.float32]
        if int_io:
            notes.append(f"integer input/output ({int_io[0]['dtype'].__name__}); the adapter (de)quantizes them")
        ops = _op_names(interp)
        executed = _compute_dtypes(interp)
        if spec.precision == "fp16" and "float16" not in executed:
            notes.append(
                "fp16 weights are dequantized to fp32 at load (DEQUANTIZE ops): arithmetic is fp32 on this CPU"
            )
        info = CompiledInfo(
            artifact_path=path,
            artifact_bytes=path.stat().st_size,
            coverage={"cpu": len(ops)} if not self.options["delegate"] else {"delegate+cpu": len(ops)},
            numbers="measured",
            execution_device="cpu" if not self.options["delegate"] else "delegate",
            notes=notes,
            compile_s=time.perf_counter() - t0,
            cache_hit=cache_hit,
        )
        info.extra.update(
            {
                "variant": variant,
                "xnnpack": self.options["xnnpack"],
                "threads": self.options["threads"],
                "layout": "NHWC" if any(nhwc.values()) else "as-is",
                "ops": sorted(set(ops)),
                "tflite_sha256": file_sha256(path),
                "executed_precision": "+".join(executed) or "unknown",
                "calibration": (
                    "external (pre-converted file)"
                    if spec.is_static and path.parent != workdir
                    else "by the converter"
                    if spec.is_static
                    else "none"
                ),
            }
        )
        return TfliteCompiled(interp, info, nhwc)

    def _artifact(
        self, model: ModelInput, spec: QuantSpec, variant: str, calib: Any, workdir: Path, notes: list[str]
    ) -> tuple[Path, bool]:
        suffix = str(self.options["variant_suffix"] or "")
        canonical = CANONICAL.get(variant)
        variant = variant + suffix
        src = model.source  # pre-converted files sit beside the user's model, not intake's copy of it
        beside = src.with_name(f"{src.stem}.{variant}.tflite")
        if beside.is_file():
            if canonical is not None and spec != canonical:
                raise UnsupportedSpec(
                    f"{beside.name} is pre-converted and was calibrated when it was made; it cannot honour "
                    f"{spec.id}'s calibration settings. It runs as {canonical.id} only (or set "
                    "options.converter_python to convert per spec)"
                )
            notes.append(f"user-supplied/pre-converted {beside.name}")
            if canonical is not None:
                notes.append("calibrated externally: the sweep's calibration set was not used for this .tflite")
            return beside, True
        cached = workdir / f"{model.path.stem}.{variant}.tflite"  # the converter names it after its input
        if cached.is_file():
            return cached, True
        if self.options["variant_suffix"]:
            raise BackendUnavailable(
                f"no {beside.name} beside the model: compile {src.stem}.{variant_for(spec)}.tflite with the "
                "vendor's compiler (e.g. edgetpu_compiler) and put the result there"
            )
        py = converter_python(self.options["converter_python"])
        if not py:
            raise BackendUnavailable(
                f"no {beside.name} beside the model and no converter: run `qtbench env create tflite` once "
                "(a TensorFlow + onnx2tf environment, 2.6 GB, a few minutes to build; found by itself afterwards), or "
                "set backends.tflite.options.converter_python, or put a converted file there "
                f"(scripts/convert_tflite.py {src.name} --calib CALIB.npz)"
            )
        if calib is None:
            raise ConfigError("converting to TFLite needs calibration data: set `calibration:` in the sweep file")
        workdir.mkdir(parents=True, exist_ok=True)
        npz = workdir / "calib.npz"
        np.savez(npz, **calib.head(spec.calib_samples).inputs)
        proc = subprocess.run(
            [py, str(CONVERTER), str(model.path), "--calib", str(npz), "--out", str(workdir)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode or not cached.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"onnx2tf conversion failed ({proc.returncode}): {' | '.join(tail)}")
        notes.append(f"converted with onnx2tf via {py}")
        if canonical is not None:
            notes.append(f"calibrated by the converter on {len(calib.head(spec.calib_samples))} sample(s)")
        return cached, False

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The .tflite run by the builtin kernels with every tensor preserved, aligned with the ONNX graph."""
        path = Path(compiled.info.artifact_path)
        return taps.TfliteTap(path, _interpreter_module(), int(self.options["threads"] or 1), label)


#: where `qtbench env create tflite` builds the converter environment ($QTBENCH_TFLITE_ENV moves it)
CONVERTER_ENV = Path(os.environ.get("QTBENCH_TFLITE_ENV") or ENVS_ROOT / "tflite")


def converter_python(option: str | None) -> str | None:
    """The ONNX → TFLite converter's interpreter: the option, then $QTBENCH_TF_PYTHON, then the environment
    ``qtbench env create tflite`` builds; None when there is none."""
    if option:
        return str(option)
    if os.environ.get("QTBENCH_TF_PYTHON"):
        return os.environ["QTBENCH_TF_PYTHON"]
    py = CONVERTER_ENV / "bin" / "python"
    return str(py) if py.is_file() else None


_COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}


def _compute_dtypes(interp: Any) -> list[str]:
    """The dtypes the interpreter's compute ops take as activations (what actually ran, not the variant's name)."""
    try:
        tensors = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
        ops = interp._get_ops_details()
    except (AttributeError, KeyError, RuntimeError):
        return []
    seen = {
        np.dtype(tensors[op["inputs"][0]]).name for op in ops if op["op_name"] in _COMPUTE_OPS and len(op["inputs"])
    }
    return sorted(seen)


def _op_names(interp: Any) -> list[str]:
    try:
        return [op["op_name"] for op in interp._get_ops_details()]
    except (AttributeError, KeyError, RuntimeError):
        return []


def python_has_converter(python: str = sys.executable) -> bool:
    return subprocess.run([python, "-c", "import onnx2tf, tensorflow"], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------------------------------------------
# The artifact audit
# ---------------------------------------------------------------------------------------------------------------
#: compute op → (weight input, data input, output-channel axis of the weight)
_AUDIT_OPS = {
    "CONV_2D": (1, 0, 0),
    "DEPTHWISE_CONV_2D": (1, 0, -1),
    "FULLY_CONNECTED": (1, 0, 0),
    "TRANSPOSE_CONV": (1, 2, 0),
    "BATCH_MATMUL": (1, 0, -1),
    "CONV_3D": (1, 0, -1),
}
#: schema TensorType → bits (INT4/UINT4 are read from the flatbuffer: the interpreter reports their numpy dtype only)
_TYPE_BITS = {0: 32, 1: 16, 18: 16, 3: 8, 9: 8, 17: 4, 20: 4, 21: 8, 22: 8, 10: 64}
_DTYPE_TYPE = {"float32": 0, "float16": 1, "bfloat16": 18, "uint8": 3, "int8": 9, "int16": 7, "float64": 10}


def _flatbuffer_types(path: Path) -> dict[int, int]:
    """Primary subgraph tensor index → schema TensorType, from the flatbuffer (empty when it cannot be parsed)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return {}
    try:
        model = schema.Model.GetRootAs(path.read_bytes(), 0)
        sub = model.Subgraphs(0)
        return {i: int(sub.Tensors(i).Type()) for i in range(sub.TensorsLength())}
    except Exception:  # noqa: BLE001 - an unusual file: fall back to the interpreter's numpy dtypes
        return {}


def audit_tflite(path: Path, reader: str = "tflite") -> Any:
    """Read a .tflite for :mod:`qtbench.harness.core.audit` with the LiteRT interpreter (no delegate): for each CONV_2D,
    DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV, BATCH_MATMUL (CONV_3D) with a constant weight, the weight's
    storage type (int8 → 8, int4 → 4, float16 → 16, float32 → 32; a float32 weight made by a DEQUANTIZE op from an
    int8/float16 constant counts as that type), per-channel when its quantization has more than one scale,
    symmetric when its zero points are 0 (uint8: the midpoint), and the activation: "static" when the op reads an
    integer tensor, "dynamic" when it reads float32 with integer weights (dynamic-range "hybrid" kernels), "float"
    otherwise (also for weights a DEQUANTIZE op expands to float32 at load: the kernel computes in float)."""

    mod = _interpreter_module()
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if hasattr(mod, "OpResolverType"):  # the graph as stored, not as a delegate rewrote it
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = mod.Interpreter(**kwargs)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    fb_types = _flatbuffer_types(Path(path))
    producer = {o: op for op in ops for o in op["outputs"]}
    graph_inputs = {d["index"] for d in interp.get_input_details()}

    def ttype(i: int) -> int:
        if i in fb_types:
            return fb_types[i]
        return _DTYPE_TYPE.get(np.dtype(tensors[i]["dtype"]).name, -1)

    def constant(i: int) -> bool:
        return i >= 0 and i not in producer and i not in graph_inputs

    facts = ArtifactFacts(reader)
    expanded: dict[str, int] = {}
    custom = sorted(
        {op["op_name"] for op in ops if op["op_name"] in ("CUSTOM", "DELEGATE") or "custom" in op["op_name"]}
    )
    for op in ops:
        rule = _AUDIT_OPS.get(op["op_name"])
        inputs = list(op["inputs"])
        if rule is None or len(inputs) <= max(rule[0], rule[1]):
            continue
        widx, didx, axis = rule
        if op["op_name"] == "BATCH_MATMUL" and not constant(inputs[widx]) and constant(inputs[0]):
            widx, didx = 0, 1
        w = inputs[widx]
        src, via_dequant = w, False
        if w in producer and producer[w]["op_name"] == "DEQUANTIZE" and constant(producer[w]["inputs"][0]):
            src, via_dequant = producer[w]["inputs"][0], True
        elif not constant(w):
            continue  # a computed weight (activation × activation): no parameter to audit
        t = tensors[src]
        shape = [int(d) for d in t["shape"]]
        params = int(np.prod(shape)) if shape else 1
        channels = shape[axis] if shape else 0
        code = ttype(src)
        bits = _TYPE_BITS.get(code, 32)
        out = op["outputs"][0] if len(op["outputs"]) else -1
        name = tensors[out]["name"] if out in tensors else f"{op['op_name']}_{op['index']}"
        if via_dequant:
            kind = f"{'int' if bits < 16 else 'float'}{bits}"
            expanded[kind] = expanded.get(kind, 0) + 1
        if bits >= 16:
            facts.weights.append(WeightFact(name, op["op_name"], params, bits, activation="float", channels=channels))
            continue
        q = t["quantization_parameters"]
        scales, zps = np.asarray(q["scales"]), np.asarray(q["zero_points"]).astype(np.int64)
        if code not in (3, 20):  # signed storage: symmetric means zero point 0
            symmetric = bool(np.all(zps == 0))
        else:
            mid = 2**bits // 2
            symmetric = bool(np.all((zps == mid) | (zps == mid - 1)))
        data_code = ttype(inputs[didx]) if inputs[didx] >= 0 else -1
        if data_code in (3, 9, 7, 17, 20):
            activation = "static"
        elif via_dequant:
            activation = "float"
        else:
            activation = "dynamic"
        facts.weights.append(
            WeightFact(name, op["op_name"], params, bits, scales.size > 1, symmetric, activation, channels)
        )
    if expanded:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(expanded.items()))
        facts.notes.append(f"weights stored as {kinds} and expanded to float32 at load by DEQUANTIZE ops")
    if custom:
        facts.notes.append(f"custom/delegate ops ({', '.join(custom)}) hold layers this reader cannot see into")
    return facts
