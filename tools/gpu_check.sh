#!/usr/bin/env bash
# Issue 12's GPU measurements in one go, for a lent GPU machine (the `device` tool; no network there).
#
# Stage the wheels first, on this machine (onnxruntime-gpu for CUDA 13 and what vqdeploy needs beyond the
# device image's torch, numpy, onnx and onnxruntime), then make the printed calls back to back:
#   ../shared/tools/stage-gpu-wheels.sh onnxruntime-gpu==1.31.1 click omegaconf onnxscript onnx_ir ml_dtypes \
#       safetensors cuda-python cuda-bindings cuda-pathfinder pillow
#   last call: bash .gpu/assemble/assemble.sh && bash tools/gpu_check.sh
#
# What it does (each step's output under $OUT, each step timed, a failing step does not stop the others):
#   1. the demo model and the medium random model (GPT 8 x 512, 256 + 256 tokens) exported (fp32, and fp16
#      for the medium one) with the export's own parity check (ONNX Runtime CPU vs PyTorch CPU);
#   2. `vqdeploy parity` of torch and onnxruntime on CUDA against PyTorch CPU (report.html per model);
#   3. `vqdeploy bench --device cuda --cuda-graphs` at batch 1 and 8: per-token ms, tokens/s, the token time
#      over the card's bandwidth floor, with and without CUDA graphs, host and sampler-graph sampling.
# Run it here with VQ_DEVICE=cpu to check the flow (the numbers are then CPU numbers).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${VQ_DEVICE:-cuda}
WORK=${WORK:-/tmp/gpu-work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
VQ="$PY -m vqdeploy"
log="$OUT/gpu_check.log"

step() {  # step NAME COMMAND...: run, time, keep going
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}

{
  date; uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv
  $PY -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime', ort.__version__,
ort.get_available_providers())"
} >>"$log" 2>&1

step make-medium $PY tools/make_random_model.py --preset medium --out "$WORK/medium"
step export-demo $VQ export --ckpt models/demo/checkpoints/last.ckpt --out "$WORK/demo"
step export-medium $VQ export --ckpt "$WORK/medium/checkpoints/last.ckpt" --out "$WORK/medium-fp32"
step export-medium-fp16 $VQ export --ckpt "$WORK/medium/checkpoints/last.ckpt" --out "$WORK/medium-fp16" --precision fp16
for art in demo medium-fp32 medium-fp16; do
  step "parity-$art" $VQ parity --artifacts "$WORK/$art" --backends torch,onnxruntime --device "$DEVICE" --out "$OUT/parity-$art"
done
graphs=(); [ "$DEVICE" = cuda ] && graphs=(--cuda-graphs)
for n in 1 8; do
  step "bench-medium-b$n" $VQ bench --artifacts "$WORK/medium-fp32" --compare "$WORK/medium-fp16" --device "$DEVICE" \
    --backends torch,onnxruntime --num-samples "$n" --repeats 3 --no-reference "${graphs[@]}" --out "$OUT/bench-medium-b$n.json"
done
step bench-demo $VQ bench --artifacts "$WORK/demo" --device "$DEVICE" --backends torch,onnxruntime "${graphs[@]}" \
  --out "$OUT/bench-demo.json"
step run-demo $VQ run models/demo/sketches/07_house-square-circle_horizon.png --artifacts "$WORK/demo" \
  --backend onnxruntime --device "$DEVICE" --num-samples 4 --seed 0 --out "$OUT/run-demo.png"
grep -E "^=== .*rc=" "$log"
