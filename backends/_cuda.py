"""The few CUDA runtime calls the GPU adapters make, over cuda-python's runtime bindings.

Why cuda-python and not pycuda: TensorRT's own Python samples allocate buffers, stream and time with cuda-python
(``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python 12.6) on both TensorRT 10 and 11, and it is the
package NVIDIA publishes next to the TensorRT wheels for CUDA 12 and 13; pycuda needs a compiler and a CUDA
toolkit to build on most hosts. Every call's error code is checked: a CUDA error raises with its name instead of
leaving stale buffers behind.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np


def runtime() -> tuple[Any, str]:
    """(cuda-python's runtime module, "") or (None, why it is not importable)."""
    try:
        from cuda.bindings import runtime as rt  # cuda-python ≥ 12.6
    except ImportError:
        try:
            from cuda import cudart as rt  # older cuda-python
        except ImportError as exc:
            return None, f"cuda-python is not importable ({exc}): pip install 'qtbench[tensorrt]'"
    return rt, ""


class Cuda:
    """Device 0 through the runtime API: pinned host arrays, device memory, async copies, streams, events."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self._host: dict[int, Any] = {}  # pointer → the ctypes buffer a pinned array views

    @classmethod
    def open(cls) -> tuple[Cuda | None, str]:
        """A usable device 0, or (None, why not): no cuda-python, no driver, or no device."""
        rt, why = runtime()
        if rt is None:
            return None, why
        try:
            count = cls(rt).check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        except RuntimeError as exc:
            return None, f"cuda-python is installed but CUDA is not usable here (no GPU or driver?): {exc}"
        if count < 1:
            return None, "no CUDA device visible (CUDA_VISIBLE_DEVICES, driver?)"
        return cls(rt), ""

    def check(self, result: Any, what: str) -> Any:
        """cuda-python returns (error, value...): the value, or a RuntimeError naming the error."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            raise RuntimeError(f"{what} failed: {name}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    def identity(self) -> str:
        """'<GPU name>;sm_<major>.<minor>;driver=<version>' of device 0 (what an engine is bound to)."""
        props = self.check(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else props.name
        driver = self.check(self.rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
        return f"{name};sm_{props.major}.{props.minor};driver={driver}"

    def name(self) -> str:
        return self.identity().split(";")[0]

    def pinned(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array (async copies from pageable memory are synchronous in CUDA)."""
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
        ptr = int(self.check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        self._host[ptr] = buf
        return np.frombuffer(buf, dtype=np.uint8)[: int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)

    def free_pinned(self, array: np.ndarray) -> None:
        ptr = array.ctypes.data
        if self._host.pop(ptr, None) is not None:
            self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def htod(self, dev: int, host: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dev, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh(self, host: np.ndarray, dev: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def stream(self) -> Any:
        return self.check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self, stream: Any) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event(self) -> Any:
        return self.check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self.check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self.check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))


def gpu_identity() -> str:
    """Device 0's identity for an artifact key, '' when CUDA cannot be read here (a portable key then)."""
    cuda, _why = Cuda.open()
    if cuda is None:
        return ""
    try:
        return cuda.identity()
    except RuntimeError:
        return ""
