"""Scale checks: how a sweep and its results folder grow with cells, re-runs and rows (issue 16, point 5).

    python benchmarks/scale.py cells  [--cells 24 144]    # wall time vs cells (fast protocol); --cells 1008 works too
    python benchmarks/scale.py store  [--reruns 8]        # folder size and files vs re-runs, then `results compact`
    python benchmarks/scale.py views  [--rows 10000]      # `show`, `report`, `check` seconds on a 10k-row folder
    python benchmarks/scale.py memory [--input-size 64]   # peak RSS of the sweep parent and its children, ResNet-50

Every figure comes from the real command line (`python -m harness.cli ...` in a subprocess) on folders written by
real sweeps or, for `views`, through the real store API (``ResultsStore.write_cell``). One thread per runtime
(OMP_NUM_THREADS=1). Shared machines are noisy: read growth per cell and ratios, not absolute seconds.

`views` writes 10k cells one by one as a sweep does (~25-100 ms a cell here, then the run's consolidation): pass
``--keep DIR`` to reuse the folders; check's candidate is a copy of the baseline unless ``--write-candidate``.
`memory` builds ResNet-50 from qtbench.harness.core.zoo with random weights at 64×64 (not 224: the same layers and
weights, a
smaller activation footprint) and samples each process's RSS every 50 ms (psutil), so very short peaks can hide.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/models.py: make_record (a Record with neutral defaults)

#: (backend entry, spec) block of one model in the `cells` benchmark: 4 backends × 6 specs = 24 cells per model,
#: the same mix at every size so that growth is scale, not a different mix.
BACKENDS = [
    {"name": "ort", "options": {"threads": 1}},
    {"name": "simnpu", "label": "sim-hailo8", "options": {"profile": "hailo8"}},
    {"name": "simnpu", "label": "sim-qualcomm-htp", "options": {"profile": "qualcomm-htp"}},
    {"name": "simnpu", "label": "sim-nxp-imx8mp", "options": {"profile": "nxp-imx8mp"}},
]
SPECS = [
    "fp32",
    "int8-static-pt-wsym-minmax",
    "int8-static-pc-wsym-minmax",
    "int8-static-pt-sym-minmax",
    "int8-static-pt-wsym-percentile99.99",
    "int8-static-pt-wsym-entropy",
]
FAST = {"warmup": 2, "iterations": 10, "min_duration_s": 0.0}


def qtbench(*args: str, out: Any = subprocess.DEVNULL) -> float:
    """Run ``qtbench ARGS`` in a fresh interpreter (as a user would); its wall seconds. Fails loudly."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qtbench", *args], cwd=REPO, stdout=out, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # check exits 1 on a regression: that is a result, not an error
        raise SystemExit(f"qtbench {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return wall


def folder_size(root: Path) -> tuple[int, int]:
    """(bytes, Parquet files) of a results folder, the artifact cache left out."""
    files = [p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return sum(p.stat().st_size for p in files), sum(p.suffix == ".parquet" for p in files)


# -- data and models ------------------------------------------------------------------------------------------
def small_data(tmp: Path, n_eval: int = 64, n_calib: int = 32) -> tuple[Path, Path]:
    """The demo's evaluation and calibration sets cut to ``n_eval`` / ``n_calib`` images (a fast protocol)."""
    from qtbench.harness.demo import DEMO_DIR

    ev, cal = np.load(DEMO_DIR / "fashion14_eval.npz"), np.load(DEMO_DIR / "fashion14_calib.npz")
    np.savez(tmp / "eval.npz", **{k: ev[k][:n_eval] for k in ev.files})
    np.savez(tmp / "calib.npz", **{k: cal[k][:n_calib] for k in cal.files})
    return tmp / "eval.npz", tmp / "calib.npz"


def demo_models(tmp: Path, n: int) -> list[Path]:
    """``n`` distinct checkpoints: the demo's six, then copies of them that differ by one metadata entry, so each
    has its own sha256 (its own cells, calibration statistics and artifacts: no cache shared across copies)."""
    import onnx

    from qtbench.harness.demo import DEMO_DIR

    base = sorted(DEMO_DIR.glob("fashion14_resnet_*.onnx"))
    out = []
    for i in range(n):
        src = base[i % len(base)]
        if i < len(base):
            out.append(src)
            continue
        m = onnx.load(src)
        m.metadata_props.add(key="qtbench.scale_copy", value=str(i))
        path = tmp / f"copy{i:04d}.onnx"
        onnx.save(m, path)
        out.append(path)
    return out


def sweep_file(tmp: Path, name: str, models: list[Path], **extra: Any) -> Path:
    import yaml

    ev, cal = small_data(tmp)
    cfg = {
        "name": name,
        "models": [{"name": f"m{i:04d}", "path": str(p)} for i, p in enumerate(models)],
        "evaluation": {"path": str(ev), "labels": "labels"},
        "calibration": {"path": str(cal)},
        "backends": BACKENDS,
        "specs": SPECS,
        "measure": FAST,
        "run": {"results_dir": str(tmp / "results"), "timeout_s": 600},
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# -- (a) cells vs wall time -----------------------------------------------------------------------------------
def bench_cells(sizes: list[int]) -> dict[str, Any]:
    import pandas as pd

    from qtbench.harness.run.store import load_results

    per_model = len(BACKENDS) * len(SPECS)
    rows = []
    for size in sizes:
        n_models = max(1, round(size / per_model))
        with tempfile.TemporaryDirectory(prefix="qtbench-scale-") as d:
            tmp = Path(d)
            cfg = sweep_file(tmp, "cells", demo_models(tmp, n_models))
            wall = qtbench("sweep", str(cfg), "--no-report", "-q")
            resume = qtbench("sweep", str(cfg), "--no-report", "-q")  # everything recorded: measures nothing
            df = load_results(tmp / "results" / "cells")
            ok = df[df["status"] == "ok"]
            rows.append(
                {
                    "cells": len(df),
                    "ok": len(ok),
                    "other": dict(df.loc[df["status"] != "ok", "status"].value_counts()),
                    "wall_s": wall,
                    "per_cell_s": wall / len(df),
                    "resume_s": resume,
                    "compile_s_sum": float(ok["compile_s"].fillna(0).sum()),
                    "cell_wall_s_sum": float(ok["cell_wall_s"].fillna(0).sum()),
                    "timed_s_sum": float(ok["timed_wall_s"].fillna(0).sum()),
                }
            )
        r = rows[-1]
        print(
            f"{r['cells']:>5} cells ({r['ok']} ok{', ' + str(r['other']) if r['other'] else ''}): "
            f"{r['wall_s']:.1f} s wall, {r['per_cell_s']:.3f} s/cell; resume (nothing to do) {r['resume_s']:.1f} s; "
            f"sums over ok cells: compile {r['compile_s_sum']:.1f} s, cell {r['cell_wall_s_sum']:.1f} s, "
            f"timed loops {r['timed_s_sum']:.1f} s",
            flush=True,
        )
    for a, b in itertools.pairwise(rows):
        marginal = (b["wall_s"] - a["wall_s"]) / (b["cells"] - a["cells"])
        print(
            f"{a['cells']} → {b['cells']} cells: ×{b['cells'] / a['cells']:.1f} cells, "
            f"×{b['wall_s'] / a['wall_s']:.2f} wall; marginal {marginal:.3f} s per added cell "
            f"(per-cell ratio {b['per_cell_s'] / a['per_cell_s']:.2f}); "
            f"resume ×{b['resume_s'] / a['resume_s']:.2f}"
        )
    return {"cells": pd.DataFrame(rows).to_dict(orient="records")}


# -- (b) store size vs re-runs, and compact --------------------------------------------------------------------
def bench_store(reruns: int) -> dict[str, Any]:
    import pandas as pd

    from qtbench.harness.run.store import load_results

    with tempfile.TemporaryDirectory(prefix="qtbench-scale-") as d:
        tmp = Path(d)
        specs = SPECS[:4]
        cfg = sweep_file(tmp, "store", demo_models(tmp, 1), backends=BACKENDS[:1], specs=specs)
        root = tmp / "results" / "store"
        sizes = []
        for i in range(reruns):
            qtbench("sweep", str(cfg), "--no-report", "-q", *(["--rerun"] if i else []))
            size, files = folder_size(root)
            t0 = time.perf_counter()
            n = len(load_results(root, latest=False))
            sizes.append({"runs": i + 1, "rows": n, "bytes": size, "parquet_files": files})
            sizes[-1]["load_s"] = time.perf_counter() - t0
            print(f"after run {i + 1}: {n} rows, {files} Parquet files, {size / 1e3:.1f} kB", flush=True)
        growth = (sizes[-1]["bytes"] - sizes[0]["bytes"]) / max(1, reruns - 1)
        before = {k: load_results(root, latest=k == "latest") for k in ("latest", "history")}
        show_before = min(qtbench("show", str(root)) for _ in range(3))
        compact_s = qtbench("results", "compact", str(root))
        size, files = folder_size(root)
        after = {k: load_results(root, latest=k == "latest") for k in ("latest", "history")}
        for k in before:
            pd.testing.assert_frame_equal(before[k], after[k], check_exact=True)
        show_after = min(qtbench("show", str(root)) for _ in range(3))
        again = qtbench("results", "compact", str(root))
        assert folder_size(root) == (size, files), "a second compact changed the folder"
        print(
            f"{reruns} runs of {len(specs)} cells: {growth / 1e3:.1f} kB and {3} Parquet files per re-run "
            f"({sizes[-1]['bytes'] / 1e3:.1f} kB, {sizes[-1]['parquet_files']} files after run {reruns}); "
            f"`results compact` ({compact_s:.2f} s) → {size / 1e3:.1f} kB, {files} files "
            f"(×{size / sizes[-1]['bytes']:.2f} bytes), load_results identical before/after (latest and history); "
            f"`show` {show_before:.2f} → {show_after:.2f} s; compact again: no change ({again:.2f} s)"
        )
        return {"store": sizes, "compact": {"bytes": size, "files": files, "s": compact_s}}


# -- (c) show / report / check at 10k rows -------------------------------------------------------------------
def synth_rows(root: Path, n: int, seed: int, n_pred: int = 1000, n_lat: int = 200) -> Path:
    """``n`` cells written through ``ResultsStore.write_cell`` like a sweep writes them (then consolidated):
    50 checkpoints (2 groups × 25 seeds) × 4 backends × n/200 specs, 200 raw latencies (the paper's protocol) and
    ``n_pred`` per-sample predictions each; 2 % skipped with a reason, every 7th simnpu cell simulated."""
    from qtbench.harness.core.records import Record
    from qtbench.harness.run.measure import latency_stats
    from qtbench.harness.run.store import ResultsStore

    from models import make_record

    rng = np.random.default_rng(seed)
    store = ResultsStore(root)
    run_id = "20260101T000000Z-scale-000000"
    store.record_run({"run_id": run_id, "started_utc": "2026-01-01T00:00:00Z", "finished_utc": None})
    labels = np.random.default_rng(99).integers(0, 10, n_pred)
    backends = ["ort", "openvino", "tflite", "sim-hailo8"]
    precisions = ["fp32", "fp16", "int8", "int4"]
    bins = {"count": [0.0] * 14 + [float(n_pred)], "confidence": [None] * 14 + [0.95], "accuracy": [None] * 14}
    for i in range(n):
        model, backend, spec_i = i % 50, backends[(i // 50) % 4], i // 200
        prec = precisions[spec_i % 4]
        status = "ok" if i % 50 != 7 else "skipped"
        base = 0.1 + 0.05 * (model % 5) + {"fp32": 0.4, "fp16": 0.25, "int8": 0.1, "int4": 0.08}[prec]
        samples = (rng.lognormal(np.log(base), 0.08, n_lat) * 1e6).astype(np.int64)
        wrong = 0.12 + (0.02 if prec == "int4" else 0.0) + rng.normal(0, 0.005)
        correct = rng.random(n_pred) > wrong
        preds = np.where(correct, labels, (labels + 1) % 10)
        top1 = float(correct.mean())
        rec = make_record(
            record_id=f"{seed}-{i:05d}",
            run_id=run_id,
            sweep=root.name,
            cell_key=f"k{i:05d}",
            created_utc=f"2026-01-01T00:{i // 600:02d}:{(i // 10) % 60:02d}Z",
            model=f"resnet-{'fp' if model < 25 else 'quanttrim'}-s{model % 25}",
            group="fp" if model < 25 else "quanttrim",
            seed=model % 25,
            backend=backend,
            backend_slug=backend.split("-")[0] if backend != "sim-hailo8" else "simnpu",
            device="x86-host-2c",
            spec_id=f"{prec}-static-pc-wsym-minmax-n{spec_i}" if prec != "fp32" else f"fp32-v{spec_i}",
            precision=prec,
            weight_bits={"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}[prec],
            activation_bits={"fp32": 32, "fp16": 16, "int8": 8, "int4": 8}[prec],
            scaling="none" if prec.startswith("fp") else "static",
            granularity="per-channel",
            calibration="minmax",
            status=status,
            status_message="" if status == "ok" else f"{backend} has no {prec} kernels for this graph",
            numbers="" if status != "ok" else ("simulated" if backend.startswith("sim") else "measured"),
            warmup=20,
            min_iterations=n_lat,
            eval_samples=n_pred,
            eval_sha256="evalsha",
            top1=top1,
            fp_top1=0.88,
            top1_agreement=float(rng.uniform(0.95, 1.0)),
            ece=float(rng.uniform(0.01, 0.05)),
            kl_fp=float(rng.uniform(0.001, 0.02)),
            reliability=json.dumps({**bins, "accuracy": [None] * 14 + [top1]}),
            artifact_bytes=int(rng.integers(200_000, 2_000_000)),
            compile_s=float(rng.uniform(0.1, 5)),
            cell_wall_s=float(rng.uniform(0.5, 3)),
            coverage=json.dumps({"cpu": 3, "npu": 40} if backend.startswith("sim") else {"cpu": 43}),
            execution_device="npu" if backend.startswith("sim") else "cpu",
            **(
                {k: v for k, v in latency_stats(samples).items() if k in Record.__dataclass_fields__}
                if status == "ok"
                else {}
            ),
        )
        if status == "ok":
            store.write_cell(run_id, i, rec, [samples], preds, labels)
        else:
            store.write_cell(run_id, i, rec)
    store.finish_run(run_id, finished_utc="2026-01-01T01:00:00Z")
    return root


def bench_views(
    rows: int, keep: Path | None, repeats: int, write_candidate: bool, check_model: str | None
) -> dict[str, Any]:
    work = keep or Path(tempfile.mkdtemp(prefix="qtbench-scale-"))
    base, cand = work / "baseline" / "scale", work / "candidate" / "scale"
    try:
        for root, seed in ((base, 0), (cand, 1)):
            marker = root / ".complete"
            if marker.is_file() and json.loads(marker.read_text()) == rows:
                continue
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            if root == cand and not write_candidate:  # the same cells and samples: check does the same work
                shutil.copytree(base, cand)
            else:
                synth_rows(root, rows, seed)
            marker.write_text(json.dumps(rows))
            print(f"wrote {rows} rows to {root} in {time.perf_counter() - t0:.0f} s", flush=True)
        size, files = folder_size(base)
        print(f"{base}: {size / 1e6:.1f} MB in {files} Parquet files", flush=True)
        if not repeats:  # --repeats 0: only write (and keep) the folders
            return {"rows": rows}
        times: dict[str, list[float]] = {"show": [], "report": [], "check": []}
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits all three alike
            times["show"].append(qtbench("show", str(base)))
            times["report"].append(qtbench("report", str(base), "--out", str(work / "report")))
            one = ["--baseline-model", check_model, "--candidate-model", check_model] if check_model else []
            times["check"].append(qtbench("check", "--baseline", str(base), "--candidate", str(cand), *one))
        targets = {"show": 1.0, "report": 10.0, "check": 5.0}
        for k, v in times.items():
            med = float(np.median(v))
            print(
                f"qtbench {k} at {rows} rows: median {med:.2f} s over {repeats} "
                f"(runs {', '.join(f'{t:.2f}' for t in v)}); "
                f"target ≤ {targets[k]:.0f} s: {'met' if med <= targets[k] else 'MISSED'}",
                flush=True,
            )
        return {"views": {k: float(np.median(v)) for k, v in times.items()}, "rows": rows}
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


# -- (d) memory ------------------------------------------------------------------------------------------------
def watch_tree(proc: subprocess.Popen, period_s: float = 0.05) -> dict[int, dict[str, Any]]:
    """Peak RSS per process of ``proc``'s tree, sampled every ``period_s`` until it exits (psutil)."""
    import psutil

    root = psutil.Process(proc.pid)
    peaks: dict[int, dict[str, Any]] = {}
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid not in peaks:
                    peaks[p.pid] = {"cmd": " ".join(p.cmdline())[:160], "ppid": p.ppid(), "rss": 0}
                peaks[p.pid]["rss"] = max(peaks[p.pid]["rss"], rss)
            except psutil.Error:
                continue
        time.sleep(period_s)
    return peaks


def bench_memory(input_size: int) -> dict[str, Any]:
    from qtbench.harness.core.zoo import build

    with tempfile.TemporaryDirectory(prefix="qtbench-scale-") as d:
        tmp = Path(d)
        model = build("resnet50", tmp / "resnet50.onnx", input_size=input_size)
        rng = np.random.default_rng(0)
        x = lambda n: rng.standard_normal((n, 3, input_size, input_size)).astype(np.float32)  # noqa: E731
        np.savez(tmp / "eval.npz", input=x(32))
        np.savez(tmp / "calib.npz", input=x(16))
        import yaml

        cfg = {
            "name": "mem",
            "models": [{"name": "resnet50", "path": str(model)}],
            "evaluation": {"path": str(tmp / "eval.npz")},
            "calibration": {"path": str(tmp / "calib.npz")},
            "backends": BACKENDS[:2],
            "specs": ["fp32", "int8-static-pc-wsym-minmax"],
            "measure": FAST,
            "run": {"results_dir": str(tmp / "results"), "timeout_s": 900},
        }
        (tmp / "mem.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "qtbench", "sweep", str(tmp / "mem.yaml"), "--no-report", "-q"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()))
        reader.start()
        peaks = watch_tree(proc)
        reader.join()
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"sweep exited {proc.returncode}: {b''.join(err).decode()[-2000:]}")
        from qtbench.harness.run.store import load_results

        df = load_results(tmp / "results" / "mem")
    parent = peaks.pop(proc.pid)
    print(
        f"ResNet-50 at {input_size}×{input_size} (random weights), {len(df)} cells "
        f"({', '.join(f'{k} {v}' for k, v in df['status'].value_counts().items())}) on ort + simnpu, {wall:.0f} s:"
    )
    print(f"  sweep parent: peak RSS {parent['rss'] / 2**20:.0f} MiB")
    children = sorted(peaks.values(), key=lambda p: -p["rss"])
    for c in children[:8]:
        print(f"  child (ppid {c['ppid']}): peak RSS {c['rss'] / 2**20:.0f} MiB  {c['cmd'][:110]}")
    top = children[0]["rss"] if children else 0
    print(f"  largest child {top / 2**20:.0f} MiB ({len(children)} child processes seen)")
    return {"parent_mib": parent["rss"] / 2**20, "largest_child_mib": top / 2**20, "children": len(children)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cells")
    c.add_argument("--cells", type=int, nargs="+", default=[24, 144], help="sizes (24 per model; 1008 = 42 models)")
    s = sub.add_parser("store")
    s.add_argument("--reruns", type=int, default=8)
    v = sub.add_parser("views")
    v.add_argument("--rows", type=int, default=10_000)
    v.add_argument("--repeats", type=int, default=1, help="interleaved rounds (0: only write the folders)")
    v.add_argument(
        "--check-model",
        help="check only this model's cells (e.g. resnet-fp-s0: 200 of 10k; the full check takes minutes)",
    )
    v.add_argument("--keep", type=Path, help="keep (and reuse) the synthesised folders here")
    v.add_argument(
        "--write-candidate",
        action="store_true",
        help="write check's candidate through the store too (other seed: some gates fail); default: a copy",
    )
    m = sub.add_parser("memory")
    m.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    if args.what == "cells":
        res = bench_cells(args.cells)
    elif args.what == "store":
        res = bench_store(args.reruns)
    elif args.what == "views":
        res = bench_views(args.rows, args.keep, args.repeats, args.write_candidate, args.check_model)
    else:
        res = bench_memory(args.input_size)
    if args.out:
        args.out.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
