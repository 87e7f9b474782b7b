"""Backend registry: slug → "module:Class", imported on use.

Built-in adapters are listed in ``BUILTIN``; third parties add theirs through the ``qtbench.backends``
entry-point group (``myvendor = "myvendor_qtbench:Backend"``). A backend whose module fails to import is listed
with its error by ``qtbench backends`` and never breaks the CLI or a sweep beyond its own cells.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.errors import ConfigError

if TYPE_CHECKING:
    from backends.base import Availability, Backend

ENTRY_POINT_GROUP = "qtbench.backends"

BUILTIN: dict[str, str] = {
    "ort": "backends.ort:OrtBackend",
    "openvino": "backends.openvino:OpenVinoBackend",
    "tflite": "backends.tflite:TfliteBackend",
    "tensorrt": "backends.tensorrt:TensorRtBackend",
    "qnn": "backends.qnn:QnnBackend",
    "simnpu": "backends.simnpu:SimNpuBackend",
    "vela": "backends.vela:VelaBackend",
    "rknn": "backends.rknn:RknnBackend",
    "hailo": "backends.vendors:HailoBackend",
    "nxp": "backends.vendors:NxpBackend",
    "edgetpu": "backends.vendors:EdgeTpuBackend",
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
        raise ConfigError(f"backend {slug!r} is not registered; known backends: {', '.join(sorted(reg))}")
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
        raise ConfigError(f"backend {slug!r} is not registered; known backends: {', '.join(sorted(reg))}")
    return reg[slug][0]


def create(slug: str, options: dict | None = None, target: str | None = None) -> Backend:
    return (load_target(target) if target else load_class(slug))(options)


def probe(slug: str) -> BackendStatus:
    """Availability of one backend; import errors and probe crashes become an 'unavailable' status."""
    target, origin = registry()[slug]
    try:
        cls = load_class(slug)
        av: Availability = cls().availability()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised
        return BackendStatus(slug, target, origin, False, f"failed to load: {type(exc).__name__}: {exc}", {})
    return BackendStatus(slug, target, origin, av.available, av.reason, dict(av.versions), cls.description)


def list_backends(timeout_s: float | None = None) -> list[BackendStatus]:
    """Every registered backend's status; with ``timeout_s``, each probe runs in a child process with that limit,
    so one plugin that hangs or crashes while probing costs its own line only."""
    if timeout_s is None:
        return [probe(slug) for slug in sorted(registry())]
    from harness.isolate import call_isolated

    out = []
    for slug, (target, origin) in sorted(registry().items()):
        kind, value = call_isolated(probe, (slug,), timeout_s)
        if kind == "ok":
            out.append(value)
        else:
            why = f"probe did not finish within {timeout_s:g}s" if kind == "timeout" else f"probe failed: {value}"
            out.append(BackendStatus(slug, target, origin, False, why, {}))
    return out
