# syntax=docker/dockerfile:1
# vqdeploy images (docs/docker.md; docker/build-local.sh builds them with buildah where no Docker daemon runs):
#   docker build --target gpu -t vqdeploy:gpu .   # TensorRT + ONNX Runtime on CUDA; runs exported artifacts
#   docker build --target cpu -t vqdeploy:cpu .   # slim Python + CPU torch; exports and runs
# Both install through docker/install.sh, which CI runs in a fresh venv (tests/test_docker.py), and mount
# the artifacts at /artifacts. No engine is built here: engines are per GPU, built at the first `run`
# (VQDEPLOY_BUILD_ENGINES=1) or by `build-trt`, into /artifacts/engines/.
# Both also hold the C++ runtime in /opt/vqdeploy-cpp (vqdeploy-cpp on PATH, libvqdeploy_runtime, headers and
# CMake package), compiled by docker/build-cpp.sh in a build stage (cpp-cpu, cpp-gpu) against the ONNX Runtime of
# the image's venv, and in the gpu image against the base's TensorRT and CUDA; compilers stay in that stage.

# NGC TensorRT 26.08: TensorRT 11.2.1.2, CUDA 13, cuDNN 9, Ubuntu 24.04, Python 3.12
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:26.08-py3
ARG PYTHON_IMAGE=python:3.12-slim-trixie
ARG VQDEPLOY_VERSION=0.1.0

# The vqdeploy wheel, built once for both images (they hold no source tree).
# PIP_CONFIG_FILE (each stage): unset unless given; docker/build-local.sh passes the build machine's pip
# configuration, bind-mounted read-only for the RUN steps, so nothing of it stays in an image.
FROM ${PYTHON_IMAGE} AS wheel
ARG PIP_CONFIG_FILE
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vqdeploy ./vqdeploy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# CPU, the Python part: export (torch) and run (ONNX Runtime).
FROM ${PYTHON_IMAGE} AS cpu-python
ARG PIP_CONFIG_FILE
ARG PYTHON_IMAGE
ARG VQDEPLOY_VERSION
LABEL org.opencontainers.image.title="vqdeploy-cpu" \
      org.opencontainers.image.description="taming-transformers VQGAN + transformer: export to ONNX and sample on the CPU" \
      org.opencontainers.image.version="${VQDEPLOY_VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV VIRTUAL_ENV=/opt/vqdeploy \
    PATH=/opt/vqdeploy/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/install.sh docker/constraints.txt /tmp/install/
COPY --from=wheel /wheels /tmp/install/wheels
RUN python -m venv /opt/vqdeploy \
    && /tmp/install/install.sh cpu /tmp/install/wheels/vqdeploy-*.whl \
    && rm -rf /tmp/install \
    && groupadd --gid 10001 vqdeploy \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 vqdeploy \
    && install -d -o vqdeploy -g vqdeploy /artifacts

# vqdeploy-cpp for the cpu image, against the venv's onnxruntime wheel (the same file the final image has).
# The build tools are the base suite's, unpinned (the base image's tag pins the suite; a pin would hold for one
# suite only); none of them reaches an image. The runtime libraries are pinned: debian-packages, below.
FROM cpu-python AS cpp-cpu
COPY docker/build-cpp.sh /tmp/build/
COPY cpp /tmp/build/cpp
# hadolint ignore=DL3008
RUN dpkg-query --show --showformat='${binary:Package}\n' > /tmp/build/base-packages \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         g++ make cmake nlohmann-json3-dev libpng-dev libssl-dev \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && /tmp/build/build-cpp.sh cpu /tmp/build/cpp /opt/vqdeploy-cpp /tmp/build/base-packages

# CPU: export (torch) and run (ONNX Runtime), in Python and C++.
FROM cpu-python AS cpu
COPY --from=cpp-cpu /opt/vqdeploy-cpp /opt/vqdeploy-cpp
# the Debian packages of the libraries vqdeploy-cpp links that the base lacks (libpng), at the versions it was built
# with (docker/build-cpp.sh lists them)
RUN if [ -s /opt/vqdeploy-cpp/share/vqdeploy_runtime/debian-packages ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive xargs --arg-file=/opt/vqdeploy-cpp/share/vqdeploy_runtime/debian-packages \
             apt-get install -y --no-install-recommends \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PATH=/opt/vqdeploy/bin:/opt/vqdeploy-cpp/bin:$PATH \
    CMAKE_PREFIX_PATH=/opt/vqdeploy-cpp
USER 10001:10001
WORKDIR /artifacts
ENTRYPOINT ["vqdeploy"]
CMD ["--help"]

# GPU, the Python part: run and bench with TensorRT (engines built per GPU at first start) or ONNX Runtime on CUDA.
FROM ${TENSORRT_IMAGE} AS gpu-python
ARG PIP_CONFIG_FILE
ARG TENSORRT_IMAGE
ARG VQDEPLOY_VERSION
LABEL org.opencontainers.image.title="vqdeploy-gpu" \
      org.opencontainers.image.description="taming-transformers VQGAN + transformer: sample with TensorRT or ONNX Runtime on CUDA" \
      org.opencontainers.image.version="${VQDEPLOY_VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${TENSORRT_IMAGE}"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV VIRTUAL_ENV=/opt/vqdeploy \
    PATH=/opt/vqdeploy/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY docker/install.sh docker/constraints.txt /tmp/install/
COPY --from=wheel /wheels /tmp/install/wheels
# --system-site-packages: the container's TensorRT bindings; --without-pip: its pip serves the venv
RUN python3 -m venv --system-site-packages --without-pip /opt/vqdeploy \
    && /tmp/install/install.sh gpu /tmp/install/wheels/vqdeploy-*.whl \
    && rm -rf /tmp/install \
    && groupadd --gid 10001 vqdeploy \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 vqdeploy \
    && install -d -o vqdeploy -g vqdeploy /artifacts

# vqdeploy-cpp for the gpu image: as cpp-cpu, against the venv's onnxruntime-gpu wheel, with the TensorRT backend
# (required) from the base's TensorRT headers and libnvinfer and its CUDA toolkit.
FROM gpu-python AS cpp-gpu
COPY docker/build-cpp.sh /tmp/build/
COPY cpp /tmp/build/cpp
# hadolint ignore=DL3008
RUN dpkg-query --show --showformat='${binary:Package}\n' > /tmp/build/base-packages \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         g++ make cmake nlohmann-json3-dev libpng-dev libssl-dev \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && /tmp/build/build-cpp.sh gpu /tmp/build/cpp /opt/vqdeploy-cpp /tmp/build/base-packages

# GPU: run and bench with TensorRT or ONNX Runtime on CUDA, in Python and C++.
FROM gpu-python AS gpu
COPY --from=cpp-gpu /opt/vqdeploy-cpp /opt/vqdeploy-cpp
# as in the cpu image: the libraries vqdeploy-cpp links that the base lacks
RUN if [ -s /opt/vqdeploy-cpp/share/vqdeploy_runtime/debian-packages ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive xargs --arg-file=/opt/vqdeploy-cpp/share/vqdeploy_runtime/debian-packages \
             apt-get install -y --no-install-recommends \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PATH=/opt/vqdeploy/bin:/opt/vqdeploy-cpp/bin:$PATH \
    CMAKE_PREFIX_PATH=/opt/vqdeploy-cpp \
    VQDEPLOY_BUILD_ENGINES=1
USER 10001:10001
WORKDIR /artifacts
ENTRYPOINT ["vqdeploy"]
CMD ["--help"]
