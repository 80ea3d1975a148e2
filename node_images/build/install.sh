#!/bin/sh
# Installs one image's Python packages; run by the Dockerfiles' RUN step with the repo mounted at /src.
#   install.sh REQUIREMENTS [project]
# REQUIREMENTS names node_images/build/requirements/REQUIREMENTS.txt; `project` also installs this repo's
# package (swarm-learning-k8s) with --no-deps: its requirements come from REQUIREMENTS only, which keeps
# torch out of the operator and SN images.
#
# Two sources, chosen by whether /wheels exists:
# - offline (node_images/build/images.py, `make images`): /wheels is a bind mount holding exactly the pinned
#   wheels of this image, their requirements.txt and the project's wheel. No index is asked, and pip runs
#   from its own wheel, so the image gets no pip.
# - online (plain `docker build` from the repo, e.g. FROM python:3.11-slim-bookworm): pip from the base image
#   installs the requirement ranges from the configured index and builds the project from /src.
set -eu
export PIP_ROOT_USER_ACTION=ignore  # building an image as root is what is meant
req="$1"
project="${2:-}"

if [ -d /wheels ]; then
    pip_whl="$(ls /wheels/pip-*.whl)"
    pip() { python "$pip_whl/pip" --disable-pip-version-check "$@"; }
    # --break-system-packages: Debian's python marks its site as externally managed; this image is ours.
    pip install --no-index --find-links /wheels --no-cache-dir --break-system-packages \
        -r /wheels/requirements.txt
    if [ "$project" = project ]; then
        pip install --no-index --no-deps --no-cache-dir --break-system-packages /wheels/swarm_learning_k8s-*.whl
    fi
else
    # EXTRA_INDEX_URL (a build argument of Dockerfile.torch): e.g. PyTorch's CPU-only wheel index.
    python -m pip install --no-cache-dir ${EXTRA_INDEX_URL:+--extra-index-url "$EXTRA_INDEX_URL"} \
        -r "/src/node_images/build/requirements/$req.txt"
    if [ "$project" = project ]; then
        # Built from a copy: /src is read-only and setuptools writes build/ and *.egg-info next to the sources.
        mkdir -p /tmp/src/node_images
        cp -r /src/pyproject.toml /src/README.md /src/operator /tmp/src/
        cp -r /src/node_images/swarmlearning /tmp/src/node_images/
        python -m pip install --no-cache-dir --no-deps /tmp/src
        rm -rf /tmp/src
    fi
fi
# Non-root user of the pods (operator/swarm_operator/names.py NODE_UID): a passwd entry, so tools that look the
# user up (getpass, torch's cache dirs) work.
grep -q '^[^:]*:x:65532:' /etc/passwd || echo 'nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin' >>/etc/passwd
grep -q '^[^:]*:x:65532:' /etc/group || echo 'nonroot:x:65532:' >>/etc/group
