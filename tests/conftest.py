from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# One thread everywhere: the CI machine has 2 shared cores and results depend on thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# a converter environment built on this machine (`qtbench env create tflite`) would make every tflite/vela cell of
# every test convert with TensorFlow: tests see none unless they name one ($QTBENCH_TF_PYTHON, the sdk tests)
os.environ["QTBENCH_TFLITE_ENV"] = "/nonexistent/qtbench-tests-no-tflite-env"


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    from models import tiny_cnn

    return tiny_cnn(tmp_path / "tiny.onnx")
