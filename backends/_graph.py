"""ONNX graph helpers shared by the adapters: fixed shapes, per-sample execution, ORT optimization levels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX Runtime's graph-optimization levels, by the names the adapters' ``graph_optimization`` option takes
GRAPH_OPT = ("disabled", "basic", "extended", "all")


def ort_optimization_level(name: str) -> Any:
    """The ``onnxruntime.GraphOptimizationLevel`` a ``graph_optimization`` name stands for."""
    import onnxruntime as ort

    return {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


def set_batch(proto: Any, batch: int) -> Any:
    """``proto`` (changed in place) with every dynamic batch axis of its graph inputs/outputs set to ``batch`` and
    the stale ``value_info`` dropped, ready for shape inference."""
    inits = {i.name for i in proto.graph.initializer}
    for v in [*[i for i in proto.graph.input if i.name not in inits], *proto.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    del proto.graph.value_info[:]
    return proto


def fix_batch(src: Path, dst: Path, batch: int = 1) -> Path:
    """Copy ``src`` with the batch axis of every graph input/output set to ``batch`` and shapes inferred.

    NPU compilers (QNN HTP, RKNN, Vela via TFLite, simnpu's cost model) need static shapes: QNN rejects every
    node with "Cannot get shape" on a dynamic batch axis.
    """
    import onnx

    proto = set_batch(onnx.load(str(src)), batch)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    tmp = dst.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(dst)
    return dst


def per_sample(
    run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]], feeds: Mapping[str, np.ndarray], batch: int = 1
) -> list[np.ndarray]:
    """Run a fixed-batch-``batch`` model over feeds of any batch size, concatenating the outputs."""
    n = len(next(iter(feeds.values())))
    if n == batch:
        return run(feeds)
    if n % batch:
        raise ValueError(f"batch of {n} samples does not split into the compiled batch size {batch}")
    parts = [run({k: v[i : i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(parts[0]))]
