"""RKNN worker: runs inside the rknn-toolkit2 virtual environment, never imported by qtbench itself.

rknn-toolkit2 pins numpy ≤ 1.26, onnx ≤ 1.18 and an old torch, and some builds crash the Python process, so the
``rknn`` adapter starts this file with the worker environment's Python (``qtbench env create rknn``) and talks to it
over a small protocol: one JSON command per line on stdin, one JSON reply per line on the file descriptor given
as argv[1] (rknn-toolkit2 prints its logs to stdout, so replies need their own channel). Arrays travel as .npy
files in a folder the parent owns. Commands:

    {"cmd": "build", "model": ..., "inputs": [...], "input_size_list": [[1,1,14,14]], "dataset": "ds.txt",
     "config": {...rknn.config kwargs...}, "target": null, "export": "model.rknn"}  → {"ok": true, "seconds": ...}
    {"cmd": "infer", "input": "x.npz", "output": "y.npz"}       → {"ok": true, "outputs": 1}
    {"cmd": "perf"}                                              → {"ok": true, "perf": ...} (board only)
    {"cmd": "quit"}

Only the standard library, numpy and rknn are imported here.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def main() -> int:
    reply_fd = int(sys.argv[1])
    replies = os.fdopen(reply_fd, "w", buffering=1)
    rknn = None

    def send(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd == "hello":
                from importlib.metadata import version

                import numpy
                import rknn.api as api  # noqa: F401

                send({"ok": True, "rknn_toolkit2": version("rknn-toolkit2"), "numpy": numpy.__version__})
            elif cmd == "build":
                from rknn.api import RKNN

                t0 = time.perf_counter()
                rknn = RKNN(verbose=True)  # the build log holds the per-op target/cycle table the parent parses
                if rknn.config(**msg["config"]) != 0:
                    raise RuntimeError(f"rknn.config({msg['config']}) failed")
                ret = rknn.load_onnx(msg["model"], inputs=msg["inputs"], input_size_list=msg["input_size_list"])
                if ret != 0:
                    raise RuntimeError(f"rknn.load_onnx failed ({ret})")
                quant = bool(msg.get("dataset"))
                ret = rknn.build(do_quantization=quant, dataset=msg.get("dataset"))
                if ret != 0:
                    raise RuntimeError(f"rknn.build failed ({ret})")
                if msg.get("export"):  # the deployable .rknn (for rknn-toolkit-lite2 on a board)
                    ret = rknn.export_rknn(msg["export"])
                    if ret != 0:
                        raise RuntimeError(f"rknn.export_rknn failed ({ret})")
                ret = rknn.init_runtime(target=msg.get("target"))
                if ret != 0:
                    raise RuntimeError(f"rknn.init_runtime(target={msg.get('target')!r}) failed ({ret})")
                send({"ok": True, "seconds": time.perf_counter() - t0})
            elif cmd == "infer":
                import numpy as np

                with np.load(msg["input"]) as z:  # one array per model input, in the graph's input order
                    xs = [z[f"arr_{i}"] for i in range(len(z.files))]
                outs = rknn.inference(inputs=xs, data_format="nchw")
                if outs is None:
                    raise RuntimeError("rknn.inference returned None")
                np.savez(msg["output"], *[np.asarray(o, dtype=np.float32) for o in outs])
                send({"ok": True, "outputs": len(outs)})
            elif cmd == "perf":
                send({"ok": True, "perf": str(rknn.eval_perf())})
            elif cmd == "quit":
                send({"ok": True})
                break
            else:
                send({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as a reply
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)})
    if rknn is not None:
        rknn.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
