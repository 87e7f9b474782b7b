"""Walk one sweep's configuration through the code: which modules it enters, in order, and whether any is entered
again from below. ``python scripts/config_walk.py`` (a small in-process sweep of the bundled demo: one model, ort,
fp32 and int8, cells in this process so the tracer sees the cell and the adapter).

Prints the modules in the order the sweep first enters them (function calls, not imports), then every call that
goes *up* the floors: in a layered run those are only callbacks a higher floor handed down (a task scoring
through ``compiled.infer``, the audit reading through the cell's reader), never a lower module reaching up.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

FLOORS = {
    "qtbench.harness.cli": 5,
    "qtbench.harness.analysis": 4,
    "qtbench.harness.run": 3,
    "qtbench.backends": 2,
    "qtbench.devices": 1,
    "qtbench.harness.core": 0,
}


def floor(module: str) -> int | None:
    for prefix, level in FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def main() -> int:
    import importlib
    import pkgutil

    import qtbench.backends
    import qtbench.harness
    from qtbench.harness.cli import main as cli_main
    from qtbench.harness.demo import demo_config_path

    for pkg in (qtbench.harness, qtbench.backends):  # imported first, so the walk records calls, not imports
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)

    order: list[str] = []
    upward: list[str] = []
    started = [False]

    def profile(frame, event, _arg):
        if event != "call" or frame.f_code.co_name == "<module>":  # imports are the layer test's business
            return
        callee = frame.f_globals.get("__name__", "")
        started[0] = started[0] or frame.f_code.co_name == "cmd_sweep"  # from the command on, not argparse setup
        if not started[0]:
            return
        caller_frame = frame.f_back
        caller = caller_frame.f_globals.get("__name__", "") if caller_frame else ""
        if not callee.startswith("qtbench.") or callee == caller:
            return
        if callee not in order and floor(callee) is not None:
            order.append(callee)
        fc, fe = floor(caller), floor(callee)
        if fc is not None and fe is not None and fe > fc:
            upward.append(f"{caller} → {callee}.{frame.f_code.co_name}")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "walk.yaml"
        demo = demo_config_path()
        cfg.write_text(
            f"""name: walk
models:
  - name: fp
    path: {demo.parent / "fashion14_resnet_fp.onnx"}
    evaluation: {{path: {demo.parent / "fashion14_eval.npz"}, labels: labels, limit: 64}}
    calibration: {{path: {demo.parent / "fashion14_calib.npz"}, limit: 32}}
backends: [{{name: ort, options: {{threads: 1}}}}]
specs: [fp32, int8-static-pc-wsym-minmax]
measure: {{warmup: 2, iterations: 10, min_duration_s: 0}}
run: {{results_dir: {tmp}/results, isolate: false}}
"""
        )
        sys.setprofile(profile)
        try:
            code = cli_main(["sweep", str(cfg), "--no-report", "-q"])
        finally:
            sys.setprofile(None)
    print("modules in the order the sweep enters them ([floor] name):")
    print("  " + " → ".join(f"[{floor(m)}] {m.removeprefix('qtbench.')}" for m in order))
    print(f"calls up the floors (callbacks handed down): {len(set(upward))}")
    for u in dict.fromkeys(upward):
        print(f"  {u}")
    return code


if __name__ == "__main__":
    sys.exit(main())
