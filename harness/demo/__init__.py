"""The bundled demo: checkpoints, Fashion-MNIST splits and the sweep file that `qtbench sweep` runs by default."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent


def demo_config_path() -> Path:
    return DEMO_DIR / "demo.yaml"
