"""Worker environments for SDKs whose pins clash with qtbench's (``qtbench env create rknn|tflite``).

tflite: the ONNX → TFLite converter (onnx2tf) pins TensorFlow 2.19, numpy 1.26, onnx 1.19 and onnxruntime 1.23
exactly: it gets its own venv (2.6 GB; 74 s to build from a nearby mirror, minutes over a slow link), and the
tflite/vela backends find it by itself.

rknn-toolkit2 2.5 wants numpy ≤ 1.26, onnx ≤ 1.18, protobuf ≤ 4.25.4 and torch ≤ 2.4; a plain install drags in a
multi-GB CUDA torch. The recipe: a fresh venv, the CPU torch first (``torch==2.13.0``, a local wheel on our
machines; its API is what rknn uses), then rknn-toolkit2 with ``--no-deps`` and its listed dependencies pinned
to versions that import together, ``setuptools<81`` (rknn imports pkg_resources).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qtbench.backends import rknn, tflite
from qtbench.harness.core.errors import ConfigError

RECIPES: dict[str, list[list[str]]] = {
    "rknn": [
        ["torch==2.13.0"],
        [
            "numpy<=1.26.4",
            "protobuf>=4.21.6,<=4.25.4",
            "psutil>=5.9.0",
            "ruamel.yaml>=0.17.21",
            "scipy>=1.9.3",
            "tqdm>=4.64.1",
            "opencv-python-headless",
            "fast-histogram>=0.11",
            "onnx>=1.16.1,<=1.18.0",
            "onnxruntime>=1.17.0,<1.23",
            "setuptools<81",
        ],
        ["--no-deps", "rknn-toolkit2==2.5.0"],
    ],
    "tflite": [["onnx2tf==1.29.24"]],  # its own exact pins bring TensorFlow, tf-keras, onnx, onnxsim, ai-edge-litert
}
#: the import that proves an environment works
CHECKS = {
    "rknn": "import rknn.api; print('rknn-toolkit2 imports')",
    "tflite": "import onnx2tf, tensorflow; print('onnx2tf', onnx2tf.__version__, 'tensorflow', tensorflow.__version__)",
}


def default_path(name: str) -> Path:
    """Where the backends look for the environment when no option names one."""

    return {"rknn": rknn.DEFAULT_ENV, "tflite": tflite.CONVERTER_ENV}.get(name, rknn.DEFAULT_ENV.parent / name)


def create(name: str, path: Path | None = None, python: str = sys.executable, echo: bool = True) -> Path:
    """Build the ``name`` worker environment at ``path``; returns its interpreter. Idempotent (pip skips)."""

    if name not in RECIPES:
        raise ConfigError(f"no environment recipe {name!r}; known: {', '.join(RECIPES)}")
    path = path or default_path(name)
    py = path / "bin" / "python"
    steps = [] if py.is_file() else [[python, "-m", "venv", str(path)]]
    steps += [[str(py), "-m", "pip", "install", "-q", *args] for args in RECIPES[name]]
    steps.append([str(py), "-I", "-c", CHECKS[name]])
    for cmd in steps:
        if echo:
            print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise ConfigError(f"step failed (exit {proc.returncode}): {' '.join(cmd)}; see pip's output above")
    return py
