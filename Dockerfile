# Operator image: `swarm-operator` (Kopf). No torch: the project is installed with --no-deps and only the
# operator's requirements (node_images/build/requirements/operator.txt) are installed.
#   make images                                                     # offline: local base + wheelhouse
#   docker build -t swarmlearning/operator:0.1.0 .                  # with a registry and an index
# BASE_IMAGE: any Debian-like image with python (3.11) on PATH; `make images` passes its own
# swarmlearning/base (debootstrap bookworm, /usr/bin/python) and mounts the wheels at /wheels.
# RUN --mount needs BuildKit (docker >= 23 by default) or buildah/podman. See docs/images.md.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR HOME=/tmp
RUN --mount=type=bind,target=/src \
    sh /src/node_images/build/install.sh operator project \
    && python -c "import sys, swarm_operator.main, swarm_operator.handlers; assert 'torch' not in sys.modules" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the operator image" >&2; exit 1; fi
# Non-root (the chart runs it so, with a read-only root file system).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["swarm-operator"]
