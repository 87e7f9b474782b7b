"""Export a (Quant-Trim or plain) torch model to a single-file ONNX with no custom ops.

Fake quantization is training-time only: export strips it (the checkpoint is FP, hardware-neutral), lets the
exporter fold BN into the convs, and records how the model was trained in ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_OPSET = 17


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    metadata: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` to ``path`` (opset ≤ 17, one file, dynamic batch) and return the path.

    ``metadata`` values are JSON-encoded into ONNX ``metadata_props`` (key ``qtbench.training``); a model
    prepared by :func:`quanttrim.prepare` adds its method and parameters automatically.
    """
    import onnx

    if opset > DEFAULT_OPSET:
        raise ValueError(f"opset {opset} > {DEFAULT_OPSET}: qtbench's backends are validated up to opset 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    controller = getattr(model, "quanttrim", None)
    if controller is not None:
        meta.setdefault("method", "quanttrim")
        meta.setdefault("quanttrim", controller.describe())
    else:
        meta.setdefault("method", "fp")
    was_training = model.training
    model.eval()
    ctx = controller.exporting() if controller is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        torch.onnx.export(
            model,
            (example_input,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            do_constant_folding=True,
            dynamo=False,
        )
    model.train(was_training)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key = "qtbench.training"
    entry.value = json.dumps(meta, sort_keys=True, default=str)
    onnx.save(proto, str(path))
    return path
