# syntax=docker/dockerfile:1
#
# rfdeploy for NVIDIA GPU servers: `docker run --gpus all ... IMAGE infer /data/img.jpg`.
#
# NOT BUILT IN THIS PROJECT'S CI: no Docker engine runs on the development machines, so this file
# is only parsed and checked offline (tests/test_dockerfile.py). See docs/deploy.md.
#
# Base: NVIDIA's TensorRT container from NGC, release 25.01 = TensorRT 10.8.0.43, CUDA 12.8.0,
# Ubuntu 24.04, Python 3.12 (NVIDIA's 25.01 framework support matrix). TensorRT engines are tied
# to the TensorRT version and GPU that built them, so engines are built inside this container, on
# the GPU that will run them, into the /cache volume (first use builds, later runs reuse; the
# engine manifest decides when to rebuild). Serving with Triton? Use the same release
# (nvcr.io/nvidia/tritonserver:25.01-py3 also ships TensorRT 10.8) so its plans load there.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

# ---- stage 1: build the wheel (build tools stay in this stage) -------------------------------
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rfdeploy ./rfdeploy
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- stage 2: runtime ----------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RFDEPLOY_ENGINE_CACHE=/cache
COPY --from=build /wheels /wheels
# The gpu extra adds onnxruntime-gpu, tensorrt (already in the base image, so pip keeps NVIDIA's
# build) and cuda-python. onnxruntime (CPU) and onnxruntime-gpu install the same module: keep
# only the GPU build.
# The base image's CUDA is 12.8: cuda-python 13 binds the CUDA 13 runtime, so it is held at 12.x.
# torch from PyPI may be a build for another CUDA than the host driver supports; TensorRT engines
# then still run (the GPU is found through cuda-python), only the torch backend falls back to CPU.
RUN printf 'cuda-python>=12.0,<13\ncuda-bindings<13\n' > /etc/rfdeploy-constraints.txt
RUN PIP_CONSTRAINT=/etc/rfdeploy-constraints.txt python3 -m pip install "$(ls /wheels/rfdeploy-*.whl)[gpu]" \
 && python3 -m pip uninstall -y onnxruntime \
 && python3 -m pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.18" \
 && rm -rf /wheels

# Unprivileged user (uid 1000 is taken by Ubuntu 24.04's `ubuntu` user).
RUN groupadd --system --gid 10001 rfdeploy \
 && useradd --system --uid 10001 --gid rfdeploy --home-dir /home/rfdeploy --create-home rfdeploy \
 && mkdir -p /cache /models /data \
 && chown rfdeploy:rfdeploy /cache /models /data
# /models: custom checkpoints / ONNX / engines, given by path (--detector /models/x.onnx);
# /cache: engines built for this GPU.
VOLUME ["/models", "/cache"]
WORKDIR /data
USER rfdeploy
ENTRYPOINT ["rfdeploy"]
CMD ["--help"]
