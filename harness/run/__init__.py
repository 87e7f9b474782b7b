"""The run layer: planner, orchestrator, executors (local and Ray), cell, store.

Imports the core, devices and backends; never the analysis or the CLI."""
