# The pretrainlab image: the project, its locked dependencies and the `pretrainlab` CLI. It is
# what prefect.yaml's Docker and Kubernetes work pools run (code at /app, the store a volume).
#
#   docker build -t pretrainlab:latest .
#   docker run --rm -v "$PWD/store:/srv/pretrainlab" pretrainlab:latest \
#       sh -c "pretrainlab data fetch && pretrainlab run configs/demo.yaml --set store=/srv/pretrainlab"
#
# torch: the CPU wheel by default (~200 MB instead of the multi-GB CUDA build PyPI serves on
# Linux). For NVIDIA GPUs build with the CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t pretrainlab:cuda .
# and run with `--gpus all` (the host needs the NVIDIA container toolkit).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /app

# torch first, alone, from its own index: the largest layer changes only with the pin. The
# CPU wheel's version (2.13.0+cpu) satisfies the lock's torch==2.13.0.
COPY constraints.txt ./
RUN pip install --index-url "$TORCH_INDEX" "$(grep '^torch==' constraints.txt)"

# The project and every other dependency at the versions in constraints.txt (the same lock
# `make setup` installs with), plus the Dask and PostgreSQL extras a scaled-out run uses.
COPY . .
RUN pip install -c constraints.txt ".[dask,postgres]" \
    && useradd --create-home --uid 1000 pretrainlab \
    && mkdir -p /srv/pretrainlab \
    && chown -R pretrainlab /srv/pretrainlab /app

USER pretrainlab
VOLUME ["/srv/pretrainlab"]
CMD ["pretrainlab", "--help"]
