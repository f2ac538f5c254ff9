#!/usr/bin/env bash
# Build a vqdeploy image from the Dockerfile (docs/docker.md): with Docker where a Docker daemon answers,
# else with buildah; where the base image's registry cannot be reached either, on a stand-in base image made
# here (Debian minbase with python3, venv and pip, by mmdebstrap from the machine's own apt sources).
#
#   docker/build-local.sh [--target cpu|gpu] [--tag NAME] [--base IMAGE] [--torch-index URL]
#                         [--mode auto|docker|buildah|local] [--storage DIR] [--suite SUITE] [--no-pip-config]
#
#   --target       Dockerfile target (default cpu); gpu needs NVIDIA's registry (not in --mode local)
#   --tag          image name (default vqdeploy:TARGET)
#   --base         the base image: build argument PYTHON_IMAGE (cpu) or TENSORRT_IMAGE (gpu); default the
#                  Dockerfile's, and in --mode local localhost/vqdeploy-base:SUITE (made when missing)
#   --torch-index  build argument TORCH_INDEX_URL, the only index torch comes from; '' (empty) lets pip's
#                  configuration decide. Default the Dockerfile's (PyTorch's CPU index); in --mode local ''
#   --mode         auto (default): docker if `docker info` answers; else buildah, and local when the base
#                  image's registry does not answer
#                  docker   docker build (BuildKit; needs the registry and PyTorch's index, or --torch-index)
#                  buildah  buildah bud, base pulled from its registry
#                  local    buildah bud --pull-never on a base made here (the test of tests/test_container_image.py)
#   --storage      buildah/podman: a private containers storage in DIR (overlay driver) instead of the system's;
#                  run the image with the same `podman --root DIR/root --runroot DIR/run --storage-driver overlay`
#                  (DIR at most 46 characters: podman refuses a runroot path over 50)
#   --suite        Debian suite of the local base (default this machine's, e.g. bookworm: Python 3.11)
#   --no-pip-config  buildah: do not hand this machine's pip configuration to the build (see below)
#
# With buildah, these make it work on a machine without a daemon (root, no registry; docs/docker.md):
#   --runtime runc          crun cannot set the default rlimits in some sandboxes and refuses hybrid cgroups
#   --ulimit nofile/nproc   within this machine's hard limits (podman's default nofile, 1048576, may exceed them),
#                           nproc at most 32768 (buildah and podman lower their own limit to that)
#   --format docker         the OCI format ignores SHELL (the Dockerfile's RUN steps use bash -o pipefail)
#   --network host          the RUN steps get exactly this machine's network (a proxy on loopback included)
#   pip configuration       `pip config list` (files and PIP_* variables) as one file, build argument
#                           PIP_CONFIG_FILE, and the local paths it names (CA bundle, find-links and file://
#                           index folders, constraint files) bind-mounted read-only into the RUN steps under
#                           /dev/vqdeploy-build: nothing of them stays in the image
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
say() { echo "build-local: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
context=$(dirname "$here")
target=cpu tag="" base="" base_set=0 torch_index="" torch_set=0 mode=auto storage="" suite="" pip_config=1
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?}; shift 2 ;;
    --tag) tag=${2:?}; shift 2 ;;
    --base) base=${2:?}; base_set=1; shift 2 ;;
    --torch-index) [ $# -ge 2 ] || die "--torch-index needs a value ('' for none)"; torch_index=$2; torch_set=1; shift 2 ;;
    --mode) mode=${2:?}; shift 2 ;;
    --storage) storage=${2:?}; shift 2 ;;
    --suite) suite=${2:?}; shift 2 ;;
    --no-pip-config) pip_config=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (--help)" ;;
  esac
done
case "$target" in cpu) base_arg=PYTHON_IMAGE ;; gpu) base_arg=TENSORRT_IMAGE ;; *) die "--target cpu or gpu, not '$target'" ;; esac
tag=${tag:-vqdeploy:$target}
dockerfile_base=$(sed -n "s/^ARG $base_arg=//p" "$context/Dockerfile")

# a registry answers when its /v2/ endpoint gives any HTTP status (401 included)
registry_of() {
  local first=${1%%/*}
  case "$1" in */*) ;; *) first="" ;; esac
  case "$first" in *.*|*:*|localhost) echo "$first" ;; *) echo docker.io ;; esac
}
answers() {
  local host=$1
  [ "$host" = docker.io ] && host=registry-1.docker.io
  [ "$host" = localhost ] && return 1
  python3 - "https://$host/v2/" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=8)
except urllib.error.HTTPError:
    pass
sys.exit(0)
EOF
}

