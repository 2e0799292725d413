# OnTheFly in a container. GPU image (the default): a CUDA runtime base and torch from the public
# index, which is the CUDA build. CPU image: another base and PyTorch's CPU index, e.g.
#   docker build --build-arg BASE=ubuntu:24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t onthefly:cpu .
# compose.yaml builds both. The token comes from the environment (an env file), never the image.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}

ARG TORCH_INDEX=""
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04's Python is 3.12 (the project needs 3.11 or newer).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
# The dependencies first, in their own layer: a code change does not reinstall torch.
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --index-url "$TORCH_INDEX" "$(grep '^torch==' requirements.txt)"; \
    fi \
    && pip install -r requirements.txt

COPY pyproject.toml README.md bot.py ./
COPY editor ./editor
COPY sessions ./sessions
COPY handlers ./handlers
COPY evaluation ./evaluation
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 onthefly \
    && mkdir -p /data /cache/huggingface \
    && chown onthefly:onthefly /data /cache/huggingface
COPY docker/config.yaml /etc/onthefly/config.yaml

USER 1000:1000
WORKDIR /data
VOLUME ["/data", "/cache/huggingface"]
EXPOSE 9464
# /health answers 200 while connected to Discord; the first start downloads ~10 GB of models.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/health', timeout=4)"]
CMD ["onthefly", "--config", "/etc/onthefly/config.yaml"]
