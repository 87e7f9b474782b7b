"""ONNX Runtime adapter (``ort``): fp32, fp16, INT8 static (QDQ / QOperator) and dynamic, INT4 W4A8 and weight-only.

Execution providers: ``providers: auto`` takes the first present of TensorRT, CUDA, DirectML, CoreML, then CPU;
the providers the session actually holds are recorded (CPU fallback included). Quantization uses
``onnxruntime.quantization`` with activation ranges computed by :mod:`harness.calibration` for entropy and MSE
(see there why), passed through ORT's calibration-cache file so ``quantize_static`` uses exactly them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once
from harness.errors import ConfigError, UnsupportedSpec
from harness.spec import QuantSpec

AUTO_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
GRAPH_OPT = ("disabled", "basic", "extended", "all")
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
CALIB_BATCH = 64


class OrtCompiled(Compiled):
    def __init__(self, session: Any, info: CompiledInfo) -> None:
        super().__init__(info)
        self.session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, dict(feeds))

    def _close(self) -> None:
        self.session = None


class OrtBackend(Backend):
    """ONNX Runtime with onnxruntime.quantization; CPU here, GPU/NPU execution providers when present."""

    slug = "ort"
    description = "ONNX Runtime (onnxruntime.quantization QDQ/QOperator, dynamic, INT4)"
    option_defaults: ClassVar[dict[str, Any]] = {
        "threads": 1,  # intra-op threads; 0 = ORT's default (all physical cores)
        "inter_op_threads": 1,
        "spinning": True,  # ORT's default: worker threads spin between ops (lower latency, more CPU)
        "providers": "auto",  # or a list of execution provider names, in priority order
        "graph_optimization": "all",
        # int4 weight-only: "channel" = one MatMulNBits block spanning K (per output channel, as the spec id says);
        # an integer (power of two ≥ 16) = group-wise blocks of that many weights, recorded as such in the row
        "int4_block_size": "channel",
        # original-model node names kept in float (onnxruntime.quantization nodes_to_exclude): mixed precision,
        # e.g. from `qtbench localize --fallback-search`
        "exclude_nodes": [],
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if not isinstance(o["threads"], int) or o["threads"] < 0:
            raise ConfigError(f"backends.ort.options.threads: {o['threads']!r} must be an integer ≥ 0")
        if o["graph_optimization"] not in GRAPH_OPT:
            raise ConfigError(f"backends.ort.options.graph_optimization: choose one of {', '.join(GRAPH_OPT)}")
        if o["providers"] != "auto" and not isinstance(o["providers"], list):
            raise ConfigError("backends.ort.options.providers: 'auto' or a list such as [CPUExecutionProvider]")
        if not isinstance(o["exclude_nodes"], list) or not all(isinstance(n, str) for n in o["exclude_nodes"]):
            raise ConfigError("backends.ort.options.exclude_nodes: a list of node names of the original model")
        bs = o["int4_block_size"]
        if bs != "channel" and not (isinstance(bs, int) and 16 <= bs <= 256 and bs & (bs - 1) == 0):
            raise ConfigError(
                f"backends.ort.options.int4_block_size: {bs!r}; use 'channel' or a power of two in 16..256 (e.g. 32)"
            )

    # -- probing -------------------------------------------------------------------------------------------
    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not importable ({exc}): pip install onnxruntime")
        present = ort.get_available_providers()
        return Availability(True, "", {"onnxruntime": ort.__version__}, tuple(present))

    def providers(self) -> list[str]:
        import onnxruntime as ort

        present = ort.get_available_providers()
        if self.options["providers"] == "auto":
            return [p for p in AUTO_PROVIDERS if p in present]
        missing = [p for p in self.options["providers"] if p not in present]
        if missing:
            raise ConfigError(
                f"backends.ort.options.providers: {', '.join(missing)} not in this onnxruntime build "
                f"(present: {', '.join(present)}); install the matching onnxruntime package"
            )
        return list(self.options["providers"])

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.precision == "bf16":
            return "ONNX Runtime has no bf16 conversion path for CPU inference; use fp16 or another backend"
        if spec.precision == "int4" and spec.format == "qoperator":
            return "ORT QOperator kernels have no 4-bit weights; use format qdq"
        if spec.scaling == "dynamic" and spec.activation_symmetric:
            return "ORT dynamic quantization (DynamicQuantizeLinear) produces asymmetric uint8 activations only"
        if spec.scaling == "dynamic" and spec.precision == "int4":
            return "ORT has no dynamic activation quantization with 4-bit weights; use int4-weightonly"
        if spec.scaling == "dynamic" and spec.format == "qoperator":
            return "dynamic quantization has a single graph form in ORT; drop format qoperator"
        if spec.scaling == "weightonly" and spec.granularity == "per-tensor":
            return "ORT int4 weight-only (MatMulNBits) scales per block or per output channel, not per tensor; use -pc"
        return None

    # -- compilation ---------------------------------------------------------------------------------------
    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        import time

        t0 = time.perf_counter()
        if spec.precision == "fp32":
            artifact, notes, cache_hit = model.path, [], True
        else:
            artifact = workdir / "model.onnx"
            notes, cache_hit = build_once(artifact, lambda n: self._build(model, spec, calib, workdir, artifact, n))
        compile_s = time.perf_counter() - t0
        session = self._session(artifact)
        actual = session.get_providers()
        requested = self.providers()
        info = CompiledInfo(
            artifact_path=artifact,
            artifact_bytes=artifact.stat().st_size,
            numbers="measured",
            execution_device=_device_of(actual[0]),
            notes=notes,
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.extra.update(
            {
                "providers_requested": ",".join(requested),
                "providers": ",".join(actual),
                "intra_op_threads": self.options["threads"],
                "inter_op_threads": self.options["inter_op_threads"],
                "spinning": self.options["spinning"],
                "graph_optimization": self.options["graph_optimization"],
            }
        )
        if self.options["exclude_nodes"] and not spec.is_float:
            info.extra["exclude_nodes"] = list(self.options["exclude_nodes"])
            info.notes.append(f"kept {len(self.options['exclude_nodes'])} node(s) in float (exclude_nodes)")
        if actual != requested:
            info.notes.append(f"providers fell back: requested {requested}, session holds {actual}")
        risk = s8s8_saturation_risk(spec, actual[0], self.options["graph_optimization"])
        if risk:
            info.extra["int8_saturation_risk"] = True
            info.notes.append(risk)
        self._coverage(artifact, actual, spec, info)
        return OrtCompiled(session, info)

    def _session(self, path: Path, optimized_out: Path | None = None, level: str | None = None) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options["threads"]
        so.inter_op_num_threads = self.options["inter_op_threads"]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options["spinning"] else "0")
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        so.graph_optimization_level = levels[level or self.options["graph_optimization"]]
        so.log_severity_level = 3
        if optimized_out is not None:
            so.optimized_model_filepath = str(optimized_out)
        return ort.InferenceSession(str(path), so, providers=self.providers())

    def _build(
        self,
        model: ModelInput,
        spec: QuantSpec,
        calib: Any,
        workdir: Path,
        out: Path,
        notes: list[str],
        quantize_bias: bool = True,
    ) -> None:
        """Write ``spec``'s graph of ``model`` to ``out``. ``quantize_bias=False`` keeps biases float (TensorRT's
        parser rejects ORT's int32 bias DequantizeLinear, onnx-tensorrt#850)."""
        import onnxruntime.quantization as q

        logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns on every call about pre-processing
        model = local_model(model, workdir)
        tmp = workdir / f".tmp-{os.getpid()}.onnx"
        if spec.precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(model.path)), keep_io_types=True), str(tmp))
        elif spec.scaling == "weightonly":
            self._int4_weightonly(model, spec, tmp, notes)
        elif spec.scaling == "dynamic":
            q.quantize_dynamic(
                str(model.path),
                str(tmp),
                per_channel=spec.granularity == "per-channel",
                weight_type=q.QuantType.QInt8 if spec.weight_symmetric else q.QuantType.QUInt8,
                extra_options={"WeightSymmetric": spec.weight_symmetric},
                nodes_to_exclude=list(self.options["exclude_nodes"]),
            )
        else:
            self._static(model, spec, calib, workdir, tmp, notes, quantize_bias)
        os.replace(tmp, out)

    def _static(
        self,
        model: ModelInput,
        spec: QuantSpec,
        calib: Any,
        workdir: Path,
        out: Path,
        notes: list[str],
        quantize_bias: bool = True,
    ) -> None:
        import onnxruntime.quantization as q

        cache, method = static_ranges(model, spec, calib, workdir, notes)
        wtype = weight_type(spec)
        atype = q.QuantType.QInt8 if spec.activation_symmetric else q.QuantType.QUInt8
        q.quantize_static(
            str(model.path),
            str(out),
            None,
            quant_format=q.QuantFormat.QOperator if spec.format == "qoperator" else q.QuantFormat.QDQ,
            per_channel=spec.granularity == "per-channel",
            activation_type=atype,
            weight_type=wtype,
            calibrate_method=method,
            calibration_cache_path=str(cache),
            nodes_to_exclude=list(self.options["exclude_nodes"]),
            extra_options={
                "WeightSymmetric": spec.weight_symmetric,
                "ActivationSymmetric": spec.activation_symmetric,
                "QuantizeBias": quantize_bias,
            },
        )
        if not quantize_bias:
            notes.append("biases kept in float (no int32 bias DequantizeLinear)")

    def _int4_weightonly(self, model: ModelInput, spec: QuantSpec, out: Path, notes: list[str]) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.CRITICAL)
        proto = onnx.load(str(model.path))
        before = Counter(n.op_type for n in proto.graph.node)
        block = self.options["int4_block_size"]
        if block == "channel":
            # one block spanning each weight column (K, zero-padded to MatMulNBits' power of two ≥ 16): one scale
            # per output channel; zero padding changes neither max|w| nor a range that already includes 0
            k = max([_matmul_k(proto, n) for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")] or [16])
            block = max(16, 1 << (k - 1).bit_length())
            if block > 256:  # MLAS's blockwise kernels take blocks of 16..256 along K (larger ones abort)
                raise UnsupportedSpec(
                    f"ORT int4 weight-only blocks span at most 256 inputs; this model's K={k} cannot have one scale "
                    "per output channel. Set options.int4_block_size to 32/64/128/256 to run group-wise (recorded)"
                )
            grouping = "per output channel (one block spans K)"
        else:
            grouping = f"group-wise: blocks of {block} weights along K, one scale each (not per output channel)"
            notes.append(f"int4 weight-only scales are {grouping}; the spec's granularity is {spec.granularity}")
        quant = MatMulNBitsQuantizer(
            proto,
            block_size=int(block),
            is_symmetric=spec.weight_symmetric,
            op_types_to_quantize=("MatMul", "Gemm"),
        )
        quant.process()
        result = quant.model.model if hasattr(quant.model, "model") else quant.model
        n_nbits = sum(1 for n in result.graph.node if n.op_type == "MatMulNBits")
        if n_nbits == 0:
            raise UnsupportedSpec(
                f"int4 weight-only on ORT rewrites MatMul into MatMulNBits; onnxruntime's quantizer took none of "
                f"this model's {before.get('MatMul', 0)} MatMul / {before.get('Gemm', 0)} Gemm / "
                f"{before.get('Conv', 0)} Conv nodes"
            )
        float_convs = before.get("Conv", 0)
        if float_convs:
            notes.append(f"weight-only INT4 covers {n_nbits} MatMul/Gemm layer(s); {float_convs} Conv stay fp32")
        notes.append(f"int4 block_size={block} ({grouping})")
        onnx.save(result, str(out))

    # -- coverage ------------------------------------------------------------------------------------------
    def _coverage(self, artifact: Path, providers: list[str], spec: QuantSpec, info: CompiledInfo) -> None:
        """Nodes per device and which compute ops stayed float, read from the graph ORT actually runs."""
        import onnx

        with tempfile.TemporaryDirectory() as d:
            opt = Path(d) / "opt.onnx"
            # 'basic' keeps the graph portable (no NCHWc layout ops) but applies the fp16→fp32 cast insertion.
            self._session(artifact, optimized_out=opt, level="basic")
            graph = onnx.load(str(opt), load_external_data=False).graph
        nodes = list(graph.node)
        device = _device_of(providers[0])
        info.coverage = {device: len(nodes)} if len(providers) == 1 or device == "cpu" else {"unknown": len(nodes)}
        if device != "cpu" and len(providers) > 1:
            info.notes.append("per-node EP assignment not recorded; run with ORT profiling to split GPU/CPU")
        types = _elem_types(graph)
        compute = [n for n in nodes if n.op_type in COMPUTE_OPS]
        quantized_ops = [
            n
            for n in nodes
            if n.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize", "MatMulNBits"))
        ]
        dq_outputs = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
        float_compute = [n for n in compute if not (set(n.input[1:2]) & dq_outputs)]
        info.extra["nodes"] = len(nodes)
        info.extra["quantized_compute_nodes"] = (len(compute) - len(float_compute)) + len(quantized_ops)
        info.extra["float_compute_nodes"] = len(float_compute)
        nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
        blocks = sorted({a.i for n in nbits for a in n.attribute if a.name == "block_size"})
        if blocks:
            info.extra["int4_block_size"] = blocks[0] if len(blocks) == 1 else blocks
            info.extra["int4_grouping"] = (
                "per-channel" if self.options["int4_block_size"] == "channel" else f"group-{blocks[0]}"
            )
        if spec.precision == "fp16":
            fp16 = sum(1 for n in compute if types.get(n.input[0]) == onnx.TensorProto.FLOAT16)
            info.extra["fp16_executed_as"] = "fp16" if fp16 == len(compute) else "fp32" if fp16 == 0 else "mixed"
            if fp16 < len(compute):
                info.notes.append(
                    f"{len(compute) - fp16}/{len(compute)} compute ops run in fp32 on {providers[0]} "
                    "(no fp16 kernel; ORT inserted casts): weights are fp16-rounded, arithmetic is fp32"
                )
        elif not spec.is_float:
            for n in float_compute:
                info.fallback_ops.setdefault(n.op_type, "not quantized by onnxruntime.quantization (runs in float)")


def _matmul_k(proto: Any, node: Any) -> int:
    """The reduction length K of a MatMul/Gemm whose weight is an initializer (0 when it is not one)."""
    w = next((i for i in proto.graph.initializer if len(node.input) > 1 and i.name == node.input[1]), None)
    if w is None or len(w.dims) < 2:
        return 0
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return int(w.dims[-1] if node.op_type == "Gemm" and trans_b else w.dims[-2])


def local_model(model: ModelInput, workdir: Path) -> ModelInput:
    """``model`` copied into the cell's ``workdir`` (``source-<tag>.onnx``), for ORT's quantizer and calibrators.

    They write ``<model>-inferred.onnx`` beside the file they are given and delete it: given the user's model, two
    sweeps of one model race on that file, and a read-only model folder fails every quantized cell with a
    misleading FileNotFoundError. External data is gathered into the copy.
    """
    import hashlib
    import shutil

    import onnx

    src = model.path.resolve()
    if src.parent == workdir.resolve():
        return model  # already a file of this cell (a fixed-batch or prepared copy)
    st = src.stat()
    tag = hashlib.sha256(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    dst = workdir / f"source-{tag}.onnx"  # one name per source file version: a workdir may serve several models
    if not dst.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = workdir / f".source-{os.getpid()}.onnx"
        head = onnx.load(str(model.path), load_external_data=False)
        if any(i.data_location == onnx.TensorProto.EXTERNAL for i in head.graph.initializer):
            onnx.save(onnx.load(str(model.path)), str(tmp))
        else:
            shutil.copyfile(model.path, tmp)
        os.replace(tmp, dst)
    return ModelInput(dst, model.sha256, model.input_names, model.output_names, model.dynamic_batch)


def weight_type(spec: QuantSpec) -> Any:
    """onnxruntime.quantization's weight QuantType for a spec: 4 or 8 bits, signed when symmetric."""
    import onnxruntime.quantization as q

    return {
        (True, True): q.QuantType.QInt4,
        (True, False): q.QuantType.QUInt4,
        (False, True): q.QuantType.QInt8,
        (False, False): q.QuantType.QUInt8,
    }[(spec.precision == "int4", spec.weight_symmetric)]


def static_ranges(model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path, notes: list[str]) -> tuple[Path, Any]:
    """Activation ranges for a static spec, written as ORT's calibration cache (``workdir/calibration.json``).

    Returns the cache and the CalibrationMethod it is tagged with (``quantize_static`` insists they match).
    Every adapter that quantizes through ``onnxruntime.quantization`` (ort, qnn) reads the same ranges, so a gap
    between them is the vendor stack's, not a calibration difference. Entropy and MSE ranges come from
    :mod:`harness.calibration` (ORT's entropy is ~30x slower and has no MSE).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    from harness import calibration

    if calib is None:
        raise ConfigError("static quantization needs calibration data: set `calibration:` in the sweep file")
    model = local_model(model, workdir)  # the calibrator writes <model>-inferred.onnx beside its input
    data = calib.head(spec.calib_samples)
    if len(data) < spec.calib_samples:
        notes.append(f"calibrated on {len(data)} samples (spec asks {spec.calib_samples}; the set is smaller)")
    stats, hit, stats_path = calibration_stats(model, data, workdir)
    notes.append(
        "activation statistics reused from the calibration cache"
        if hit
        else f"activation statistics collected once for this model and calibration set ({len(data)} samples)"
    )
    sym = spec.activation_symmetric
    tag = f"{spec.calibration}{spec.percentile if spec.calibration == 'percentile' else ''}-{'sym' if sym else 'asym'}"
    memo = stats_path.with_name(f"{stats_path.stem}.{tag}.json")  # pt/pc and int8/int4 specs share activation ranges
    try:
        found = json.loads(memo.read_text()) if memo.is_file() else None
    except (OSError, ValueError):
        found = None
    if not isinstance(found, dict) or set(found) != set(stats):
        found = {}
        for name, (hist, edges, lo, hi) in stats.items():
            if spec.calibration == "minmax":  # what ORT's MinMax calibrator computes: the observed [min, max]
                m = max(abs(float(lo)), abs(float(hi)))
                r = (-m, m) if sym else (float(lo), float(hi))
            elif spec.calibration == "entropy":
                r = calibration.entropy_range(hist, edges, lo, hi)
            elif spec.calibration == "percentile":
                r = calibration.percentile_range(hist, edges, lo, hi, spec.percentile, sym)
            else:
                r = calibration.mse_range(hist, edges, lo, hi, 8, sym)
            found[name] = [float(r[0]), float(r[1])]
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found))
        os.replace(tmp, memo)
    ranges = {n: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for n, (lo, hi) in found.items()}
    tensors = TensorsData(CalibrationMethod.MinMax, ranges)
    if spec.calibration != "minmax":
        notes.append(
            f"{spec.calibration} ranges computed by qtbench from {calibration.DEFAULT_NUM_BINS}-bin histograms"
        )
    cache = workdir / "calibration.json"
    save_tensors_data(tensors, cache)
    return cache, tensors.calibration_method


STATS_VERSION = 1  # bump when what calibration_stats() collects changes


def calibration_stats(model: ModelInput, data: Any, workdir: Path) -> tuple[dict[str, tuple], bool, Path]:
    """Per-tensor FP32 activation statistics — a 2,048-bin zero-centred histogram and the exact min/max — collected
    once per (model file, calibration samples) and cached by content hash; returns (stats, cache_hit, file).

    Every range method (min-max, percentile, entropy, MSE) and every spec, granularity and backend that builds
    ORT QDQ graphs (ort, qnn, simnpu, tensorrt, openvino with ``quantizer: ort``) derive their ranges from the
    same statistics, so the model's activations are computed once instead of once per spec and backend. Min-max
    ranges from these statistics equal ORT's MinMax calibrator's exactly (the collector keeps the true min/max).
    """
    import fcntl
    import hashlib
    import json

    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from harness import calibration

    h = hashlib.sha256()
    with open(model.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    key = hashlib.sha256(
        f"{h.hexdigest()}|{data.sha256}|{calibration.DEFAULT_NUM_BINS}|{ort.__version__}|{STATS_VERSION}".encode()
    ).hexdigest()[:24]
    artifacts = workdir.parent.parent
    root = artifacts.parent / "calibration" if artifacts.name == "artifacts" else workdir / "calibration"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.npz"
    with open(root / f".{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel compile workers of one model: one collects, the rest wait
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    names = json.loads(str(z["names"]))
                    return (
                        {
                            n: (z[f"h{i}"], z[f"e{i}"], z["minmax"][i, 0], z["minmax"][i, 1])
                            for i, n in enumerate(names)
                        },
                        True,
                        path,
                    )
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)  # a torn or foreign file: collect again
        with tempfile.TemporaryDirectory(dir=workdir) as tmpd:
            calibrator = create_calibrator(
                model.path,
                [],
                augmented_model_path=str(Path(tmpd) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.Entropy,  # histogram collector: histograms and true min/max
                extra_options={"num_bins": calibration.DEFAULT_NUM_BINS},
            )
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's calibrators print progress to stdout
                calibrator.collect_data(_Reader(data, model.dynamic_batch))
            stats = {
                name: (np.asarray(hist), np.asarray(edges), np.float64(lo), np.float64(hi))
                for name, (hist, edges, lo, hi, _t) in calibrator.collector.histogram_dict.items()
            }
        names = list(stats)
        arrays = {f"h{i}": stats[n][0] for i, n in enumerate(names)}
        arrays |= {f"e{i}": stats[n][1] for i, n in enumerate(names)}
        arrays["minmax"] = np.array([[stats[n][2], stats[n][3]] for n in names], dtype=np.float64).reshape(-1, 2)
        tmp = root / f".{key}.{os.getpid()}.tmp.npz"
        np.savez(tmp, names=np.array(json.dumps(names)), **arrays)
        os.replace(tmp, path)
        return stats, False, path


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI/AMX int8 dot products (None: not x86 or unknown)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def s8s8_saturation_risk(spec: QuantSpec, provider: str, graph_optimization: str) -> str:
    """A note when ORT's fused int8 CPU kernels may saturate on this CPU, else "".

    On x86 without VNNI, ONNX Runtime runs signed-activation (s8s8) QLinear kernels through the u8s8
    ``VPMADDUBSW`` path, whose pairwise int16 sums can saturate: measured here on a tiny CNN, the same QDQ graph
    was off by 0.68 (fused, level "all") vs 0.13 (unfused, level "basic") in max |logit error|. The row keeps the
    fused number (it is what this CPU runs) and says so.
    """
    if (
        provider == "CPUExecutionProvider"
        and spec.precision in ("int8", "int4")
        and spec.is_static
        and spec.activation_symmetric
        and graph_optimization in ("extended", "all")
        and cpu_has_vnni() is False
    ):
        return (
            "x86 CPU without VNNI: ORT's fused int8 kernels with signed (symmetric) activations can saturate "
            "int16 partial sums, so this row may show more error than the QDQ numerics imply; "
            "compare with options.graph_optimization: basic (unfused reference kernels)"
        )
    return ""


class _Reader:
    """CalibrationDataReader over a harness Dataset, in batches when the model's batch axis is dynamic."""

    def __init__(self, data: Any, dynamic_batch: bool) -> None:
        self.data = data
        self.step = CALIB_BATCH if dynamic_batch else 1
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.data):
            return None
        batch = self.data.batch(self.pos, self.pos + self.step)
        self.pos += self.step
        return batch

    def __len__(self) -> int:
        return len(self.data)

    def rewind(self) -> None:
        self.pos = 0


def _device_of(provider: str) -> str:
    return {
        "CUDAExecutionProvider": "gpu",
        "TensorrtExecutionProvider": "gpu",
        "DmlExecutionProvider": "gpu",
        "QNNExecutionProvider": "npu",
        "CoreMLExecutionProvider": "npu",
    }.get(provider, "cpu")


def _elem_types(graph: Any) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types
