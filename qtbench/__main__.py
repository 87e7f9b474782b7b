"""``python -m qtbench``: the same command line as ``qtbench``."""

from qtbench.harness.cli import entry

entry()
