"""The backends a localisation runs: sweep entries, bare slugs or ``SLUG:KEY=VALUE`` targets, and the sweep
cache folder each one's artifact is shared through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench.harness.run.plan import artifact_key


@dataclass
class BackendTarget:
    """One backend to localise: the sweep entry (label, slug, options)."""

    key: str
    slug: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_backends(names: list[str] | None, sweep: Any) -> list[BackendTarget]:
    """Sweep entries by label/slug; bare slugs; ``simnpu:PROFILE`` for a simnpu profile."""
    known = {b.key: b for b in sweep.backends}
    if not names:
        return [BackendTarget(b.key, b.name, dict(b.options)) for b in sweep.backends]
    out = []
    for n in names:
        if n in known:
            b = known[n]
            out.append(BackendTarget(b.key, b.name, dict(b.options)))
        elif ":" in n:  # simnpu:PROFILE, or SLUG:KEY=VALUE[,KEY=VALUE] (values read as YAML)
            import yaml

            slug, rest = n.split(":", 1)
            if "=" in rest:
                pairs = [kv.split("=", 1) for kv in rest.split(",")]
                options = {k: yaml.safe_load(v) for k, v in pairs}
            else:
                options = {"profile": rest}
            out.append(BackendTarget(_option_label(slug, options), slug, options))
        else:
            out.append(BackendTarget(n, n, {}))
    return out


def _option_label(slug: str, options: dict[str, Any]) -> str:
    """A short, file-safe label for ``SLUG:KEY=VALUE`` targets: a path value contributes its file name, not the
    whole path (labels land in tables, reports and file names); a long label keeps 40 characters and a hash."""
    import hashlib
    import re

    parts, shortened = [], False
    for v in options.values():
        text = str(v)
        if "/" in text or "\\" in text:
            text, shortened = Path(text).name or "path", True
        parts.append(re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x")
    label = f"{slug}-" + "-".join(parts)
    if len(label) > 48 or shortened:  # two paths with one file name must not share a label
        digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
        label = f"{label[:40]}-{digest}"
    return label


def artifact_workdir(
    cache: Path, target: BackendTarget, version: str, model_sha: str, spec: Any, calib_sha: str
) -> Path:
    """The sweep's cache folder for this cell (the same :func:`qtbench.harness.run.plan.artifact_key`): artifacts are
    shared."""

    key = artifact_key(model_sha, spec, version, target.options, calib_sha)
    return cache / "artifacts" / target.slug / key
