# The scopeloop image: ML backend and workers (docker-compose.yml builds it).
#   docker build -t scopeloop:cuda .                      # CUDA torch + faiss-gpu (GPU worker)
#   docker build -t scopeloop:cpu --build-arg TORCH=cpu . # CPU torch + faiss-cpu
# The CUDA runtime comes with the torch wheels; the server needs only the NVIDIA driver and
# the NVIDIA Container Toolkit.
FROM python:3.11-slim

ARG TORCH=cuda
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache

# tzdata: the nightly refresh runs at local time (TZ); libgomp1: OpenMP for torch/faiss
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata libgomp1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/scopeloop

# torch first, in its own layer: code changes do not re-download gigabytes
COPY .ci/constraints-cpu.txt .ci/constraints-cpu.txt
RUN case "$TORCH" in \
      cpu)  pip install -c .ci/constraints-cpu.txt --extra-index-url https://download.pytorch.org/whl/cpu torch torchvision ;; \
      cuda) pip install "torch>=2.2" "torchvision>=0.17" ;; \
      *)    echo "build arg TORCH must be cpu or cuda, not '$TORCH'" >&2; exit 1 ;; \
    esac

COPY pyproject.toml README.md ./
COPY scopeloop scopeloop
COPY trainer trainer
COPY sampler sampler
COPY ml_backend ml_backend
COPY label_config label_config
RUN if [ "$TORCH" = cpu ]; then \
      pip install -c .ci/constraints-cpu.txt --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]"; \
    else \
      pip install ".[gpu]"; \
    fi \
 && scopeloop --version

# non-root; docker-compose.yml runs it as SCOPELOOP_UID:SCOPELOOP_GID (the data folders' owner)
RUN useradd --create-home --uid 1000 scopeloop
USER scopeloop
WORKDIR /home/scopeloop
EXPOSE 9090
CMD ["scopeloop", "backend", "--host", "0.0.0.0", "--port", "9090"]
