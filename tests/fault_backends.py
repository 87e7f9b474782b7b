"""Backends that misbehave on purpose, to prove a broken SDK costs one cell and never the sweep."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, ClassVar

import numpy as np

from qtbench.backends.ort import OrtBackend


class CrashingBackend(OrtBackend):
    """Compiles like ort, then dies with SIGSEGV as a native SDK crash would."""

    slug = "crashy"

    def compile(self, model, spec, calib, workdir):
        if spec.precision == "int8":
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().compile(model, spec, calib, workdir)


class HangingBackend(OrtBackend):
    slug = "hangy"

    def compile(self, model, spec, calib, workdir):
        time.sleep(600)


class HangingProbeBackend(OrtBackend):
    """A plugin whose availability probe never returns (a driver that hangs)."""

    slug = "hangprobe"

    def availability(self):
        import subprocess

        marker = os.environ.get("QTBENCH_TEST_MARKER")
        if marker:  # a helper as a driver's probe tool would start: lets a test see the probe is running
            subprocess.Popen(["bash", "-c", f"exec -a {marker} sleep 600"])
        time.sleep(3600)


class ScratchBackend(OrtBackend):
    """Writes a helper file beside its artifact, works on it for a while, then removes it: what simnpu's prepared
    graph and QNN's context binary do. Two processes compiling one cache entry at once break each other."""

    slug = "scratch"

    def _compile(self, model, spec, calib, workdir):
        scratch = workdir / "prepared.onnx"
        scratch.write_bytes(model.path.read_bytes())
        time.sleep(1.5)
        scratch.read_bytes()  # FileNotFoundError when another build removed it meanwhile
        scratch.unlink()
        return super()._compile(model, spec, calib, workdir)


class MissingSdkBackend(OrtBackend):
    slug = "nosdk"

    def availability(self):
        from qtbench.backends.base import Availability

        return Availability(False, "vendor SDK 'acme_npu' not importable: pip install acme-npu")


class ImportBroken:  # referenced as a target whose module import fails
    pass


class NanOutputBackend(OrtBackend):
    """Compiles like ort; INT8 artifacts then return NaN in every output (a broken kernel or overflow)."""

    slug = "nanny"

    def compile(self, model, spec, calib, workdir):
        compiled = super().compile(model, spec, calib, workdir)
        if spec.precision == "int8":
            real = compiled._infer

            def poisoned(feeds):
                return [np.full_like(np.asarray(o, dtype=np.float32), np.nan) for o in real(feeds)]

            compiled._infer = poisoned
        return compiled


class SpawningHangBackend(OrtBackend):
    """Starts a helper process, as an SDK's compiler would, then hangs: nothing of it may outlive the sweep."""

    slug = "spawnhang"

    def compile(self, model, spec, calib, workdir):
        import subprocess

        marker = os.environ.get("QTBENCH_TEST_MARKER", "qtbench-test-marker")
        subprocess.Popen(["bash", "-c", f"exec -a {marker} sleep 600"])
        time.sleep(600)


class LoggingBackend(OrtBackend):
    """Appends "compile …" / "infer <t>" lines to phases.log beside the model: lets a test see when phases ran.

    (Beside the model, not in an environment variable: the forkserver keeps the environment it started with.)"""

    slug = "logged"

    def compile(self, model, spec, calib, workdir):
        log = model.path.parent / "phases.log"
        t0 = time.time()
        compiled = super().compile(model, spec, calib, workdir)
        with open(log, "a") as f:
            cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
            f.write(f"compile {os.getpid()} {t0} {time.time()} {compiled.info.cache_hit} {cores}\n")
        real = compiled._infer

        def logged(feeds):
            with open(log, "a") as f:
                f.write(f"infer {os.getpid()} {time.time()}\n")
            return real(feeds)

        compiled._infer = logged
        return compiled


class InferCrashBackend(LoggingBackend):
    """Logs like ``logged``; the INT8 symmetric-activation spec's artifact dies with SIGSEGV on its first inference
    (a native kernel crash in the measure phase)."""

    slug = "crashinfer"

    def compile(self, model, spec, calib, workdir):
        compiled = super().compile(model, spec, calib, workdir)
        if spec.activation_symmetric and spec.precision == "int8":

            def crash(feeds):
                os.kill(os.getpid(), signal.SIGSEGV)

            compiled._infer = crash
        return compiled


# callables for qtbench.harness.core.isolate.Worker tests (module level: the child imports them by name)
def whoami(x: int = 0) -> tuple[int, int]:
    return os.getpid(), x


def sleep_then(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def die() -> None:
    os._exit(3)


def unpicklable() -> object:
    return lambda: None


class LyingBackend(OrtBackend):
    """Builds every INT4 spec as INT8 and says nothing: the label lies about the artifact (the audit's target)."""

    slug = "liar"

    def build_group(self, spec):
        return None

    def _compile(self, model, spec, calib, workdir):
        from qtbench.harness.core.spec import QuantSpec

        if spec.precision == "int4":
            spec = QuantSpec.parse(spec.id.replace("int4", "int8", 1))
        return super()._compile(model, spec, calib, workdir)


class FlakyBackend(OrtBackend):
    """ORT that fails every compile while its ``fail`` option is set: a cell the user fixes by changing its
    options (another cell key) and running again."""

    slug = "flaky"
    option_defaults: ClassVar[dict[str, Any]] = {**OrtBackend.option_defaults, "fail": False}

    def _compile(self, model, spec, calib, workdir):
        from qtbench.harness.core.errors import CompileError

        if self.options["fail"]:
            raise CompileError("flaky: the compiler rejected the model (set options.fail: false)")
        return super()._compile(model, spec, calib, workdir)


class ExclusiveBackend(OrtBackend):
    """ORT standing in for a GPU runtime: one device, builds must not overlap (``exclusive_device``); logs each
    build's [start, end] to exclusive.log beside the model, and holds the device 0.6 s per build."""

    slug = "exclusive"
    exclusive_device = True

    def _compile(self, model, spec, calib, workdir):
        t0 = time.time()
        time.sleep(0.6)
        compiled = super()._compile(model, spec, calib, workdir)
        with open(model.path.parent / "exclusive.log", "a") as f:
            f.write(f"{t0} {time.time()}\n")
        return compiled


class BoundBackend(OrtBackend):
    """ORT whose artifacts are bound to "the device" (``artifact_portable = False``): the identity is a class
    attribute a test changes, as moving a cache to another GPU would."""

    slug = "bound"
    artifact_portable = False
    IDENTITY = "gpu-a;sm_8.9;driver=1"

    def device_identity(self):
        return type(self).IDENTITY


class BlackboxBackend(OrtBackend):
    """ort's numerics behind a runtime that returns outputs only: the adapter says so through its contract."""

    slug = "blackbox"
    output_only = "a compiled blob: outputs only"

    def tap(self, compiled, spec, label):
        return self.output_only
