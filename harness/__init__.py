"""qtbench's harness, in layers a newcomer reads in the order a sweep runs:

- :mod:`qtbench.harness.core` — specs, errors, data, ONNX facts, intake, calibration, metrics, tasks, records and
  the artifact audit; imports nothing above it.
- :mod:`qtbench.backends` and :mod:`qtbench.devices` (beside this folder) — the adapters and the telemetry; they
  import the core only.
- :mod:`qtbench.harness.run` — planner, orchestrator, executors, cell, store.
- :mod:`qtbench.harness.analysis` — gates, studies, reports, localisation; they read results through the store.
- :mod:`qtbench.harness.cli` — one module per command.

A test (tests/test_layers.py) holds every import to that order and refuses cycles.
"""

from qtbench.harness.core.version import __version__

__all__ = ["__version__"]
