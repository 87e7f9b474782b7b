"""The graph forms other exporters write, rebuilt offline from one small CNN (onnx.helper, seeded, no torch).

Each form is the same network as another exporter would hand it over: Paddle2ONNX's ``Constant`` weights and
``-1`` dimensions, torch's dynamic H/W with a ``Shape``-driven ``Reshape``, an old opset with attribute axes,
fp16 checkpoints, external data, tf2onnx's NHWC input and transposes, names with ``/``, ``:`` and spaces, a
two-input token model with int64 ids. :func:`build` writes one form with its evaluation data; :data:`FORMS`
lists them. Real exports from PyPI wheels (``real_exports``) stand beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5
FORMS = (
    "initializers",
    "constant_weights",
    "dynamic_hw",
    "opset11",
    "fp16",
    "external_data",
    "odd_names",
    "nhwc",
    "token_ids",
    "yolo_head",
    "sigmoid_segmenter",
)
# the task each form's output is scored with (the CNN forms: classification, inferred from the N×C logits)
TASKS: dict[str, Any] = {
    "yolo_head": {"name": "detection", "format": "yolov8", "labels": False},
    "sigmoid_segmenter": "binary_segmentation",
}


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.3, (8, 1, 3, 3)),  # depthwise
        "b2": rng.normal(0, 0.1, 8),
        "w3": rng.normal(0, 0.3, (16, 8, 1, 1)),
        "b3": rng.normal(0, 0.1, 16),
        "wf": rng.normal(0, 0.8, (CLASSES, 16)),
        "bf": np.zeros(CLASSES),
    }
    w["w3"][0, 0, 0, 0] = 3.0  # a heavy tail: 4-bit grids feel it, 8-bit ones hardly
    return {k: v.astype(np.float32) for k, v in w.items()}


def _cnn_nodes(x: str, names: dict[str, str], flatten: list[Any] | None = None) -> list[Any]:
    n = names
    nodes = [
        helper.make_node("Conv", [x, n["w1"], n["b1"]], [n["c1"]], pads=[1, 1, 1, 1], name=n["conv1"]),
        helper.make_node("Relu", [n["c1"]], [n["r1"]], name=n["relu1"]),
        helper.make_node("Conv", [n["r1"], n["w2"], n["b2"]], [n["c2"]], pads=[1, 1, 1, 1], group=8, name=n["dw"]),
        helper.make_node("Clip", [n["c2"], n["lo"], n["hi"]], [n["r2"]], name=n["relu6"]),
        helper.make_node("Conv", [n["r2"], n["w3"], n["b3"]], [n["c3"]], name=n["pw"]),
        helper.make_node("Relu", [n["c3"]], [n["r3"]], name=n["relu3"]),
        helper.make_node("GlobalAveragePool", [n["r3"]], [n["g"]], name=n["gap"]),
    ]
    nodes += flatten or [helper.make_node("Flatten", [n["g"]], [n["f"]], name=n["flat"])]
    nodes.append(helper.make_node("Gemm", [n["f"], n["wf"], n["bf"]], [n["out"]], transB=1, name=n["fc"]))
    return nodes


_PLAIN = {
    k: k
    for k in (
        "w1 b1 w2 b2 w3 b3 wf bf lo hi c1 r1 c2 r2 c3 r3 g f out conv1 relu1 dw relu6 pw relu3 gap flat fc".split()
    )
}
_PLAIN["out"] = "logits"


def _odd_names() -> dict[str, str]:
    """Names as torch/tf exporters write them: scopes with '/', ':0' suffixes, spaces."""
    return {k: (f"/backbone/{k}.weight" if k.startswith(("w", "b")) else f"/backbone/{k}/Op:0 out") for k in _PLAIN} | {
        "out": "logits:0"
    }


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any], opset: int = 17) -> Any:
    graph = helper.make_graph(nodes, "export_form", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 13 else 7
    return model


def _inits(names: dict[str, str], w: dict[str, np.ndarray], dtype: Any = np.float32) -> list[Any]:
    out = [numpy_helper.from_array(v.astype(dtype), names[k]) for k, v in w.items()]
    out += [
        numpy_helper.from_array(np.array(0.0, dtype), names["lo"]),
        numpy_helper.from_array(np.array(6.0, dtype), names["hi"]),
    ]
    return out


def cnn(form: str, seed: int = 0) -> tuple[Any, str]:
    """The CNN in ``form``; returns (model, input layout "nchw" | "nhwc")."""
    w = _weights(seed)
    f32 = TensorProto.FLOAT
    names = _odd_names() if form == "odd_names" else dict(_PLAIN)
    x = "x:0" if form == "odd_names" else "x"
    shape: list[Any] = ["N", 3, 16, 16]
    layout = "nchw"
    flatten = None
    pre: list[Any] = []
    opset = 17
    dtype = np.float32
    elem = f32
    if form == "dynamic_hw":
        shape = ["N", 3, "H", "W"]
        flatten = [  # torch's x.view(x.size(0), -1): Shape → Gather → Unsqueeze → Concat → Reshape
            helper.make_node("Shape", [names["g"]], ["g_shape"]),
            helper.make_node("Gather", ["g_shape", "zero"], ["g_n"], axis=0),
            helper.make_node("Unsqueeze", ["g_n", "axes0"], ["g_n1"]),
            helper.make_node("Concat", ["g_n1", "minus1"], ["g_newshape"], axis=0),
            helper.make_node("Reshape", [names["g"], "g_newshape"], [names["f"]]),
        ]
    if form == "opset11":
        opset = 11
        flatten = [helper.make_node("Squeeze", [names["g"]], [names["f"]], axes=[2, 3])]  # axes as an attribute
    if form == "nhwc":
        layout = "nhwc"
        shape = ["N", 16, 16, 3]
        pre = [helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2], name="tf/transpose")]
    if form == "fp16":
        dtype, elem = np.float16, TensorProto.FLOAT16
    nodes = pre + _cnn_nodes("x_nchw" if pre else x, names, flatten)
    inits = _inits(names, w, dtype)
    if form == "dynamic_hw":
        inits += [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([0], np.int64), "axes0"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(x, elem, shape)],
        [helper.make_tensor_value_info(names["out"], elem, ["N", CLASSES])],
        inits,
        opset,
    )
    if form == "constant_weights":
        model = as_constant_nodes(model)
        model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # Paddle2ONNX writes -1 for "dynamic"
    return model, layout


def as_constant_nodes(model: Any) -> Any:
    """Every initializer as a ``Constant`` node (Paddle2ONNX, some tf2onnx and torch paths)."""
    g = model.graph
    consts = [helper.make_node("Constant", [], [i.name], value=i, name=f"const/{i.name}") for i in g.initializer]
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    return model


def token_model(seed: int = 0, vocab: int = 50, dim: int = 16, seq: int = 12) -> Any:
    """Two int64 inputs (token ids, attention mask) → embedding → masked mean → Gemm logits."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, 1.0, (vocab, dim)).astype(np.float32)
    w = rng.normal(0, 0.5, (dim, dim)).astype(np.float32)
    w[0, 0] = 4.0
    wf = rng.normal(0, 0.5, (CLASSES, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["e"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes2"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("MatMul", ["em", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("ReduceMean", ["hr", "axes1"], ["pooled"], keepdims=0),
        helper.make_node("Gemm", ["pooled", "wf", "bf"], ["logits"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(emb, "embedding"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(wf, "wf"),
        numpy_helper.from_array(np.zeros(CLASSES, np.float32), "bf"),
        numpy_helper.from_array(np.array([2], np.int64), "axes2"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
    ]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", seq]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
        18,
    )


def _conv(name: str, x: str, w: np.ndarray, b: np.ndarray, out: str, stride: int = 1) -> tuple[Any, list[Any]]:
    pad = w.shape[-1] // 2
    node = helper.make_node(
        "Conv", [x, f"{name}.weight", f"{name}.bias"], [out], pads=[pad] * 4, strides=[stride] * 2, name=name
    )
    return node, [numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")]


def yolo_head(seed: int = 0, classes: int = 3, size: int = 32) -> Any:
    """A YOLOv8-style detector: strided convs to an N×(4+C)×A head (A = 8×8 anchors), boxes as cx, cy, w, h in
    input pixels and per-class sigmoid scores, as ultralytics exports it (no objectness, no NMS in the graph)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    chans = [3, 8, 16]
    x = "images"
    for i in range(2):
        n, t = _conv(
            f"/model.{i}/conv",
            x,
            rng.normal(0, 0.4, (chans[i + 1], chans[i], 3, 3)).astype(np.float32),
            rng.normal(0, 0.1, chans[i + 1]).astype(np.float32),
            f"/model.{i}/conv_out",
            stride=2,
        )
        nodes += [n, helper.make_node("Relu", [f"/model.{i}/conv_out"], [f"/model.{i}/act"], name=f"/model.{i}/act")]
        inits += t
        x = f"/model.{i}/act"
    n, t = _conv(
        "/model.2/head",
        x,
        rng.normal(0, 0.5, (4 + classes, 16, 1, 1)).astype(np.float32),
        rng.normal(0, 0.3, 4 + classes).astype(np.float32),
        "/model.2/raw",
    )
    nodes.append(n)
    inits += t
    anchors = (size // 4) ** 2
    scale = np.array([size, size, size / 2, size / 2] + [1.0] * classes, np.float32).reshape(1, -1, 1)
    nodes += [
        helper.make_node("Reshape", ["/model.2/raw", "head_shape"], ["/model.2/flat"], name="/model.2/Reshape"),
        helper.make_node("Sigmoid", ["/model.2/flat"], ["/model.2/sig"], name="/model.2/Sigmoid"),
        helper.make_node("Mul", ["/model.2/sig", "head_scale"], ["output0"], name="/model.2/Mul"),
    ]
    inits += [
        numpy_helper.from_array(np.array([-1, 4 + classes, anchors], np.int64), "head_shape"),
        numpy_helper.from_array(scale, "head_scale"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 4 + classes, anchors])],
        inits,
    )


def sigmoid_segmenter(seed: int = 0, size: int = 16) -> Any:
    """A saliency/matting-style segmenter: convs to one channel and a Sigmoid, an N×1×H×W probability map."""
    rng = np.random.default_rng(seed)
    n1, t1 = _conv(
        "enc",
        "x",
        rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32),
        rng.normal(0, 0.1, 8).astype(np.float32),
        "enc_out",
    )
    n2, t2 = _conv(
        "dec",
        "enc_act",
        rng.normal(0, 0.5, (1, 8, 3, 3)).astype(np.float32),
        np.array([5.2], np.float32),
        "mask_logits",
    )
    nodes = [
        n1,
        helper.make_node("Relu", ["enc_out"], ["enc_act"], name="enc_act"),
        n2,
        helper.make_node("Sigmoid", ["mask_logits"], ["mask"], name="mask"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, size, size])],
        t1 + t2,
    )


def torch_dynamo(folder: Path, n: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """The CNN exported by torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``: opset 18, its own
    node names, dynamic batch); needs torch and onnxscript. Returns (model, data) like :func:`build`."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 16, 1),
        torch.nn.Hardswish(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, CLASSES),
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "torch_dynamo.onnx"
    x = torch.rand(2, 3, 16, 16)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(net, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},), external_data=False)
    feeds = {
        onnx.load(str(path)).graph.input[0].name: np.random.default_rng(seed + 1).random(
            (n, 3, 16, 16), dtype=np.float32
        )
    }
    data = folder / "torch_dynamo.npz"
    np.savez(data, **feeds, labels=_labels(path, feeds))
    return path, data


def _save(model: Any, path: Path, external: bool = False) -> Path:
    onnx.checker.check_model(model)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _labels(model_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Labels = the float model's own top-1 (so accuracy is meaningful and FP32 scores 100 %)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return np.argmax(sess.run(None, feeds)[0], axis=1).astype(np.int64)


def build(form: str, folder: Path, n: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Write ``form``'s model and evaluation data (with labels) into ``folder``; returns (model, data)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    path = folder / f"{form}.onnx"
    if form == "token_ids":
        model = token_model(seed)
        _save(model, path)
        feeds = {
            "input_ids": rng.integers(0, 50, (n, 12)).astype(np.int64),
            "attention_mask": (rng.random((n, 12)) > 0.2).astype(np.int64),
        }
    elif form in ("yolo_head", "sigmoid_segmenter"):
        model = yolo_head(seed) if form == "yolo_head" else sigmoid_segmenter(seed)
        _save(model, path)
        size = 32 if form == "yolo_head" else 16
        name = model.graph.input[0].name
        feeds = {name: rng.random((n, 3, size, size), dtype=np.float32)}
        data = folder / f"{form}.npz"
        if form == "yolo_head":
            np.savez(data, **feeds)  # scored against FP32 only (labels: false)
        else:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            masks = (sess.run(None, feeds)[0][:, 0] > 0.5).astype(np.int64)  # the FP32 mask as ground truth
            np.savez(data, **feeds, labels=masks)
        return path, data
    else:
        model, layout = cnn(form, seed)
        _save(model, path, external=form == "external_data")
        x = rng.random((n, 3, 16, 16), dtype=np.float32)
        if layout == "nhwc":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if form == "fp16":
            x = x.astype(np.float16)
        feeds = {"x:0" if form == "odd_names" else "x": x}
    data = folder / f"{form}.npz"
    np.savez(data, **feeds, labels=_labels(path, feeds))
    return path, data


def real_exports() -> dict[str, Path]:
    """Models that PyPI wheels ship (installed by the ``test`` extra): name → path; empty when not installed.

    rapidocr-onnxruntime ships PaddleOCR's exports made by Paddle2ONNX: weights as ``Constant`` nodes, dims of -1
    and dynamic H/W, opsets 11–12; the classifier (0.6 MB) is small enough to run on every backend in tests.
    """
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return {}
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    found = {
        "ppocr_cls": models / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "ppocr_det": models / "ch_PP-OCRv4_det_infer.onnx",
        "ppocr_rec": models / "ch_PP-OCRv4_rec_infer.onnx",
    }
    return {k: v for k, v in found.items() if v.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation data for the real PP-OCR exports: rendered text with true labels (no network, no image files)
# ---------------------------------------------------------------------------------------------------------------
_WORDS = "qtbench edge npu int8 int4 scale clip onnx model 2026 backend latency 7 fps board test data".split()


def _text_image(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[Any, str, tuple[int, ...]]:
    """A light background with one dark word or two; returns (PIL image, text, its bounding box)."""
    from PIL import Image, ImageDraw, ImageFont

    text = " ".join(rng.choice(_WORDS, size=int(rng.integers(1, 3))))
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=size)
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    x = int(rng.integers(0, max(1, width - tw))) - box[0]
    y = int(rng.integers(0, max(1, height - th))) - box[1]
    draw.text((x, y), text, fill=tuple(int(v) for v in rng.integers(0, 60, 3)), font=font)
    return img, text, draw.textbbox((x, y), text, font=font)


def ocr_data(kind: str, model: Path, folder: Path, n: int = 16, seed: int = 0) -> Path:
    """Evaluation data (with true labels) for a PP-OCR export, preprocessed as PaddleOCR does.

    ``cls``: 3×48×192 word crops, upright (label 0) or turned 180° (label 1); ``det``: 3×96×160 pages in
    ImageNet normalisation with 0/1 text masks (the box of each word) for ``binary_segmentation``; ``rec``:
    3×48×320 word crops with the word as class ids of the model's own dictionary (its ``character`` metadata;
    CTC blank 0) for ``sequence`` with ``ctc``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    if kind == "cls":
        for i in range(n):
            img, _, _ = _text_image(rng, 48, 192, 30)
            arr = np.asarray(img, np.float32)
            if i % 2:
                arr = arr[::-1, ::-1]
            images.append(((arr / 255 - 0.5) / 0.5).transpose(2, 0, 1))
            labels.append(i % 2)
        out = {"x": np.stack(images), "labels": np.array(labels, np.int64)}
    elif kind == "det":
        mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
        for _ in range(n):
            img, _, box = _text_image(rng, 96, 160, 24)
            mask = np.zeros((96, 160), np.int64)
            mask[max(box[1], 0) : box[3], max(box[0], 0) : box[2]] = 1
            images.append(((np.asarray(img, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
            labels.append(mask)
        out = {"x": np.stack(images), "labels": np.stack(labels)}
    elif kind == "rec":
        meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
        chars = meta["character"].splitlines()
        index = {c: i + 1 for i, c in enumerate(chars)}  # 0 = CTC blank
        if " " not in index:
            index[" "] = len(chars) + 1  # PaddleOCR appends the space class after the dictionary
        width = 24
        for _ in range(n):
            img, text, _ = _text_image(rng, 48, 320, 28)
            images.append(((np.asarray(img, np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1))
            ids = [index[c] for c in text]
            labels.append(ids + [-1] * (width - len(ids)))
        out = {"x": np.stack(images), "labels": np.array(labels, np.int64)}
    else:
        raise ValueError(f"unknown PP-OCR model kind {kind!r}; use cls, det or rec")
    path = folder / f"{kind}.npz"
    np.savez(path, **out)
    return path
