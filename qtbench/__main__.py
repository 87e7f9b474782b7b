"""``python -m qtbench``: the same command line as ``qtbench``."""

from harness.cli import entry

entry()
