# syntax=docker/dockerfile:1
# vqdeploy images (docs/docker.md; docker/build-local.sh builds them with buildah where no Docker daemon runs):
#   docker build --target gpu -t vqdeploy:gpu .   # TensorRT + ONNX Runtime on CUDA; runs exported artifacts
#   docker build --target cpu -t vqdeploy:cpu .   # slim Python + CPU torch; exports and runs
# Both install through docker/install.sh, which CI runs in a fresh venv (tests/test_docker.py), and mount
# the artifacts at /artifacts. No engine is built here: engines are per GPU, built at the first `run`
# (VQDEPLOY_BUILD_ENGINES=1) or by `build-trt`, into /artifacts/engines/.

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

# CPU: export (torch) and run (ONNX Runtime).
FROM ${PYTHON_IMAGE} AS cpu
ARG PIP_CONFIG_FILE
ARG PYTHON_IMAGE
ARG VQDEPLOY_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="vqdeploy-cpu" \
      org.opencontainers.image.description="taming-transformers VQGAN + transformer: export to ONNX and sample on the CPU" \
      org.opencontainers.image.version="${VQDEPLOY_VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
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
USER 10001:10001
WORKDIR /artifacts
ENTRYPOINT ["vqdeploy"]
CMD ["--help"]

# GPU: run and bench with TensorRT (engines built per GPU at first start) or ONNX Runtime on CUDA.
FROM ${TENSORRT_IMAGE} AS gpu
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
    PYTHONDONTWRITEBYTECODE=1 \
    VQDEPLOY_BUILD_ENGINES=1
COPY docker/install.sh docker/constraints.txt /tmp/install/
COPY --from=wheel /wheels /tmp/install/wheels
# --system-site-packages: the container's TensorRT bindings; --without-pip: its pip serves the venv
RUN python3 -m venv --system-site-packages --without-pip /opt/vqdeploy \
    && /tmp/install/install.sh gpu /tmp/install/wheels/vqdeploy-*.whl \
    && rm -rf /tmp/install \
    && groupadd --gid 10001 vqdeploy \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 vqdeploy \
    && install -d -o vqdeploy -g vqdeploy /artifacts
USER 10001:10001
WORKDIR /artifacts
ENTRYPOINT ["vqdeploy"]
CMD ["--help"]
