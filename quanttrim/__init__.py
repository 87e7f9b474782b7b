"""Quant-Trim: train hardware-neutral checkpoints that survive whatever post-training quantization a backend applies.

Needs torch (``pip install 'qtbench[train]'``). The harness never imports this package; ``qtbench train`` does,
when it runs. See :mod:`quanttrim.core` for the method and its defaults.
"""

from qtbench.quanttrim.core import QuantTrimConfig, lambda_at, percentile_at, posthoc_clip, prepare
from qtbench.quanttrim.export import export_onnx

__all__ = ["QuantTrimConfig", "export_onnx", "lambda_at", "percentile_at", "posthoc_clip", "prepare"]
