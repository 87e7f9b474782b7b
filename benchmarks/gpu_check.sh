#!/usr/bin/env bash
# The GPU check (issue: TensorRT 10 and 11): on a host with an NVIDIA GPU, install what the GPU cells need, run the
# demo checkpoints through TensorRT and ONNX Runtime's CUDA/TensorRT execution providers at fp32/fp16/bf16/INT8
# (+ INT4 weight-only where a backend builds it), and print one table per cell with what the artifact audit read
# back. Meant to finish in under 8 minutes on one GPU. Nothing is faked: a backend that cannot run says why in its
# rows (`unavailable: ...`).
#
#   bash benchmarks/gpu_check.sh [OUT]        (OUT: where results, logs and the table go; default /tmp/qtbench-gpu)
#
# Installs into a virtual environment under OUT, so the host's own onnxruntime is left alone (onnxruntime-gpu and
# onnxruntime are the same module and cannot be installed side by side). Without network access it uses what the
# host's Python already has (--system-site-packages).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/qtbench-gpu}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
echo "== GPU"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>&1 | head -4 || true
if [ ! -x "$OUT/venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$OUT/venv"
fi
PY="$OUT/venv/bin/python"
echo "== install (log: $OUT/install.log)"
{
  "$PY" -m pip install -q --no-deps -e . &&
  "$PY" -m pip install -q numpy onnx onnx_ir pandas pyarrow pyyaml rich psutil matplotlib &&
  "$PY" -m pip install -q 'tensorrt>=10,<12' 'cuda-python>=12' &&
  { "$PY" -m pip uninstall -q -y onnxruntime; "$PY" -m pip install -q onnxruntime-gpu; }
} > "$OUT/install.log" 2>&1 || echo "install incomplete (offline?): using what is importable; see $OUT/install.log"
"$PY" - <<'PY'
import importlib
for m in ("tensorrt", "cuda.bindings.runtime", "onnxruntime"):
    try:
        mod = importlib.import_module(m)
        extra = mod.get_available_providers() if m == "onnxruntime" else ""
        print(f"  {m}: {getattr(mod, '__version__', 'ok')} {extra}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {m}: not importable ({type(exc).__name__}: {exc})")
PY
echo "== backends"
"$PY" -m qtbench backends --timeout 120 2>&1 | grep -E "tensorrt|ort" || true
echo "== sweep examples/gpu.yaml (log: $OUT/sweep.log)"
start=$(date +%s)
timeout 450 "$PY" -m qtbench sweep examples/gpu.yaml --results-dir "$OUT/results" --no-report -q > "$OUT/sweep.log" 2>&1
echo "   exit $? after $(( $(date +%s) - start )) s"
"$PY" - "$OUT" <<'PY' | tee "$OUT/table.md"
import sys
from qtbench import load_results

df = load_results(f"{sys.argv[1]}/results/gpu-check")
cols = ["model", "backend", "spec_id", "status", "audit", "audit_bits", "top1", "top1_agreement",
        "latency_ms_p50", "device_latency_ms_p50", "status_message"]
df = df[[c for c in cols if c in df.columns]].sort_values(["backend", "spec_id", "model"])
df["status_message"] = df["status_message"].str.slice(0, 70)
print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
PY
