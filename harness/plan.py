"""Sweep planning: models × backends × specs (+ include, − exclude) → ordered, keyed cells.

A cell's key hashes everything that makes two measurements comparable: model bytes, backend and its version
and options, device, spec, timing protocol and data hashes. Re-running a sweep skips keys already recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from harness.config import BackendEntry, ModelEntry, Sweep
from harness.errors import ConfigError
from harness.spec import QuantSpec


@dataclass(frozen=True)
class Cell:
    """One (model, backend, spec) point of a sweep."""

    index: int
    model: ModelEntry
    backend: BackendEntry
    spec: QuantSpec
    key: str = ""
    skip_reason: str | None = None
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.model.display_name} × {self.backend.name} × {self.spec.id}"


def expand(sweep: Sweep) -> list[tuple[ModelEntry, BackendEntry, QuantSpec]]:
    """The matrix in config order, minus excludes, plus includes (deduplicated)."""
    backends = {b.key: b for b in sweep.backends}
    models = {m.display_name: m for m in sweep.models}
    out: list[tuple[ModelEntry, BackendEntry, QuantSpec]] = []
    seen: set[tuple[str, str, str]] = set()

    def add(m: ModelEntry, b: BackendEntry, s: QuantSpec) -> None:
        k = (m.display_name, b.key, s.id)
        if k not in seen:
            seen.add(k)
            out.append((m, b, s))

    for m in sweep.models:
        for b in sweep.backends:
            for s in sweep.specs:
                if not any(f.matches(m.display_name, b.key, s.id) for f in sweep.exclude):
                    add(m, b, s)
    for i, inc in enumerate(sweep.include):
        for mname in _as_list(inc.model):
            for bname in _as_list(inc.backend):
                for sid in _as_list(inc.spec):
                    if mname not in models:
                        raise ConfigError(
                            f"include[{i}].model: {mname!r} is not a model of this sweep ({', '.join(models)})"
                        )
                    b = backends.get(bname, BackendEntry(name=bname))
                    add(models[mname], b, QuantSpec.parse(sid, f"include[{i}].spec"))
    return out


def _as_list(v: str | list[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def cell_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def artifact_key(
    model_sha: str,
    spec: QuantSpec,
    backend_version: str,
    options: dict[str, Any],
    calib_sha: str,
    side_files: dict[str, str] | None = None,
    device: str = "",
) -> str:
    """The compiled-artifact cache key: what decides the artifact's bytes (not the timing protocol or device).

    The sweep and ``qtbench localize`` both call this, so a localisation reuses the sweep's compiled artifacts.
    ``side_files`` are files besides the model that decide the artifact (a pre-converted ``.tflite``), by hash.
    ``device``: the machine identity a non-portable artifact is bound to (``Backend.device_identity``).
    """
    return cell_key(
        {
            "model": model_sha,
            "spec": spec.id,
            "backend_version": backend_version,
            "options": options,
            "calib": calib_sha if spec.is_static else "",
            **({"artifact_inputs": side_files} if side_files else {}),
            **({"device": device} if device else {}),
        }
    )
