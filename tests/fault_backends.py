"""Backends that misbehave on purpose, to prove a broken SDK costs one cell and never the sweep."""

from __future__ import annotations

import os
import signal
import time

from backends.ort import OrtBackend


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


class MissingSdkBackend(OrtBackend):
    slug = "nosdk"

    def availability(self):
        from backends.base import Availability

        return Availability(False, "vendor SDK 'acme_npu' not importable: pip install acme-npu")


class ImportBroken:  # referenced as a target whose module import fails
    pass
