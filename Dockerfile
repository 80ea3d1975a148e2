# Operator image: `swarm-operator` (Kopf). It must not carry torch: the package is installed with
# --no-deps and only the operator's own dependencies are installed explicitly.
#   docker build -t swarmlearning/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY node_images/swarmlearning/ node_images/swarmlearning/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR
# What `swarm_operator` imports: Kopf and the Kubernetes client, metrics, and the torch-free parts of
# `swarmlearning` it reads the ledger and issues certificates with (pki, etcd, ledger).
RUN pip install --no-cache-dir \
        "kopf>=1.45" "kubernetes>=30" "prometheus-client>=0.20" "pyyaml>=6.0" \
        "cryptography>=42" "aetcd>=1.0" "grpcio>=1.60"
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels \
    && python -c "import swarm_operator.main, swarm_operator.handlers, sys; assert 'torch' not in sys.modules" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the operator image" >&2; exit 1; fi
# distroless-style non-root user; the chart runs it with a read-only root file system.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["swarm-operator"]
