"""Backend registry: slug → "module:Class", imported on use.

Built-in adapters are listed in ``BUILTIN``; third parties add theirs through the ``qtbench.backends``
entry-point group (``myvendor = "myvendor_qtbench:Backend"``). A backend whose module fails to import is listed
with its error by ``qtbench backends`` and never breaks the CLI or a sweep beyond its own cells.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.isolate import call_isolated

if TYPE_CHECKING:
    from qtbench.backends.base import Availability, Backend

ENTRY_POINT_GROUP = "qtbench.backends"

BUILTIN: dict[str, str] = {
    "ort": "qtbench.backends.ort:OrtBackend",
    "openvino": "qtbench.backends.openvino:OpenVinoBackend",
    "tflite": "qtbench.backends.tflite:TfliteBackend",
    "tensorrt": "qtbench.backends.tensorrt:TensorRtBackend",
    "qnn": "qtbench.backends.qnn:QnnBackend",
    "simnpu": "qtbench.backends.simnpu:SimNpuBackend",
    "vela": "qtbench.backends.vela:VelaBackend",
    "rknn": "qtbench.backends.rknn:RknnBackend",
    "nncf": "qtbench.backends.nncf_onnx:NncfOnnxBackend",
    "hailo": "qtbench.backends.vendors:HailoBackend",
    "nxp": "qtbench.backends.vendors:NxpBackend",
    "edgetpu": "qtbench.backends.vendors:EdgeTpuBackend",
}


@dataclass(frozen=True)
class BackendStatus:
    """A registered backend as ``qtbench backends`` shows it."""

    slug: str
    target: str
    origin: str  # builtin | entry-point
    available: bool
    reason: str
    versions: dict[str, str]
    description: str = ""


def registry() -> dict[str, tuple[str, str]]:
    """slug → (target, origin). Entry points never shadow a built-in slug."""
    out = {slug: (target, "builtin") for slug, target in BUILTIN.items()}
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, (ep.value, "entry-point"))
    return out


def load_class(slug: str) -> type[Backend]:
    """Import the adapter class for ``slug``; unknown slugs raise ConfigError listing the known ones."""
    reg = registry()
    if slug not in reg:
        raise ConfigError(_unknown(slug, reg))
    return load_target(reg[slug][0])


def load_target(target: str) -> type[Backend]:
    """Import a "module:Class" target (how child processes load the adapter the parent resolved)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def resolve(slug: str) -> str:
    """The "module:Class" target of ``slug`` without importing it."""
    reg = registry()
    if slug not in reg:
        raise ConfigError(_unknown(slug, reg))
    return reg[slug][0]


def _unknown(slug: str, reg: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(slug.lower(), list(reg), n=1, cutoff=0.6)
    if not close and "onnxruntime" in slug.lower():
        close = ["qnn" if "qnn" in slug.lower() else "ort"]
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"backend {slug!r} is not registered; {hint}known backends: {', '.join(sorted(reg))}"


def create(slug: str, options: dict | None = None, target: str | None = None) -> Backend:
    return (load_target(target) if target else load_class(slug))(options)


#: how long one backend's availability probe may take (an SDK import is 1–10 s; a probe that hangs, e.g. on a
#: device driver, costs this much and its own line, never the command)
PROBE_TIMEOUT_S = 30.0


def probe(slug: str, target: str | None = None, origin: str = "builtin") -> BackendStatus:
    """Availability of one backend; import errors and probe crashes become an 'unavailable' status. ``target``:
    the "module:Class" the parent resolved (a child process must not re-resolve it from its own registry)."""
    if target is None:
        target, origin = registry()[slug]
    try:
        cls = load_target(target)
        av: Availability = cls().availability()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised
        return BackendStatus(slug, target, origin, False, f"failed to load: {type(exc).__name__}: {exc}", {})
    return BackendStatus(slug, target, origin, av.available, av.reason, dict(av.versions), cls.description)


def list_backends(timeout_s: float | None = PROBE_TIMEOUT_S) -> list[BackendStatus]:
    """Every registered backend's status. With ``timeout_s`` (the default) each probe runs in its own child
    process with that limit, four side by side, so a plugin that hangs or crashes while probing costs its own
    line only and the whole listing takes about ``timeout_s`` at worst; ``None`` probes in this process."""
    reg = sorted(registry().items())
    if timeout_s is None:
        return [probe(slug, target, origin) for slug, (target, origin) in reg]
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, tuple[str, str]]) -> BackendStatus:
        slug, (target, origin) = item
        kind, value = call_isolated(probe, (slug, target, origin), timeout_s)
        if kind == "ok":
            return value
        why = f"probe did not finish within {timeout_s:g}s" if kind == "timeout" else f"probe failed: {value}"
        return BackendStatus(slug, target, origin, False, why, {})

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, reg))
