"""qtbench's Python API: ``import qtbench`` gives the public names (``run_sweep``, ``load_results``, ``QuantSpec``,
``compare``, ...) without importing an inference runtime, torch or a vendor SDK.

The subpackages live in the repository's folders the project's layout names: ``qtbench.harness`` is ``harness/``
(core, run, analysis, CLI), ``qtbench.backends`` is ``backends/``, ``qtbench.devices`` is ``devices/`` and
``qtbench.quanttrim`` is ``quanttrim/``; an installed copy holds them inside this package::

    import qtbench

    df = qtbench.run_sweep("sweep.yaml")          # the rows, one per cell, as a pandas DataFrame
    rows = qtbench.load_results("results/mysweep")
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# A source checkout keeps the subpackages beside this folder (pyproject's package-dir maps them in an install);
# searching the checkout's root too makes ``qtbench.harness`` import from a clone whether or not it is installed.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "harness" / "__init__.py").is_file() and not (Path(__file__).parent / "harness").exists():
    __path__.append(str(_checkout))

from qtbench.harness.core.version import __version__  # noqa: E402 - needs the path above in a checkout

_API = {
    "run_sweep": "qtbench.harness.run.sweep",
    "load_results": "qtbench.harness.run.store",
    "load_sweep": "qtbench.harness.core.config",
    "parse_sweep": "qtbench.harness.core.config",
    "Sweep": "qtbench.harness.core.config",
    "QuantSpec": "qtbench.harness.core.spec",
    "Record": "qtbench.harness.core.records",
    "demo_config_path": "qtbench.harness.demo",
    "load_localization": "qtbench.harness.analysis.localize",
    "localize": "qtbench.harness.analysis.localize",
    "compare": "qtbench.harness.analysis.compare",
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'qtbench' has no attribute {name!r}; its API is: {', '.join(sorted(__all__))}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
