"""Convert an ONNX checkpoint to the .tflite variants the `tflite` backend runs (needs qtbench[tflite-convert]).

    python scripts/convert_tflite.py MODEL.onnx --calib CALIB.npz [--out DIR] [--quant-type per-channel]

Writes ``<stem>.<variant>.tflite`` next to the model (or into --out): float32, float16, dynamic_range_quant,
full_integer_quant (int8 in/out, per channel by default) and full_integer_quant_pt (per tensor). onnx2tf turns
NCHW graphs into NHWC; the calibration images are transposed accordingly and handed to it as a local .npy, so
it never fetches its sample data from the web. Runs where TensorFlow installs (a separate venv is fine): the
backend only needs ai-edge-litert.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {
    "float32": "_float32.tflite",
    "float16": "_float16.tflite",
    "dynamic_range_quant": "_dynamic_range_quant.tflite",
    "full_integer_quant": "_full_integer_quant.tflite",
}


def convert(model: Path, calib: Path, out: Path, quant_type: str, suffix: str = "") -> list[Path]:
    import onnx
    import onnx2tf

    graph = onnx.load(str(model)).graph
    inits = {i.name for i in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in inits)
    with np.load(calib) as z:
        x = next(z[k] for k in z.files if k != "labels").astype(np.float32)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        nhwc = Path(tmp) / "calib_nhwc.npy"
        np.save(nhwc, np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x)
        onnx2tf.convert(
            input_onnx_file_path=str(model),
            output_folder_path=tmp,
            output_dynamic_range_quantized_tflite=True,
            output_integer_quantized_tflite=True,
            quant_type=quant_type,
            # [input name, calibration data, mean, std]: data already normalised, so mean 0 / std 1
            custom_input_op_name_np_data_path=[[name, str(nhwc), 0.0, 1.0]],
            input_quant_dtype="int8",
            output_quant_dtype="int8",
            overwrite_input_shape=[f"{name}:1," + ",".join(str(d) for d in x.shape[1:])],
            non_verbose=True,
        )
        for variant, ending in VARIANTS.items():
            produced = next(Path(tmp).glob(f"*{ending}"), None)
            if produced is None:
                continue
            target = out / f"{model.stem}.{variant}{suffix}.tflite"
            shutil.copy(produced, target)
            written.append(target)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", type=Path)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or args.model.parent
    out.mkdir(parents=True, exist_ok=True)
    files = convert(args.model, args.calib, out, "per-channel")
    # per-tensor full-integer variant, for int8 per-tensor specs (the other per-tensor files go with the folder)
    with tempfile.TemporaryDirectory() as scratch:
        for f in convert(args.model, args.calib, Path(scratch), "per-tensor"):
            if ".full_integer_quant." in f.name:
                target = out / f.name.replace(".full_integer_quant.", ".full_integer_quant_pt.")
                shutil.copy(f, target)
                files.append(target)
    for f in files:
        print(f"{f} ({f.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
