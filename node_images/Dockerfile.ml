# ML base image: PyTorch plus `swarmlearning.pyt.SwarmCallback`; user images start FROM it and add
# their training program (the SwarmTask's command/args run it).
#   docker build -f node_images/Dockerfile.ml -t swarmlearning/ml:0.1.0 .                    # CPU
#   docker build -f node_images/Dockerfile.ml --build-arg TORCH_INDEX_URL=<CUDA wheel index> \
#       -t swarmlearning/ml:0.1.0-cuda .                                                      # GPU
# TORCH_INDEX_URL: a PyTorch wheel index from pytorch.org's install page (CPU-only or a CUDA
# variant); empty = PyPI's default build. GPUs are requested per LearningNode/SwarmTask (`gpus`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY node_images/swarmlearning/ node_images/swarmlearning/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.15.0
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "safetensors>=0.4" "numpy>=1.26" "scikit-learn>=1.4"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -c "from swarmlearning.pyt import SwarmCallback"
WORKDIR /app
USER 65532:65532
