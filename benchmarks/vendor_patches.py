"""What each vendor patch (:mod:`qtbench.backends.vendor_patches`) buys: builds with and without it, interleaved.

    python benchmarks/vendor_patches.py                                # demo ResNet + ViT-S/14 224², ~3 min
    python benchmarks/vendor_patches.py --model resnet50 --rounds 3    # another zoo model, more rounds
    python benchmarks/vendor_patches.py --skip-zoo                     # the demo only (seconds; no torch needed)

For every declared patch, the builds it targets are timed with every patch on ("with") and with every patch but
that one ("without"): what keeping it buys given the others. ONNX Runtime patches: ``qtbench.backends.qdq.build``
of the specs they touch, from activation statistics cached beforehand (as every spec after a model's first one
finds them). NNCF patches: ``nncf.quantize`` of a percentile spec (MEAN_QUANTILE ranges: what ``nncf.quantile``
answers), as the OpenVINO adapter calls it. Models: the bundled demo ResNet (its 256 calibration images) and a zoo
model exported with torch (random weights, synthetic calibration images).

One thread, one process; each round runs the two variants of every build back to back, alternating which goes
first; medians over rounds. Times are process CPU seconds (the quantizers are single-threaded Python, and CPU
time is what other jobs on a shared machine disturb least); wall seconds are printed beside them. Because a
whole build's time moves by more than some patches save on a busy machine, the CPU time spent inside the
patched function (the vendor's in "without", the replacement in "with") is also measured in the same builds:
``saved`` is that difference as a share of the build without the patch, ``build ratio`` the whole builds' ratio.

A patch is kept when it saves at least ``--keep`` (10 %) of a build it targets on one of the models: smaller
savings do not pay for following the vendor's private code from version to version.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "harness" / "demo"

#: per vendor patch, the builds that exercise it: ("ort", spec id) through qdq.build, ("nncf", what) for NNCF
PLAN: dict[str, tuple[tuple[str, str], ...]] = {
    # per-tensor: with the per-channel patch kept, per-channel INT4 weights are packed by its own numpy code
    "ort.pack_bytes_to_4bit": (("ort", "int4-static-pt-wsym-minmax"),),
    "ort.quantize_onnx_initializer": (("ort", "int8-static-pc-wsym-minmax"),),
    "ort.replace_input_of_all_nodes": (("ort", "int8-static-pt-wsym-minmax"),),
    "nncf.quantile": (("nncf", "quantize int8-static-pc-wsym-percentile"),),
}


class FnTimer:
    """CPU seconds spent inside the functions it wraps (an inner call of a wrapped function is not counted twice)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_fn(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - t
                self.depth -= 1

        return timed_fn


def run_variant(vp: Any, names: list[str], patch: str, on: bool, fn: Callable[[], object]) -> tuple[float, ...]:
    """One build with every patch (``on``) or every patch but ``patch``: (CPU s, wall s, CPU s inside ``patch``'s
    function: the replacement when on, the vendor's own when off)."""
    timer = FnTimer()
    declared = vp.BY_NAME[patch]
    saved = vp.PATCHES, vp.BY_NAME
    slots: list[tuple[Any, Any]] = []
    if on:  # the replacement, as installed by vendor_patches.applied inside the build, is timed
        timed_patch = dataclasses.replace(declared, make=lambda original: timer.wrap(declared.make(original)))
        vp.PATCHES = tuple(timed_patch if p.name == patch else p for p in vp.PATCHES)
        vp.BY_NAME = {p.name: p for p in vp.PATCHES}
        os.environ[vp.ENV] = "all"
    else:  # the vendor's function, left in place by the build, is timed
        for target in declared.targets:
            slot = vp._Slot(target)
            slots.append((slot, slot.get()))
            slot.set(timer.wrap(slots[-1][1]))
        os.environ[vp.ENV] = ",".join(n for n in names if n != patch) or "none"
    c, w = time.process_time(), time.perf_counter()
    try:
        fn()
    finally:
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        vp.PATCHES, vp.BY_NAME = saved
        for slot, original in slots:
            slot.set(original)
    return cpu, wall, timer.cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_s14", help="qtbench.harness.core.zoo model name")
    ap.add_argument("--size", type=int, default=224, help="zoo model input size")
    ap.add_argument("--calib", type=int, default=8, help="synthetic calibration images for the zoo model (ORT)")
    ap.add_argument("--nncf-calib", type=int, default=4, help="of those, images NNCF calibrates on")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", type=float, default=0.10, help="smallest saving (share of the build) that keeps one")
    ap.add_argument("--skip-zoo", action="store_true", help="the demo model only")
    ap.add_argument("--work", type=Path, default=None, help="reuse this folder (the zoo export is kept there)")
    args = ap.parse_args()
    start = time.perf_counter()

    from qtbench.backends import vendor_patches as vp

    os.environ.pop(vp.ENV, None)
    work = args.work or Path(tempfile.mkdtemp(prefix="qtbench-vendor-patches-"))
    work.mkdir(parents=True, exist_ok=True)
    models = [("demo", DEMO / "fashion14_resnet_fp.onnx", DEMO / "fashion14_calib.npz", None)]
    if not args.skip_zoo:
        from qtbench.harness.core import zoo

        path = work / f"{args.model}-{args.size}.onnx"
        if not path.is_file():
            t = time.perf_counter()
            zoo.build(args.model, path, input_size=args.size)
            print(f"exported {args.model} {args.size}² in {time.perf_counter() - t:.1f} s", flush=True)
        calib = zoo.synthetic_inputs(work / f"calib-{args.size}-{args.calib}.npz", args.calib, args.size, seed=1)
        models.append((f"{args.model} {args.size}²", path, calib, args.nncf_calib))

    names = [p.name for p in vp.PATCHES]
    plan = {n: PLAN.get(n, ()) for n in names}
    for s in vp.status():
        print(f"{s.name}: {s.package} {s.installed}, checked {s.versions}: {'on' if s.active else s.reason}")
        if not s.active:
            plan[s.name] = ()  # off on this install: timing it would time the vendor's code twice
        elif not plan[s.name]:
            print("  (no build in this benchmark's PLAN: not measured)")

    results = []
    for label, path, calib_path, nncf_n in models:
        results += measure_model(vp, label, path, calib_path, nncf_n, plan, names, args.rounds, work)
    print(f"\nmedians of {args.rounds} interleaved rounds, 1 thread; CPU s (wall s); fn: CPU s in the patched function")
    head = f"{'model':14s} {'patch':37s} {'build':50s} {'with':>13s} {'without':>13s} {'ratio':>6s}"
    print(f"{head} {'fn with':>8s} {'fn w/o':>7s} {'saved':>7s}")
    best: dict[str, float] = {}
    for label, patch, build, with_, without in results:
        m = [[statistics.median(x[k] for x in runs) for k in range(3)] for runs in (with_, without)]
        saved = (m[1][2] - m[0][2]) / m[1][0] if m[1][0] > 0 else 0.0
        best[patch] = max(best.get(patch, -1.0), saved)
        print(
            f"{label:14s} {patch:37s} {build:50s} {m[0][0]:6.2f} ({m[0][1]:4.1f}) {m[1][0]:6.2f} ({m[1][1]:4.1f})"
            f" {m[0][0] / m[1][0]:6.2f} {m[0][2]:8.2f} {m[1][2]:7.2f} {100 * saved:6.1f}%"
        )
    print()
    for patch in names:
        if patch in best:
            verdict = "keep" if best[patch] >= args.keep else "retire"
            print(f"{patch:37s} saves up to {100 * best[patch]:5.1f}% of a build it targets -> {verdict}")
    print(f"\nbenchmark took {time.perf_counter() - start:.0f} s wall (keep threshold {100 * args.keep:.0f} %)")
    return 0


_NNCF_WARM: list[bool] = []  # the first NNCF build of the process loads NNCF and OpenVINO: run once untimed


def measure_model(
    vp: Any,
    label: str,
    path: Path,
    calib_path: Path,
    nncf_n: int | None,
    plan: dict,
    names: list[str],
    rounds: int,
    work: Path,
) -> list:
    """Interleaved with/without timings of every planned build of one model."""
    from qtbench.backends import qdq
    from qtbench.backends.base import ModelInput, quiet
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.intake import file_sha256
    from qtbench.harness.core.onnxfacts import model_facts
    from qtbench.harness.core.spec import QuantSpec

    facts = model_facts(path)
    model = ModelInput(path, file_sha256(path), facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(calib_path, facts.input_names, None, role="calibration")
    wd = work / "ort" / label.split()[0]
    wd.mkdir(parents=True, exist_ok=True)
    log = work / "nncf.log"

    def ort_build(spec_id: str) -> Callable[[], object]:
        spec = QuantSpec.parse(spec_id)
        return lambda: qdq.build(model, spec, calib, wd, wd / f"{spec.id}.onnx", [])

    nncf_state: dict[str, Any] = {}

    def nncf_build(what: str) -> Callable[[], object]:
        if not nncf_state:
            import nncf
            import openvino as ov

            from qtbench.backends.openvino import OpenVinoBackend

            data = calib.head(nncf_n or len(calib))
            nncf_state.update(
                nncf=nncf,
                core=ov.Core(),
                backend=OpenVinoBackend({"threads": 1}),
                dataset=nncf.Dataset([data.batch(i, i + 1) for i in range(len(data))]),
                n=len(data),
            )
        s = nncf_state
        kind, _, spec_id = what.partition(" ")
        assert kind == "quantize", what
        params = s["backend"]._ptq_params(QuantSpec.parse(spec_id), [])

        def run() -> object:
            ov_model = s["core"].read_model(str(path))
            with quiet(log), vp.applied("nncf"):  # as the adapter: QTBENCH_VENDOR_PATCHES picks the variant
                return s["nncf"].quantize(ov_model, s["dataset"], subset_size=s["n"], **params)

        return run

    jobs = []  # (patch, build label, callable)
    for patch, builds in plan.items():
        for kind, what in builds:
            label_b = f"{what} (n={nncf_n or len(calib)})" if kind == "nncf" else f"qdq.build {what}"
            jobs.append((patch, label_b, ort_build(what) if kind == "ort" else nncf_build(what)))
    if not jobs:
        return []
    t = time.perf_counter()
    os.environ[vp.ENV] = "all"
    for _patch, build, fn in jobs:  # warm-up: the model's activation statistics (cached), imports, plugin load
        is_nncf = not build.startswith("qdq.build")
        if not is_nncf or not _NNCF_WARM:
            fn()
            _NNCF_WARM.extend([True] if is_nncf else [])
    print(f"{label}: warm-up (statistics, imports) {time.perf_counter() - t:.1f} s", flush=True)
    out: dict[int, tuple[list, list]] = {i: ([], []) for i in range(len(jobs))}
    for r in range(rounds):
        for i, (patch, _build, fn) in enumerate(jobs):
            for on in (True, False) if (r + i) % 2 == 0 else (False, True):
                out[i][0 if on else 1].append(run_variant(vp, names, patch, on, fn))
        print(f"{label}: round {r + 1}/{rounds} done ({time.perf_counter() - t:.0f} s)", flush=True)
    os.environ.pop(vp.ENV, None)
    return [(label, patch, build, *out[i]) for i, (patch, build, _fn) in enumerate(jobs)]


if __name__ == "__main__":
    sys.exit(main())
