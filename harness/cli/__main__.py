"""``python -m qtbench.harness.cli``."""

from qtbench.harness.cli import entry

entry()
