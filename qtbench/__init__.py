"""qtbench's Python API: ``import qtbench`` gives the harness's public names (``run_sweep``, ``load_results``,
``QuantSpec``, ``compare``, ...) without importing an inference runtime, torch or a vendor SDK.

The code lives in the repository's ``harness/`` (sweeps, measurement, records, CLI), ``backends/`` (one adapter
per runtime), ``devices/`` and ``quanttrim/`` (the training method) folders; this package is their front door::

    import qtbench

    df = qtbench.run_sweep("sweep.yaml")          # the rows, one per cell, as a pandas DataFrame
    rows = qtbench.load_results("results/mysweep")
"""

from __future__ import annotations

from typing import Any

import harness

__version__ = harness.__version__
__all__ = list(harness.__all__)


def __getattr__(name: str) -> Any:
    if name in harness.__all__:
        return getattr(harness, name)
    raise AttributeError(f"module 'qtbench' has no attribute {name!r}; its API is: {', '.join(sorted(__all__))}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
