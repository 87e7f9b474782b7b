"""Every replacement qtbench installs over a vendor SDK's private functions, declared in one place.

Some of ONNX Runtime's and NNCF's quantizer helpers are pure-Python loops that dominate a build; qtbench answers
them with numpy, same bytes out. Such a patch leans on code its vendor never promised to keep, so each
one here is a :class:`VendorPatch` naming the upstream function it replaces (file and function in the vendor's
source), the exact version range its equivalence was checked against (a ``packaging`` ``SpecifierSet``) and the
replacement. :func:`applied` installs, for the duration of a build, only the patches whose installed vendor
version lies in that range; a patch left off is said so in the build's notes ("vendor patch X off: onnxruntime Y
not in Z") and in a log line, so a build never quietly runs other code than the equivalence tests covered.
:func:`status` lists every patch with whether it is active here and why not (``python -m
qtbench.backends.vendor_patches``). ``tests/test_vendor_patches.py`` runs each vendor function and its replacement
on the same inputs; ``benchmarks/vendor_patches.py`` measures what each one buys, and a patch whose saving is too
small to be worth tracking the vendor's internals is retired rather than kept.

``QTBENCH_VENDOR_PATCHES`` narrows them: ``none`` (or ``0``/``off``) switches all off, a comma-separated list of
names keeps only those; unset or ``all``, every patch in its version range is used. Off patches are noted.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENV = "QTBENCH_VENDOR_PATCHES"


@dataclass(frozen=True)
class VendorPatch:
    """One replacement of vendor functions.

    ``targets`` are where the vendor's code looks the function up, ``"module:attr.path"`` or, for a dispatch
    registry, ``"module:attr.path[module.Key]"``. ``make`` receives what a target held (the vendor's function)
    and returns what is installed there: the replacement may hand cases it does not cover back to it.
    ``versions`` is the range the equivalence was checked on; ``package`` is the import whose ``__version__``
    is compared against it.
    """

    name: str
    package: str
    versions: str
    upstream: str
    targets: tuple[str, ...]
    make: Callable[[Any], Any]
    why: str

    def installed_version(self) -> str | None:
        """The vendor's ``__version__`` here, None when it does not import."""
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            return None
        version = getattr(module, "__version__", None)
        if version is None:
            from importlib import metadata

            with contextlib.suppress(metadata.PackageNotFoundError):
                version = metadata.version(self.package)
        return None if version is None else str(version)

    def off_reason(self) -> str | None:
        """Why this patch is not applied here (None: it is): vendor missing, version outside the range, or the
        ``QTBENCH_VENDOR_PATCHES`` selection."""
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        chosen = _env_selection()
        if chosen is not None and self.name not in chosen:
            return f"selected out by {ENV}={os.environ.get(ENV, '')}"
        installed = self.installed_version()
        if installed is None:
            return f"{self.package} is not installed"
        try:
            inside = Version(installed) in SpecifierSet(self.versions)
        except InvalidVersion:
            inside = False
        if not inside:
            return f"{self.package} {installed} not in {self.versions}"
        return None


@dataclass(frozen=True)
class PatchStatus:
    """A patch as :func:`status` reports it."""

    name: str
    package: str
    installed: str | None
    versions: str
    upstream: str
    active: bool
    reason: str | None


def _env_selection() -> set[str] | None:
    """The names ``QTBENCH_VENDOR_PATCHES`` keeps (empty: none), None when unset or ``all``."""
    raw = os.environ.get(ENV, "").strip()
    if not raw or raw.lower() == "all":
        return None
    if raw.lower() in ("none", "0", "off", "false"):
        return set()
    return {x.strip() for x in raw.split(",") if x.strip()}


# --- ONNX Runtime (onnxruntime.quantization) ------------------------------------------------------------------


def pack_4bit(src_8bit: bytes) -> bytearray:
    """ONNX Runtime's ``pack_bytes_to_4bit``: every two bytes' low nibbles into one byte, the first one low (an
    odd last byte alone, its high nibble 0). Upstream loops over the bytes in Python."""
    a = np.frombuffer(src_8bit, dtype=np.uint8)
    if len(a) % 2:
        a = np.append(a, np.uint8(0))
    return bytearray(((a[0::2] & 0xF) | ((a[1::2] & 0xF) << 4)).astype(np.uint8).tobytes())


def per_channel_initializer(original: Any) -> Any:
    """``quantize_onnx_initializer`` with its per-channel INT8/UINT8/INT4/UINT4 case on float32 weights done for
    all channels at once: ``(w / scale).round() + zero_point``, clipped and cast exactly as ``quantize_nparray``
    does per channel (upstream calls it once per output channel); every other case goes to ``original``."""
    import onnx
    from onnxruntime.quantization import quant_utils as qu

    kinds = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)

    def quantize(
        weight: Any,
        quant_type: Any,
        zero_point: Any,
        scale: Any,
        axis: int | None = None,
        quant_weight_name: str | None = None,
        block_size: int = 0,
    ) -> Any:
        args = (weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
        if axis is None or block_size > 0 or quant_type not in kinds:
            return original(*args)
        data = qu.tensor_proto_to_array(weight)
        scale, zero_point = np.asarray(scale), np.asarray(zero_point)
        if data.dtype != np.float32 or not data.ndim or scale.shape != (data.shape[axis],):
            return original(*args)
        if zero_point.shape != scale.shape or scale.dtype != np.float32:
            return original(*args)
        shape = [1] * data.ndim
        shape[axis] = -1
        qmin, qmax = qu.get_qmin_qmax_for_qType(quant_type, reduce_range=False, symmetric=False)
        q = np.asarray((data / scale.reshape(shape)).round() + zero_point.reshape(shape))
        np.clip(q, qmin, qmax, out=q)
        q = q.astype(qu.ONNX_TYPE_TO_NP_TYPE[quant_type])
        name = quant_weight_name or f"{weight.name}{qu.TENSOR_NAME_QUANT_SUFFIX}"
        if quant_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return onnx.helper.make_tensor(name, quant_type, weight.dims, bytes(pack_4bit(q.tobytes())), raw=True)
        q = np.asarray(q, dtype=onnx.helper.tensor_dtype_to_np_dtype(quant_type)).reshape(weight.dims)
        return onnx.numpy_helper.from_array(q, name)

    return quantize


def replace_input_of_all_nodes(self: Any, old_input_name: str, new_input_name: str) -> None:
    """ORT's ``ONNXModel.replace_input_of_all_nodes``, rewriting only the nodes that hold the name (a C-level
    membership test first; upstream compares every input of every node for each quantized tensor)."""
    for node in self.model.graph.node:
        inputs = node.input
        if old_input_name in inputs:
            for j, name in enumerate(inputs):
                if name == old_input_name:
                    inputs[j] = new_input_name


# --- NNCF -------------------------------------------------------------------------------------------------------


def tail_quantile(a: np.ndarray, q: float) -> float:
    """``float(np.quantile(a.astype(np.float64), q))`` (linear method, over every element) bit for bit, for the
    tail quantiles NNCF's MEAN_QUANTILE asks of every activation of every calibration sample (1e-4 and
    1 − 1e-4): the two order statistics it interpolates are picked from the few elements past a threshold read
    off a strided subsample, checked by counting, instead of partitioning the whole tensor. Any array this cannot
    do exactly (small, NaN or ±inf sums, a threshold that misses) goes through ``np.quantile`` itself."""
    x = np.asarray(a).ravel()
    n = x.size
    v = (n - 1) * np.float64(q)
    if n < 16384 or not 0.0 <= v <= n - 1 or not np.isfinite(np.sum(x)):
        return float(np.quantile(x.astype(np.float64, copy=False), q))
    lo = int(np.floor(v))
    hi = min(lo + 1, n - 1)
    picked = _order_stats(x, lo, hi)
    if picked is None:
        return float(np.quantile(x.astype(np.float64, copy=False), q))
    a_lo, a_hi = np.float64(picked[0]), np.float64(picked[1])
    t = v - np.floor(v)
    d = a_hi - a_lo
    return float(a_hi - d * (1 - t) if t >= 0.5 else a_lo + d * t)  # numpy's _lerp, same rounding


def _order_stats(x: np.ndarray, lo: int, hi: int) -> tuple[Any, Any] | None:
    """The ``lo``-th and ``hi``-th smallest of ``x`` (lo ≤ hi ≤ lo + 1, no NaN) from the tail they lie in, or None
    when the subsample's threshold does not take in enough elements (then the caller partitions everything)."""
    n = x.size
    step = max(1, n // 4096)
    sample = x[::step]
    m = sample.size
    low = hi < n - 1 - lo  # nearer the bottom: take elements ≤ t, else ≥ t
    need = hi + 1 if low else n - lo  # elements the kept tail must hold
    r = min(m - 1, int(2 * need * m / n) + 24)  # twice the expected share of the sample, plus slack
    if r >= m // 2:
        return None
    if low:
        t = np.partition(sample, r)[r]
        kept = x[x <= t]
        if kept.size < need:
            return None
        part = np.partition(kept, (lo, hi))
        return part[lo], part[hi]
    t = np.partition(sample, m - 1 - r)[m - 1 - r]
    kept = x[x >= t]
    if kept.size < need:
        return None
    skip = n - kept.size  # elements below t: every rank ≥ lo lies in the kept tail, shifted by this many
    part = np.partition(kept, (lo - skip, hi - skip))
    return part[lo - skip], part[hi - skip]


def nncf_quantile(original: Any) -> Any:
    """NNCF's numpy ``quantile`` answered by :func:`tail_quantile` where a call reduces a whole float tensor to
    scalar quantiles (its per-sample activation statistics), by ``original`` otherwise."""

    def quantile(a: Any, q: Any, axis: Any = None, keepdims: bool = False) -> Any:
        whole = axis is None or sorted(np.atleast_1d(axis).tolist()) == list(range(np.ndim(a)))
        if not whole or not isinstance(a, np.ndarray) or np.ndim(q) != 1 or a.dtype.kind != "f":
            return original(a, q, axis, keepdims)
        out = np.array([tail_quantile(a, float(qi)) for qi in q], dtype=np.float64)
        return out.reshape((len(out),) + (1,) * a.ndim) if keepdims else out

    return quantile


# --- the declared patches -----------------------------------------------------------------------------------------
# Retired (measured with benchmarks/vendor_patches.py, saved under a tenth of the builds they target, so not worth
# tracking the vendor's internals): a memo of NNCF's find_subgraphs_matching_pattern
# (nncf/common/graph/graph_matching.py) across the specs of one shared NNCF pass; the search is a small part of
# that pass, and the memo's key (every node and edge of the graph) costs part of what it saves.

_ORT = "onnxruntime/quantization"
PATCHES: tuple[VendorPatch, ...] = (
    VendorPatch(
        name="ort.pack_bytes_to_4bit",
        package="onnxruntime",
        versions="==1.32.*",
        upstream=f"{_ORT}/quant_utils.py: pack_bytes_to_4bit",
        targets=(
            "onnxruntime.quantization.quant_utils:pack_bytes_to_4bit",
            "onnxruntime.quantization.base_quantizer:pack_bytes_to_4bit",
        ),
        make=lambda _original: pack_4bit,
        why="a Python loop over every weight byte of each INT4 weight; two strided numpy views instead",
    ),
    VendorPatch(
        name="ort.quantize_onnx_initializer",
        package="onnxruntime",
        versions="==1.32.*",
        upstream=f"{_ORT}/quant_utils.py: quantize_onnx_initializer (per-channel branch)",
        targets=("onnxruntime.quantization.qdq_quantizer:quantize_onnx_initializer",),
        make=per_channel_initializer,
        why="one quantize_nparray call per output channel; the same float32 arithmetic broadcast at once",
    ),
    VendorPatch(
        name="ort.replace_input_of_all_nodes",
        package="onnxruntime",
        versions="==1.32.*",
        upstream=f"{_ORT}/onnx_model.py: ONNXModel.replace_input_of_all_nodes",
        targets=("onnxruntime.quantization.onnx_model:ONNXModel.replace_input_of_all_nodes",),
        make=lambda _original: replace_input_of_all_nodes,
        why="every input of every node compared in Python for each quantized tensor; a C-level membership test",
    ),
    VendorPatch(
        name="nncf.quantile",
        package="nncf",
        versions="==3.4.*",
        upstream="nncf/tensor/functions/numpy_numeric.py: quantile (numeric.quantile's numpy registration)",
        targets=("nncf.tensor.functions.numeric:quantile.registry[numpy.ndarray]",),
        make=nncf_quantile,
        why="a full partition of every activation of every calibration sample for two tail quantiles",
    ),
)
BY_NAME = {p.name: p for p in PATCHES}


# --- installing them ----------------------------------------------------------------------------------------------


class _Slot:
    """A place a vendor looks a function up: a module or class attribute, or one key of a dispatch registry."""

    def __init__(self, target: str) -> None:
        module, _, path = target.partition(":")
        key = None
        if path.endswith("]"):
            path, _, key = path[:-1].partition("[")
        owner: Any = importlib.import_module(module)
        *parents, self.attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        self.owner = owner
        self.key: Any = None
        if key is not None:
            kmod, _, kname = key.rpartition(".")
            self.key = getattr(importlib.import_module(kmod), kname)
            self.owner, self.attr = getattr(owner, self.attr), None
            if self.key not in self.owner:
                raise LookupError(f"{target}: no such registry entry")
        elif not hasattr(owner, self.attr):
            raise LookupError(f"{target}: no such attribute")

    def get(self) -> Any:
        if self.attr is None:
            return self.owner[self.key]
        return self.owner.__dict__[self.attr] if isinstance(self.owner, type) else getattr(self.owner, self.attr)

    def set(self, value: Any) -> None:
        if self.attr is None:
            self.owner[self.key] = value
        else:
            setattr(self.owner, self.attr, value)

    def restore(self, original: Any, installed: Any) -> None:
        self.set(original)
        if self.attr is None:  # a dispatcher caches subclasses' lookups: none may keep pointing at the replacement
            for k, v in list(self.owner.items()):
                if v is installed:
                    self.owner[k] = original


_LOCK = threading.Lock()
_DEPTH: dict[str, int] = {}
_SAVED: dict[str, list[tuple[_Slot, Any, Any]]] = {}
_WARNED: set[tuple[str, str]] = set()


def _install(patch: VendorPatch) -> list[tuple[_Slot, Any, Any]]:
    """Put ``patch``'s replacement in each target; returns (slot, original, installed) to undo it. On an error
    nothing stays installed."""
    done: list[tuple[_Slot, Any, Any]] = []
    made: dict[int, Any] = {}  # targets holding the same original share one replacement
    try:
        for target in patch.targets:
            slot = _Slot(target)
            original = slot.get()
            if id(original) not in made:
                made[id(original)] = patch.make(original)
            slot.set(made[id(original)])
            done.append((slot, original, made[id(original)]))
    except Exception:
        for slot, original, installed in reversed(done):
            slot.restore(original, installed)
        raise
    return done


def _select(names: Sequence[str]) -> list[VendorPatch]:
    """The patches a selector list names: patch names or vendor packages; all when empty."""
    unknown = [n for n in names if n not in BY_NAME and n not in {p.package for p in PATCHES}]
    if unknown:
        raise KeyError(f"unknown vendor patch(es) {unknown}; known: {sorted(BY_NAME)}")
    return [p for p in PATCHES if not names or p.name in names or p.package in names]


def _off(patch: VendorPatch, reason: str, notes: list[str] | None) -> None:
    """Say that ``patch`` is off: in ``notes`` every time, in the log once per process and reason."""
    line = f"vendor patch {patch.name} off: {reason}"
    if notes is not None and line not in notes:
        notes.append(line)
    with _LOCK:
        first = (patch.name, reason) not in _WARNED
        _WARNED.add((patch.name, reason))
    if first:
        log.warning("%s (replaces %s; the build runs the vendor's own code)", line, patch.upstream)


@contextlib.contextmanager
def applied(*names: str, notes: list[str] | None = None) -> Iterator[list[str]]:
    """Install the named patches (patch names or vendor packages such as ``"onnxruntime"``; all when none are
    named) whose vendor version lies in their checked range, for the duration of the block; yields the names
    installed. Each patch that stays off gets a line in ``notes`` and the log. Nested and concurrent users
    (threads) share one installation: the first in installs, the last out restores the vendor's functions."""
    active: list[str] = []
    try:
        for patch in _select(names):
            reason = patch.off_reason()
            if reason is None:
                with _LOCK:
                    if not _DEPTH.get(patch.name):
                        try:
                            _SAVED[patch.name] = _install(patch)
                        except Exception as exc:  # noqa: BLE001 - the vendor moved a target: run its own code
                            reason = f"cannot install on {patch.package} {patch.installed_version()} ({exc})"
                    if reason is None:
                        _DEPTH[patch.name] = _DEPTH.get(patch.name, 0) + 1
                        active.append(patch.name)
            if reason is not None:
                _off(patch, reason, notes)
        yield list(active)
    finally:
        with _LOCK:
            for name in reversed(active):
                _DEPTH[name] -= 1
                if not _DEPTH[name]:
                    for slot, original, installed in reversed(_SAVED.pop(name)):
                        slot.restore(original, installed)


def status() -> list[PatchStatus]:
    """Every declared patch: the vendor version here, its checked range, and whether :func:`applied` would
    install it (with the reason when not)."""
    out = []
    for p in PATCHES:
        reason = p.off_reason()
        installed = p.installed_version()
        out.append(PatchStatus(p.name, p.package, installed, p.versions, p.upstream, reason is None, reason))
    return out


def main() -> int:
    for s in status():
        state = "on " if s.active else "off"
        print(f"{state}  {s.name:40} {s.package} {s.installed or '-'} (checked {s.versions})  replaces {s.upstream}")
        if s.reason:
            print(f"     {s.reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
