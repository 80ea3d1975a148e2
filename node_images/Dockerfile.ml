# ML image: torch + `swarmlearning.pyt.SwarmCallback`, FROM the shared torch-base. User images start FROM
# it and add their training program (a SwarmTask's command/args run it); without one it trains the
# digits demo. tini is PID 1 so SIGTERM reaches the program (Python as PID 1 ignores it).
#   make images                                                     # offline
#   docker build -f node_images/Dockerfile.ml -t swarmlearning/ml:0.1.0 .   # after building torch-base
ARG TORCH_BASE_IMAGE=swarmlearning/torch-base:0.1.0
FROM ${TORCH_BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 GRPC_VERBOSITY=ERROR HOME=/tmp
RUN --mount=type=bind,target=/src \
    sh /src/node_images/build/install.sh node project \
    && if ! command -v tini >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*; fi \
    && python -c "from swarmlearning.pyt import SwarmCallback"
WORKDIR /app
USER 65532:65532
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "swarmlearning.demo.digits"]
