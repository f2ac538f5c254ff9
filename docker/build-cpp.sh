#!/usr/bin/env bash
# Build and install the C++ runtime (cpp/: vqdeploy-cpp, libvqdeploy_runtime, its CMake package) in an image's
# build stage, against the ONNX Runtime the image's Python already has: the onnxruntime wheel's
# onnxruntime/capi/libonnxruntime.so.1.* (onnxruntime-gpu in the gpu image), with the ONNX Runtime C/C++ headers
# in cpp/third_party/. The Dockerfile's cpp-cpu and cpp-gpu stages call it; docs/docker.md, docs/cpp.md.
#
#   docker/build-cpp.sh FLAVOUR SOURCE PREFIX BASE_PACKAGES
#
#   FLAVOUR  cpu   ONNX Runtime only (VQDEPLOY_WITH_TENSORRT=OFF)
#            gpu   also the TensorRT backend, required (VQDEPLOY_WITH_TENSORRT=ON): TensorRT's headers and
#                  libnvinfer and the CUDA toolkit of NVIDIA's TensorRT container, found by CMake
#   SOURCE   the cpp/ directory
#   PREFIX   where it installs (bin/, lib/, include/, lib/cmake/vqdeploy_runtime/)
#   BASE_PACKAGES  a file listing the Debian packages of the stage's base (dpkg-query's ${binary:Package}, one a
#            line), written before the build tools were installed
#
# Needs a C++17 compiler, cmake, make, nlohmann-json, libpng and libssl development files (the stage installs them
# with apt-get) and $PYTHON (default python3 on PATH: the image's venv) with onnxruntime installed. One Release build,
# no tests, as many jobs as CPUs; warnings are not errors (the base's compiler may be newer than the tested g++ 12).
# Installed stripped. Then it checks that every shared library the binary and the library need resolves, and
# writes PREFIX/share/vqdeploy_runtime/debian-packages: the Debian packages (package=version, as installed here)
# that hold those libraries and that the stage's base did not have (libpng; libssl where the base lacks it),
# which the final stage installs.
set -euo pipefail
export LC_ALL=C  # sort and comm agree

die() { echo "error: $*" >&2; exit 2; }

[ $# -eq 4 ] || die "usage: docker/build-cpp.sh cpu|gpu SOURCE PREFIX BASE_PACKAGES"
flavour=$1 source=$2 prefix=$3 base_packages=$4
python=${PYTHON:-python3}
case "$flavour" in
  cpu) tensorrt=OFF ;;
  gpu) tensorrt=ON ;;
  *) die "unknown flavour '$flavour' (cpu, gpu)" ;;
esac
headers=$source/third_party/onnxruntime-1.23.2/include
[ -f "$headers/onnxruntime_cxx_api.h" ] || die "$headers: no ONNX Runtime headers (onnxruntime_cxx_api.h)"
[ -s "$base_packages" ] || die "$base_packages: no list of the base's packages"
# the wheel's library, found without importing onnxruntime (onnxruntime-gpu looks for CUDA when imported)
ort=$("$python" - <<'EOF'
import glob, importlib.util, sys
spec = importlib.util.find_spec("onnxruntime")
found = [f for d in (spec.submodule_search_locations or []) for f in glob.glob(f"{d}/capi/libonnxruntime.so.1.*")] if spec else []
if len(found) != 1:
    sys.exit(f"expected one onnxruntime/capi/libonnxruntime.so.1.* in {sys.executable}'s onnxruntime, found {found}")
print(found[0])
EOF
)

build=$(mktemp -d)
cmake -S "$source" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib \
  -DVQDEPLOY_WERROR=OFF -DVQDEPLOY_WITH_TENSORRT="$tensorrt" \
  -DONNXRUNTIME_INCLUDE_DIR="$headers" -DONNXRUNTIME_LIBRARY="$ort"
cmake --build "$build" --parallel "$(nproc)"
cmake --install "$build" --strip
rm -rf "$build"

# every shared library resolves (the wheel's ONNX Runtime through the links beside libvqdeploy_runtime); in the gpu
# image, the CUDA driver's libcuda.so.1 may be missing at build time: the NVIDIA Container Toolkit brings the
# host's at run time (vqdeploy-cpp itself loads it with dlopen, but a library it links might need it)
needs=$(ldd "$prefix/bin/vqdeploy-cpp" "$prefix/lib/libvqdeploy_runtime.so")
missing=$(awk '$2 == "=>" && $3 == "not" {print $1}' <<<"$needs" | sort -u)
driver=""
if [ "$flavour" = gpu ] && grep -qx "libcuda.so.1" <<<"$missing"; then
  driver="libcuda.so.1"
  missing=$(grep -vx "libcuda.so.1" <<<"$missing" || true)
fi
[ -z "$missing" ] || die "libraries not found: $(tr '\n' ' ' <<<"$missing")"
if [ -z "$driver" ]; then "$prefix/bin/vqdeploy-cpp" run --help >/dev/null; fi

# the packages that hold them and that the base did not have (not those of the wheel or of the prefix: no package)
mkdir -p "$prefix/share/vqdeploy_runtime"
# (dpkg-query --search prints "package[:arch][, another]: /path"; a file no package holds is an error, skipped)
for lib in $(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$needs" | sort -u); do
  dpkg-query --search "*/$(basename "$lib")" 2>/dev/null | awk -F': ' '$2 ~ /^\// {split($1, p, ", "); print p[1]; exit}' \
    || true
done | sort -u | comm -23 - <(sort -u "$base_packages") \
  | xargs --no-run-if-empty dpkg-query --show --showformat='${binary:Package}=${Version}\n' \
  > "$prefix/share/vqdeploy_runtime/debian-packages"
echo "build-cpp: $prefix ($flavour; ONNX Runtime $ort); Debian packages it needs beyond the base:" \
  "$(tr '\n' ' ' < "$prefix/share/vqdeploy_runtime/debian-packages")"
