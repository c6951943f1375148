# syntax=docker/dockerfile:1
# The batchformers image: a worker by default; also Flower and the producer CLI.
#
#   docker build -t batchformers .          # torch with CUDA 12.8 (the host needs only the NVIDIA
#                                           # driver and the NVIDIA Container Toolkit)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t batchformers:cpu .
#
#   docker run --gpus '"device=0"' -e BATCHFORMERS_BROKER_URL=redis://:PASSWORD@HOST:6379/0 \
#       -v hf-cache:/cache/huggingface -v /srv/data:/data batchformers            # one worker, one GPU
#
# Settings are BATCHFORMERS_* environment variables (jobs/settings.py); models are cached
# under HF_HOME, which should be a volume so that a restarted worker does not download again.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

# torch first, from its own index: a bare `torch` requirement would pick whatever PyPI has.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY jobs ./jobs
COPY producer ./producer
COPY worker ./worker
COPY examples ./examples
# Editable, so the package runs from /app with its data files and examples beside it.
RUN pip install -c constraints.txt -e ".[s3,metrics,flower]"

# An unprivileged user; the cache and data folders exist (and are its own) so that named
# volumes mounted there start out writable.
RUN useradd --create-home --uid 1000 batchformers \
    && mkdir -p /cache/huggingface /data \
    && chown -R batchformers:batchformers /cache /data
USER batchformers

# 9100: worker Prometheus metrics (with BATCHFORMERS_METRICS_PORT=9100); 5555: Flower.
EXPOSE 9100 5555
# A worker stops warmly on SIGTERM: the running shard finishes and commits (give it time:
# `stop_grace_period` in compose, `--stop-timeout` with docker run); an unfinished shard is
# redelivered anyway.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchformers"]
CMD ["worker"]
