from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# One thread everywhere: the CI machine has 2 shared cores and results depend on thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    from models import tiny_cnn

    return tiny_cnn(tmp_path / "tiny.onnx")
