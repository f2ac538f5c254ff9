#!/usr/bin/env bash
# Carries what vqdeploy needs beyond the GPU machine's image (omegaconf; onnxruntime-gpu for CUDA 13) to a lent
# device machine, whose tree travels at most 64 MiB a call and which has no network.
#
#   tools/gpu_stage.sh prepare [onnxruntime-gpu==1.31.1]   # here: writes .gpu/p0 .. .gpu/pN and .gpu/site
#   tools/gpu_stage.sh install                             # there: unpacks /tmp/gpu/* and .gpu/site into /tmp/site
#
# onnxruntime-gpu (255 MB as a wheel) is unpacked, its TensorRT provider dropped, and packed with xz (204 MB)
# in 42 MiB parts, so each part and the repository fit one call. The calls, back to back on one warm machine
# (it is given back 30 s after a call), the exports running in the background meanwhile:
#   1.     carry [".gpu/p0", ".gpu/site"]:  mkdir -p /tmp/gpu && cp .gpu/p0/* /tmp/gpu/ && tools/gpu_stage.sh install-site
#          && (PHASE=export setsid nohup bash tools/gpu_check.sh >/dev/null 2>&1 &)
#   2..N.  carry [".gpu/pK"]:  cp .gpu/pK/* /tmp/gpu/
#   last.  carry [".gpu/pN"]:  cp .gpu/pN/* /tmp/gpu/ && tools/gpu_stage.sh install && PHASE=measure bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${SITE:-/tmp/site}

case "${1:-}" in
  prepare)
    spec=${2:-onnxruntime-gpu==1.31.1}
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp/wheel" "$spec"
    (cd "$tmp" && mkdir pkg && cd pkg && unzip -q ../wheel/*.whl && rm -f onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
    rm -rf .gpu && mkdir -p .gpu/site
    tar -C "$tmp/pkg" -cf - . | xz -T0 -6 | split -b 42m -d -a 1 - "$tmp/part."
    for f in "$tmp"/part.*; do mkdir -p ".gpu/p${f##*.}" && mv "$f" ".gpu/p${f##*.}/"; done
    # omegaconf is pure Python (its antlr4 is vendored): copied from this environment
    src=$(python3 -c "import omegaconf, os; print(os.path.dirname(omegaconf.__file__))")
    cp -r "$src" .gpu/site/ && find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$tmp"
    du -sh .gpu/*
    ;;
  install-site)
    mkdir -p "$SITE" && cp -r .gpu/site/* "$SITE/"
    ;;
  install)
    mkdir -p "$SITE" && { [ ! -d .gpu/site ] || cp -r .gpu/site/* "$SITE/"; }
    cat /tmp/gpu/part.* | xz -d | tar -C "$SITE" -xf - && rm -f /tmp/gpu/part.*
    echo "installed into $SITE: $(ls "$SITE" | tr '\n' ' ')"
    ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
