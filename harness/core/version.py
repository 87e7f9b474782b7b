"""qtbench's version: stamped into every result row and the crash files."""

__version__ = "0.1.0"
