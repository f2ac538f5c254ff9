#!/usr/bin/env bash
# Install vqdeploy and what one image flavour needs into the Python of $PYTHON (default: python3 on
# PATH, e.g. an activated venv). The Dockerfile's RUN steps call this script and tests/test_docker.py
# runs it in a fresh venv, so the images and CI install the same way.
#
#   docker/install.sh FLAVOUR [PACKAGE]
#
#   FLAVOUR  gpu          for NVIDIA's TensorRT container: vqdeploy, onnxruntime-gpu (CUDA 13) and
#                         cuda-python; TensorRT's Python bindings are the container's (checked first)
#            cpu          CPU torch, then vqdeploy: export and run
#            cpu-runtime  vqdeploy without torch: run and bench on ONNX Runtime (CPU)
#   PACKAGE  a vqdeploy wheel or source directory (default: this repository)
#
# Versions: docker/constraints.txt. TORCH_INDEX_URL, when set, is the only index torch comes from
# (the Dockerfile sets PyTorch's CPU index; unset, pip's own configuration decides).
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: docker/install.sh gpu|cpu|cpu-runtime [PACKAGE]"
flavour=$1
package=${2:-$(dirname "$here")}
python=${PYTHON:-python3}
pip=("$python" -m pip install --disable-pip-version-check --constraint "$here/constraints.txt")

case "$flavour" in
  gpu)
    "$python" -c "import tensorrt" 2>/dev/null \
      || die "flavour gpu is for NVIDIA's TensorRT container, whose Python has the tensorrt bindings: $python cannot import tensorrt"
    "${pip[@]}" "$package" cuda-python
    # onnxruntime-gpu provides the same 'onnxruntime' module as the CPU wheel vqdeploy depends on;
    # with both installed, whichever was unpacked last wins: keep only the GPU build
    "$python" -m pip uninstall --yes onnxruntime
    "${pip[@]}" --no-deps --force-reinstall onnxruntime-gpu
    "$python" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
      || die "onnxruntime-gpu is installed but has no CUDAExecutionProvider"
    ;;
  cpu)
    "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
    "$python" -c "import sys, torch; sys.exit(torch.version.cuda is not None)" \
      || die "torch is a CUDA build; the cpu flavour wants the CPU build (set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)"
    "${pip[@]}" "$package"
    ;;
  cpu-runtime)
    "${pip[@]}" "$package"
    ;;
  *)
    die "unknown flavour '$flavour' (gpu, cpu, cpu-runtime)"
    ;;
esac
"$python" -m vqdeploy --version