if [ "$mode" = auto ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    mode=docker
  elif command -v buildah >/dev/null 2>&1; then
    if answers "$(registry_of "${base:-$dockerfile_base}")"; then mode=buildah; else mode=local; fi
  else
    die "neither a Docker daemon (docker info) nor buildah: apt-get install buildah podman mmdebstrap runc uidmap"
  fi
  say "mode $mode"
fi

build_args=()
if [ "$mode" = local ] && [ "$torch_set" = 0 ]; then torch_set=1 torch_index=""; fi
if [ "$torch_set" = 1 ]; then build_args+=(--build-arg "TORCH_INDEX_URL=$torch_index"); fi

if [ "$mode" = docker ]; then
  if [ "$base_set" = 1 ]; then build_args+=(--build-arg "$base_arg=$base"); fi
  set -x
  exec docker build --target "$target" -t "$tag" "${build_args[@]}" "$context"
fi

[ "$mode" = buildah ] || [ "$mode" = local ] || die "--mode auto, docker, buildah or local, not '$mode'"
command -v buildah >/dev/null 2>&1 || die "buildah is not installed: apt-get install buildah podman mmdebstrap runc uidmap"
storage_opts=()
if [ -n "$storage" ]; then
  mkdir -p "$storage" && storage=$(cd "$storage" && pwd)
  [ ${#storage} -le 46 ] || die "--storage $storage: at most 46 characters (podman refuses a runroot over 50)"
  storage_opts=(--root "$storage/root" --runroot "$storage/run" --storage-driver overlay)
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/vqdeploy-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ "$mode" = local ]; then
  [ "$target" = cpu ] || die "--mode local builds the cpu target only: the gpu image's base is NVIDIA's TensorRT container"
  # shellcheck source=/dev/null
  suite=${suite:-$( (. /etc/os-release && echo "${VERSION_CODENAME:-}") 2>/dev/null)}
  suite=${suite:-bookworm}
  [ "$base_set" = 1 ] || base=localhost/vqdeploy-base:$suite
  if buildah "${storage_opts[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    say "base $base: already in storage"
  else
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (it makes the base image): apt-get install mmdebstrap"
    command -v podman >/dev/null 2>&1 || die "podman is not installed (it imports the base image): apt-get install podman"
    say "base $base: mmdebstrap $suite minbase + python3, venv, pip (the machine's apt sources)"
    mmdebstrap --quiet --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates "$suite" "$work/base.tar"
    podman "${storage_opts[@]}" import --quiet "$work/base.tar" "$base" >/dev/null
    rm -f "$work/base.tar"
  fi
fi
if [ "$base_set" = 1 ] || [ "$mode" = local ]; then build_args+=(--build-arg "$base_arg=$base"); fi

# The machine's pip configuration for pip in the RUN steps (index, proxy CA, local wheels): `pip config list`
# (files and PIP_* variables) as one file, and the local paths it names, bind-mounted read-only under
# /dev/vqdeploy-build (the runtime's tmpfs /dev: no mount point is left in the image), the file named by the
# Dockerfile's build argument PIP_CONFIG_FILE.
mounts=()
if [ "$pip_config" = 1 ] && python3 -m pip --version >/dev/null 2>&1; then
  inside=/dev/vqdeploy-build
  python3 -m pip config list 2>/dev/null | python3 -c '
import ast, os, sys
work, inside = sys.argv[1:]
conf, env, mounts = {}, {}, {}
for line in sys.stdin:
    key, _, value = line.rstrip("\n").partition("=")
    section, _, name = key.rpartition(".")
    value = ast.literal_eval(value)
    if section == ":env:":
        env[name] = value  # PIP_* variables win over the files, as in pip
    else:
        conf.setdefault(section, {})[name] = value
conf.setdefault("global", {}).update(env)

def local(item: str, index: bool) -> str:
    """item, or where its local file or folder is mounted inside the build"""
    url = item.startswith("file://")
    path = os.path.normpath(item[len("file://"):] if url else item)
    if not os.path.isabs(path) or not os.path.exists(path):
        return item
    top, rest = path, ""
    if index and os.path.basename(path) == "simple":  # a local index links to files beside simple/
        top, rest = os.path.dirname(path), "/simple"
    if top not in mounts:
        mounts[top] = f"{inside}/{len(mounts)}-{os.path.basename(top)}"
    return ("file://" if url else "") + mounts[top] + rest

for items in conf.values():
    for name, value in items.items():
        if name in ("cert", "client-cert", "find-links", "constraint", "requirement", "index-url", "extra-index-url"):
            items[name] = " ".join(local(x, name.endswith("index-url")) for x in value.split())
with open(f"{work}/pip.conf", "w") as f:
    for section, items in conf.items():
        f.write(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()))
with open(f"{work}/mounts", "w") as f:
    f.write("".join(f"{os.path.realpath(src)}:{dst}:ro\n" for src, dst in mounts.items()))
' "$work" "$inside"
  if [ -s "$work/pip.conf" ]; then
    mounts+=(--volume "$work/pip.conf:$inside/pip.conf:ro" --build-arg "PIP_CONFIG_FILE=$inside/pip.conf")
    while IFS= read -r volume; do mounts+=(--volume "$volume"); done < "$work/mounts"
    say "pip configuration for the build ($inside/pip.conf):"
    sed 's/^/  /' "$work/pip.conf" >&2
  fi
fi

runtime=()
command -v runc >/dev/null 2>&1 && runtime=(--runtime runc)
# at most this machine's hard limits, and nproc at most 32768: buildah and podman lower their own process
# limit to that at start, and runc cannot raise it again for the container (measured, docs/docker.md)
limit() { local v; v=$(ulimit -H "$1"); if [ "$v" = unlimited ] || [ "$v" -gt "$2" ]; then v=$2; fi; echo "$v"; }
nofile=$(limit -n 1048576) nproc=$(limit -u 32768)
pull=()
if [ "$mode" = local ]; then pull=(--pull-never); fi
set -x
buildah "${storage_opts[@]}" bud --format docker "${runtime[@]}" --network host "${pull[@]}" \
  --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" "${mounts[@]}" \
  --target "$target" --tag "$tag" "${build_args[@]}" --file "$context/Dockerfile" "$context"
