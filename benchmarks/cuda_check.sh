#!/usr/bin/env bash
# A hospital's GPU, checked end to end: on a machine with an NVIDIA GPU and a CUDA build of torch,
#   1. benchmarks/cuda_training.py: the silo's trainer on CUDA against the CPU, DP and plain, with
#      the per-sample-gradient and same-update checks (one JSON line at its end);
#   2. `fedcare demo` (DP at ε = 8 + CKKS, real processes over gRPC) with its silos' default
#      `device = "auto"`, so each silo trains on the GPU; the silos' logs say which device they used.
# Five result files go to $OUT (default /tmp/fedcare-cuda-check), the demo's folder to a temporary
# one. The tests never need a GPU; this is a check for a machine that has one:  bash benchmarks/cuda_check.sh
set -u
OUT=${OUT:-/tmp/fedcare-cuda-check}
PY=${PY:-python3}
DEMO=$(mktemp -d)/demo
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
$PY benchmarks/cuda_training.py --patients 600 5000 --threads "$(nproc)" >"$OUT/cuda_training.log" 2>&1
echo "cuda_training rc=$?"; grep -v '^{' "$OUT/cuda_training.log" | tail -20; tail -1 "$OUT/cuda_training.log" >"$OUT/cuda_training.json"
timeout 420 $PY -m fedcare demo --out "$DEMO" >"$OUT/demo.log" 2>&1
echo "demo rc=$?"; tail -25 "$OUT/demo.log"
grep -h "training on" "$DEMO"/logs/*.log
$PY - "$DEMO/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("summary final:", json.dumps(s.get("final"), default=str)[:800])
print("release:", s.get("release"), "state:", s.get("state"), "error:", s.get("error"))
print("per-round auroc/loss:", [(r["round"], r["metrics"].get("auroc"), r["metrics"].get("loss")) for r in s.get("rounds", [])])
EOF
cp "$DEMO/summary.json" "$OUT/demo_summary.json" 2>/dev/null
tail -c 200000 "$DEMO/logs/st-mary.log" >"$OUT/silo_st-mary.log" 2>/dev/null
