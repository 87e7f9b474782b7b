"""Vendor NPU stubs (``hailo``, ``nxp``, ``edgetpu``): the real runtime when it is here, else ``simnpu``.

Each probes for its vendor's runtime and a device. When both are present it runs the real thing (rows
``measured``): HailoRT with a compiled ``.hef`` (``options.hef``), or the TFLite interpreter with the vendor's
delegate (NXP VX/Neutron, ``libedgetpu``) on the full-integer ``.tflite``. When not, it falls back to ``simnpu``
with that vendor's profile and every row says ``simulated`` and why, in its notes. It never reports a number as
the hardware's unless the hardware ran.

The HailoRT path is written against HailoRT 4.x's Python API (``hailo_platform``: VDevice, HEF,
InferVStreams) and has not run on a Hailo device in this project's CI, which has none.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends.base import Availability, Compiled, CompiledInfo, ModelInput
from qtbench.backends.simnpu import SimNpuBackend
from qtbench.backends.tflite import TfliteBackend, _interpreter_module
from qtbench.harness.core.spec import QuantSpec


class _VendorStub(SimNpuBackend):
    """simnpu pinned to a vendor profile, with a probe for the vendor's real runtime."""

    profile_id: ClassVar[str] = ""
    vendor: ClassVar[str] = ""
    float_fallback_option = None  # the vendor compiler's own partitioning decides what stays in float

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        options.setdefault("profile", self.profile_id)
        super().__init__(options)

    def real_runtime(self) -> tuple[bool, str]:
        """(usable, what was found or why not)."""
        raise NotImplementedError

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The vendor runtime returns outputs only; its numerics are localised through simnpu's profile."""
        return self.output_only

    def availability(self) -> Availability:
        sim = super().availability()
        if not sim.available:
            return sim
        usable, why = (False, "simulation forced by options.force_simulation")
        if not self.options["force_simulation"]:
            usable, why = self.real_runtime()
        versions = dict(sim.versions) | {"runtime": why if usable else "simnpu (no vendor runtime)"}
        return Availability(True, "", versions, ("npu",) if usable else ("simulated",))

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        usable, why = (False, "options.force_simulation is set")
        if not self.options["force_simulation"]:
            usable, why = self.real_runtime()
        if usable:
            return self._compile_real(model, spec, calib, workdir)
        self.fallback_reason = f"{self.vendor} runtime not used ({why}); simulated with the {self.profile.name} profile"
        return super()._compile(model, spec, calib, workdir)

    def _compile_real(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        raise NotImplementedError


class _DelegateStub(_VendorStub):
    """Vendors whose NPU is reached through a TFLite delegate on the full-integer .tflite."""

    delegate_candidates: ClassVar[tuple[str, ...]] = ()
    executable_options: ClassVar[tuple[str, ...]] = ("delegate",)
    variant_suffix: ClassVar[str] = ""

    def _delegate(self) -> str | None:
        if self.options["delegate"]:
            return str(self.options["delegate"])
        for cand in self.delegate_candidates:
            if "/" in cand and Path(cand).is_file():
                return cand
            if "/" not in cand and (found := ctypes.util.find_library(cand)):
                return found
        return None

    def real_runtime(self) -> tuple[bool, str]:
        lib = self._delegate()
        if lib is None:
            return False, f"no delegate library ({', '.join(self.delegate_candidates)}) on this host"
        try:
            _interpreter_module().load_delegate(lib)
        except ImportError as exc:
            return False, f"delegate {lib} found but no TFLite runtime ({exc}): pip install 'qtbench[tflite]'"
        except (ValueError, OSError, RuntimeError) as exc:
            return False, f"delegate {lib} failed to load (no device attached?): {exc}"
        return True, f"TFLite delegate {lib}"

    def _compile_real(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:

        tfl = TfliteBackend(
            {"threads": self.options["threads"], "xnnpack": False, "variant_suffix": self.variant_suffix}
        )
        # set after construction: the path was vetted by this stub's own trust check (options.delegate) or found
        # in the BSP's standard locations, so it is not a sweep-file value to check again
        tfl.options["delegate"] = self._delegate()
        compiled = tfl.compile(model, spec, calib, workdir)
        compiled.info.execution_device = "npu"
        compiled.info.notes.append(f"{self.vendor} NPU through its TFLite delegate ({self._delegate()})")
        return compiled


class NxpBackend(_DelegateStub):
    slug = "nxp"
    output_only = "the VX/Neutron delegate returns outputs only; localize simnpu with profile nxp-imx8mp instead"
    description = "NXP i.MX NPU via TFLite VX/Neutron delegate; simnpu i.MX 8M Plus profile when absent"
    profile_id = "nxp-imx8mp"
    vendor = "NXP"
    delegate_candidates = ("/usr/lib/libvx_delegate.so", "/usr/lib/libneutron_delegate.so")
    option_defaults: ClassVar[dict[str, Any]] = {
        **SimNpuBackend.option_defaults,
        "profile": "nxp-imx8mp",
        "delegate": None,  # path of the delegate library; default: the BSP's standard locations
        "force_simulation": False,
    }


class EdgeTpuBackend(_DelegateStub):
    slug = "edgetpu"
    output_only = "libedgetpu returns outputs only; localize simnpu with profile edgetpu instead"
    description = "Google Coral Edge TPU via libedgetpu; simnpu Edge TPU profile when absent"
    profile_id = "edgetpu"
    vendor = "Google Coral"
    delegate_candidates = ("edgetpu", "/usr/lib/x86_64-linux-gnu/libedgetpu.so.1", "/usr/lib/libedgetpu.so.1")
    variant_suffix = "_edgetpu"  # <stem>.full_integer_quant_edgetpu.tflite from edgetpu_compiler
    option_defaults: ClassVar[dict[str, Any]] = {
        **SimNpuBackend.option_defaults,
        "profile": "edgetpu",
        "delegate": None,
        "force_simulation": False,
    }


class HailoCompiled(Compiled):
    def __init__(self, pipeline: Any, closers: list[Any], info: CompiledInfo, names: list[str], nhwc: bool) -> None:
        """``closers``: callables releasing the activation, the vstreams and the device, in that order."""
        super().__init__(info)
        self.pipeline, self.closers, self.names, self.nhwc = pipeline, closers, names, nhwc

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        data = {}
        for name, x in zip(self.names, feeds.values(), strict=False):
            data[name] = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)) if self.nhwc and x.ndim == 4 else x)
        out = self.pipeline.infer(data)
        return [np.asarray(v, dtype=np.float32).reshape(len(next(iter(feeds.values()))), -1) for v in out.values()]

    def _close(self) -> None:
        for close in self.closers:
            close()


