"""qtbench's harness: sweep configuration, planning, measurement, metrics, records and the CLI.

Importing ``harness`` is cheap: the public names below load on first use, and nothing here imports an inference
runtime, torch or a vendor SDK (a test guards this).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run_sweep": "harness.sweep",
    "load_results": "harness.store",
    "load_sweep": "harness.config",
    "parse_sweep": "harness.config",
    "Sweep": "harness.config",
    "QuantSpec": "harness.spec",
    "Record": "harness.records",
    "demo_config_path": "harness.demo",
    "load_localization": "harness.localize",
    "localize": "harness.localize",
    "compare": "harness.compare",  # a callable module: harness.compare(results, "fp", "quanttrim") -> DataFrame
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "compare":  # the module is callable (and becomes this attribute once imported)
        return importlib.import_module(_LAZY[name])
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
