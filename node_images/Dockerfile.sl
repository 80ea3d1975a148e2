# SL image: `python -m swarmlearning.sl` (weights exchange on 30305, merges as round leader).
#   docker build -f node_images/Dockerfile.sl -t swarmlearning/sl:0.1.0 .
# The merge engine uses torch on the CPU. TORCH_INDEX_URL: a PyTorch wheel index (e.g. the CPU-only one
# from pytorch.org's install page, much smaller); empty = PyPI's default build.
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
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "safetensors>=0.4" "numpy>=1.26" "cryptography>=42" "aetcd>=1.0" \
        "grpcio>=1.60" "aiohttp>=3.9" "pyyaml>=6.0"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -m swarmlearning.sl --help >/dev/null
USER 65532:65532
EXPOSE 30305
ENTRYPOINT ["python", "-m", "swarmlearning.sl"]
