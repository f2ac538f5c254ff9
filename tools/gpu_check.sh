#!/usr/bin/env bash
# Issue 12's GPU measurements in one go, for a lent GPU machine (the `device` tool; no network there).
#
# Packages: the device image has torch (CUDA), numpy, onnx, onnxscript and onnxruntime (CPU). vqdeploy needs
# omegaconf beyond them, and ONNX Runtime on CUDA needs onnxruntime-gpu. `tools/gpu_stage.sh prepare` (here)
# packs both into .gpu/ parts small enough to carry; `tools/gpu_stage.sh install` (there) unpacks them into
# /tmp/site. Its header lists the calls, back to back on one warm machine.
#
# MODELS (medium-fp32 medium-fp16 demo) and STEPS (parity bench jacobi run divergence) narrow a rerun.
# Phases (PHASE=export|measure|all, default all), so the exports can run in the background (setsid) while
# the later calls carry the onnxruntime-gpu parts:
#   export:  the demo model and the medium random model (GPT 8 x 512, 256 + 256 tokens) exported (fp32, and
#            fp16 for the medium one) with the export's own parity check (ONNX Runtime CPU vs PyTorch CPU);
#            ends by writing $WORK/export.done.
#   measure: waits for export.done, then
#            - `vqdeploy parity` of the backends on CUDA against PyTorch CPU (report.html per model);
#            - `vqdeploy bench --device cuda --cuda-graphs` at batch 1 and 8: per-token ms, tokens/s, the token
#              time over the card's bandwidth floor, with and without CUDA graphs, host and sampler-graph
#              sampling; the demo against the upstream-style reference sampler, and with Jacobi decoding;
#            - one `vqdeploy run` image;
#            - tools/divergence_check.py: the first token where the device's draws part from the CPU's (same seed),
#              and how near a CDF boundary the uniform was there.
# Each step's output goes under $OUT, each step is timed, a failing step does not stop the others.
# The backends are torch and onnxruntime, or torch alone where ONNX Runtime has no CUDAExecutionProvider.
# Run it here with VQ_DEVICE=cpu to check the flow (the numbers are then CPU numbers).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${VQ_DEVICE:-cuda}
WORK=${WORK:-/tmp/gpu-work}
PHASE=${PHASE:-all}
MODELS=${MODELS:-medium-fp32 medium-fp16 demo}  # a narrower rerun: fewer exports ...
STEPS=${STEPS:-parity bench jacobi run divergence}  # ... and fewer step groups
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
VQ="$PY -m vqdeploy"
log="$OUT/gpu_check.log"
[ "$PHASE" = export ] && log="$WORK/export.log"

# onnxruntime-gpu finds the CUDA libraries (cuBLAS, cuDNN, cuFFT, cuRAND) in the nvidia-* wheels beside torch
nvlibs=$($PY -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages()
  for p in glob.glob(d + '/nvidia/**/lib*.so*', recursive=True)})))" 2>/dev/null)
[ -n "$nvlibs" ] && export LD_LIBRARY_PATH="$nvlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

want() { [[ " $MODELS " == *" $1 "* ]]; }  # is this model in $MODELS
does() { [[ " $STEPS " == *" $1 "* ]]; }  # is this step group in $STEPS

step() {  # step NAME COMMAND...: run, time, keep going
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}

if [ "$PHASE" != measure ]; then
  rm -f "$WORK/export.done"
  # the twin graph (transformer_valid_length.onnx) is ONNX Runtime CPU's; nothing here runs it
  { want medium-fp32 || want medium-fp16; } && step make-medium $PY tools/make_random_model.py --preset medium \
    --out "$WORK/medium"
  want medium-fp32 && step export-medium $VQ export --ckpt "$WORK/medium/checkpoints/last.ckpt" \
    --out "$WORK/medium-fp32" --no-valid-length
  want medium-fp16 && step export-medium-fp16 $VQ export --ckpt "$WORK/medium/checkpoints/last.ckpt" \
    --out "$WORK/medium-fp16" --precision fp16 --no-valid-length
  want demo && step export-demo $VQ export --ckpt models/demo/checkpoints/last.ckpt --out "$WORK/demo" --no-valid-length
  touch "$WORK/export.done"
fi
[ "$PHASE" = export ] && exit 0

{
  date; uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv
  $PY -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime', ort.__version__,
ort.get_available_providers())"
} >>"$log" 2>&1
if [ "$PHASE" = measure ]; then
  echo "=== waiting for the export phase ($WORK/export.done)" | tee -a "$log"
  while [ ! -e "$WORK/export.done" ]; do sleep 2; done
  cat "$WORK/export.log" >>"$log"
  grep -E "^=== .*rc=" "$WORK/export.log"
fi

backends=torch,onnxruntime
if [ "$DEVICE" = cuda ] && ! $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  backends=torch
  echo "=== onnxruntime has no CUDAExecutionProvider: backends $backends" | tee -a "$log"
fi
graphs=(); [ "$DEVICE" = cuda ] && graphs=(--cuda-graphs)
for art in medium-fp32 demo medium-fp16; do
  want "$art" && does parity && step "parity-$art" $VQ parity --artifacts "$WORK/$art" --backends "$backends" \
    --device "$DEVICE" --out "$OUT/parity-$art"
done
compare=(); want medium-fp16 && compare=(--compare "$WORK/medium-fp16")
for n in 1 8; do
  want medium-fp32 && does bench && step "bench-medium-b$n" $VQ bench --artifacts "$WORK/medium-fp32" "${compare[@]}" \
    --device "$DEVICE" --backends "$backends" --num-samples "$n" --repeats 3 --no-reference "${graphs[@]}" \
    --out "$OUT/bench-medium-b$n.json"
done
want demo && does bench && step bench-demo $VQ bench --artifacts "$WORK/demo" --device "$DEVICE" --backends "$backends" \
  "${graphs[@]}" \
  --out "$OUT/bench-demo.json"
want demo && does jacobi && step bench-demo-jacobi $VQ bench --artifacts "$WORK/demo" --device "$DEVICE" \
  --backends "$backends" --decoding jacobi \
  --no-reference --out "$OUT/bench-demo-jacobi.json"
want demo && does run && step run-demo $VQ run models/demo/sketches/07_house-square-circle_horizon.png \
  --artifacts "$WORK/demo" \
  --backend "${backends##*,}" --device "$DEVICE" --num-samples 4 --seed 0 --out "$OUT/run-demo.png"
# where the device's draws first part from the CPU's (same seed), and whether a float-rounding boundary explains it
for be in ${backends//,/ }; do
  want demo && does divergence && step "divergence-demo-$be" $PY tools/divergence_check.py --artifacts "$WORK/demo" \
    --a "$be:cpu" --b "$be:$DEVICE" \
    --condition models/demo/sketches/07_house-square-circle_horizon.png --num-samples 4 --seed 0 \
    --json "$OUT/divergence-demo-$be.json"
done
grep -E "^=== .*rc=" "$log"
