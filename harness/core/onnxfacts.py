"""Facts of an ONNX file read without a runtime: its graph (parsed once per file version), input and output
names, whether the batch axis is dynamic, metadata. Planning, data checks and cells all ask here."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelFacts:
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool


_HEADERS: dict[tuple[str, int, int], tuple[ModelFacts, dict[str, str]]] = {}


def onnx_graph(path: str | Path) -> Any:
    """The ONNX model at ``path`` without its external data, the last file parsed kept (read-only: never mutate
    it): planning reads one model's facts, external weights, input types and metadata in a row, and a large model
    with inline weights is slow to parse. :func:`forget_onnx_graph` frees it."""
    st = Path(path).stat()
    return _parsed(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _parsed(path: str, size: int, mtime_ns: int) -> Any:
    import onnx

    return onnx.load(path, load_external_data=False)


def forget_onnx_graph() -> None:
    """Drop the kept parse (a parent that has planned holds no model in memory while cells run)."""
    _parsed.cache_clear()


def model_header(path: str | Path) -> tuple[ModelFacts, dict[str, str]]:
    """Graph facts and metadata_props of an ONNX file, parsed once per file version in this process (a warm
    worker measures many cells of one model and would otherwise parse it for each)."""

    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        model = onnx_graph(path)
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        dyn = all(
            i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in inputs
        )
        facts = ModelFacts([i.name for i in inputs], [o.name for o in graph.output], dyn)
        if len(_HEADERS) >= 8:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[key] = (facts, {p.key: p.value for p in model.metadata_props})
    return _HEADERS[key]


def model_facts(path: str | Path) -> ModelFacts:
    """Input/output names and whether the batch axis is dynamic, from the ONNX graph (no runtime needed)."""
    return model_header(path)[0]
