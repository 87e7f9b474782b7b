"""NNCF's post-training quantization of the ONNX graph, run by ONNX Runtime.

The toolchain Intel points ONNX Runtime users to (the OpenVINO execution provider takes its QDQ models as they
are): ``nncf.quantize`` on the ``onnx.ModelProto`` inserts QuantizeLinear/DequantizeLinear pairs with its own
placement rules (hardware-fused patterns, which activations stay float), range estimators and fast bias
correction, so its INT8 graph differs from ``onnxruntime.quantization``'s on the same model and data. The artifact
is a plain QDQ ONNX file: the artifact audit reads it like any QDQ graph, localisation taps it in ONNX Runtime,
and ``exclude_nodes`` becomes NNCF's ``IgnoredScope`` for the fallback search.

Weights are symmetric INT8 (NNCF's only weight grid on ONNX); activations are per-tensor, asymmetric (preset
``mixed``) or symmetric (preset ``performance``); ranges by min-max. Specs outside that are skipped with the
reason.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from qtbench.backends import taps
from qtbench.backends._graph import GRAPH_OPT, ort_optimization_level
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once, quiet
from qtbench.backends.ort import OrtCompiled
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.spec import QuantSpec


class NncfOnnxBackend(Backend):
    """NNCF PTQ of the ONNX graph (QDQ) executed by ONNX Runtime's CPU execution provider."""

    slug = "nncf"
    description = "NNCF post-training quantization of the ONNX graph (QDQ), run by ONNX Runtime"
    float_fallback_option = "exclude_nodes"  # NNCF IgnoredScope(names=...)
    option_defaults: ClassVar[dict[str, Any]] = {
        "threads": 1,  # ONNX Runtime intra-op threads; 0 = its default (all physical cores)
        "graph_optimization": "all",
        "fast_bias_correction": True,  # NNCF's default; False runs no bias correction at all
        # original-model node names kept in float (NNCF IgnoredScope), e.g. from `qtbench localize --fallback-search`
        "exclude_nodes": [],
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if not isinstance(o["threads"], int) or o["threads"] < 0:
            raise ConfigError(f"backends.nncf.options.threads: {o['threads']!r} must be an integer ≥ 0")
        if o["graph_optimization"] not in GRAPH_OPT:
            raise ConfigError(f"backends.nncf.options.graph_optimization: choose one of {', '.join(GRAPH_OPT)}")
        if not isinstance(o["exclude_nodes"], list) or not all(isinstance(n, str) for n in o["exclude_nodes"]):
            raise ConfigError("backends.nncf.options.exclude_nodes: a list of node names of the original model")
        if not isinstance(o["fast_bias_correction"], bool):
            raise ConfigError("backends.nncf.options.fast_bias_correction: true or false")

    def availability(self) -> Availability:
        try:
            import nncf
            import onnxruntime
        except ImportError as exc:
            return Availability(False, f"{exc.name or exc} is not importable: pip install 'qtbench[openvino]'")
        return Availability(True, "", {"nncf": nncf.__version__, "onnxruntime": onnxruntime.__version__}, ("cpu",))

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.is_float:
            return None if spec.precision == "fp32" else f"NNCF's ONNX path quantizes to int8; {spec.precision} is not"
        if spec.precision != "int8":
            return "NNCF quantizes ONNX graphs to int8 (its 4-bit path is weight compression for OpenVINO IR)"
        if spec.scaling != "static":
            return "NNCF's ONNX quantization is static: activation ranges are fixed from calibration data"
        if not spec.weight_symmetric:
            return "NNCF quantizes ONNX weights symmetrically only; use a -wsym spec"
        if spec.calibration != "minmax":
            return f"the adapter maps min-max ranges only, not {spec.calibration}"
        if spec.format == "qoperator":
            return "NNCF writes QDQ graphs only; drop format qoperator"
        return None

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        t0 = time.perf_counter()
        if spec.is_float:
            artifact, notes, cache_hit = model.path, [], True
        else:
            artifact = workdir / "model.onnx"
            notes, cache_hit = build_once(artifact, lambda n: self._quantize(model, spec, calib, workdir, artifact, n))
        compile_s = time.perf_counter() - t0
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["threads"])
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort_optimization_level(self.options["graph_optimization"])
        session = ort.InferenceSession(str(artifact), so, providers=["CPUExecutionProvider"])
        info = CompiledInfo(
            artifact_path=artifact,
            artifact_bytes=artifact.stat().st_size,
            numbers="measured",
            execution_device="cpu",
            notes=list(notes),
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.extra.update({"quantizer": "nncf", "intra_op_threads": self.options["threads"]})
        if self.options["exclude_nodes"] and not spec.is_float:
            info.extra["exclude_nodes"] = list(self.options["exclude_nodes"])
            info.notes.append(f"kept {len(self.options['exclude_nodes'])} node(s) in float (NNCF ignored scope)")
        return OrtCompiled(session, info)

    def _quantize(
        self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path, artifact: Path, notes: list[str]
    ) -> None:
        """``nncf.quantize`` on the ONNX graph with ``calib``'s first ``spec.calib_samples`` samples, one at a
        time (NNCF's ONNX statistics run sample by sample)."""
        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        if calib is None:
            raise ConfigError("backends.nncf: a static spec needs calibration data (models[].calibration)")
        data = calib.head(spec.calib_samples)
        n = len(data)
        names = list(model.input_names)
        samples = [{k: data.inputs[k][i : i + 1] for k in names} for i in range(n)]
        adv = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(per_channel=spec.granularity == "per-channel"),
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            disable_bias_correction=not self.options["fast_bias_correction"],
        )
        preset = nncf.QuantizationPreset.PERFORMANCE if spec.activation_symmetric else nncf.QuantizationPreset.MIXED
        ignored = nncf.IgnoredScope(names=list(self.options["exclude_nodes"]), validate=False)
        with quiet(workdir / "backend.log"):
            quantized = nncf.quantize(
                onnx.load(str(model.path)),
                nncf.Dataset(samples),
                preset=preset,
                subset_size=n,
                fast_bias_correction=True,
                ignored_scope=ignored,
                advanced_parameters=adv,
            )
        onnx.save(quantized, str(artifact))
        notes.append(
            f"nncf {nncf.__version__}: preset {preset.value}, min-max ranges on {n} samples, "
            + ("fast bias correction" if self.options["fast_bias_correction"] else "no bias correction")
        )

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The QDQ graph in ONNX Runtime with the original tensors (their DequantizeLinear outputs) marked."""
        path = Path(compiled.info.artifact_path)
        return taps.OnnxTap(path, "qdq", self.options["graph_optimization"], int(self.options["threads"] or 1), label)