class HailoBackend(_VendorStub):
    slug = "hailo"
    output_only = "HailoRT runs a compiled .hef and returns outputs only; localize simnpu with profile hailo8 instead"
    description = "Hailo-8 via HailoRT and a compiled .hef; simnpu Hailo-8 profile when absent"
    profile_id = "hailo8"
    vendor = "Hailo"
    option_defaults: ClassVar[dict[str, Any]] = {
        **SimNpuBackend.option_defaults,
        "profile": "hailo8",
        "hef": None,  # the Hailo Dataflow Compiler's output for this model and spec
        "force_simulation": False,
    }

    def real_runtime(self) -> tuple[bool, str]:
        if importlib.util.find_spec("hailo_platform") is None:
            return False, "HailoRT Python package (hailo_platform) not installed"
        try:
            from hailo_platform import Device

            devices = Device.scan()
        except Exception as exc:  # noqa: BLE001 - any driver error means no usable device
            return False, f"HailoRT found but device scan failed: {exc}"
        if not devices:
            return False, "HailoRT found but no Hailo device attached"
        if not self.options["hef"] or not Path(self.options["hef"]).is_file():
            return False, f"Hailo device {devices[0]} found but no compiled .hef (set options.hef)"
        return True, f"HailoRT on {devices[0]}"

    def _compile_real(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        from hailo_platform import (
            HEF,
            ConfigureParams,
            FormatType,
            HailoStreamInterface,
            InferVStreams,
            InputVStreamParams,
            OutputVStreamParams,
            VDevice,
        )

        t0 = time.perf_counter()
        hef_path = Path(self.options["hef"])
        hef = HEF(str(hef_path))
        target = VDevice()
        group = target.configure(hef, ConfigureParams.create_from_hef(hef, interface=HailoStreamInterface.PCIe))[0]
        in_params = InputVStreamParams.make(group, format_type=FormatType.FLOAT32)
        out_params = OutputVStreamParams.make(group, format_type=FormatType.FLOAT32)
        streams = InferVStreams(group, in_params, out_params)
        pipeline = streams.__enter__()
        activation = group.activate(group.create_params())
        activation.__enter__()
        closers = [
            lambda: activation.__exit__(None, None, None),
            lambda: streams.__exit__(None, None, None),
            target.release,
        ]
        names = [i.name for i in hef.get_input_vstream_infos()]
        info = CompiledInfo(
            artifact_path=hef_path,
            artifact_bytes=hef_path.stat().st_size,
            numbers="measured",
            execution_device="npu",
            notes=[f"HailoRT, HEF {hef_path.name} (quantization by the Hailo Dataflow Compiler, not by qtbench)"],
            compile_s=time.perf_counter() - t0,
        )
        return HailoCompiled(pipeline, closers, info, names, nhwc=True)
