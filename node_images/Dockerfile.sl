# SL image: `python -m swarmlearning.sl` (weights exchange on 30305, merges as round leader), FROM the
# shared torch-base (node_images/Dockerfile.torch).
#   make images                                                     # offline
#   docker build -f node_images/Dockerfile.sl -t swarmlearning/sl:0.1.0 .   # after building torch-base
ARG TORCH_BASE_IMAGE=swarmlearning/torch-base:0.1.0
FROM ${TORCH_BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR HOME=/tmp
RUN --mount=type=bind,target=/src \
    sh /src/node_images/build/install.sh node project \
    && python -m swarmlearning.sl --help >/dev/null
USER 65532:65532
EXPOSE 30305
ENTRYPOINT ["python", "-m", "swarmlearning.sl"]
