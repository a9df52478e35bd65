# syntax=docker/dockerfile:1
# The duplex image for users: one image for the engine, front (Envoy and the session picker), agent and
# operator pods. Same content as the offline build (scripts/image.sh, a debootstrap'ed Debian root filesystem):
# both install with scripts/image-install.sh. Needs BuildKit (the default builder) for the wheel mounts.
#
#   docker build -t duplex:0.1.0 .
#
# torch must be its CPU build (2.13.0): point pip at PyTorch's CPU wheel index (or a mirror of it) with
#   --build-arg PIP_EXTRA_INDEX_URL=<index URL>
# otherwise pip resolves torch from the default index, whose Linux wheel is the large CUDA build.
ARG BASE=python:3.11-slim-bookworm

# Stage 1: every runtime dependency as a cp311 wheel (anything without one is built here, so no compiler
# reaches the image), and the project's own wheel.
FROM ${BASE} AS wheels
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
COPY . /src
RUN sh /src/scripts/image-install.sh wheels /src /wheels \
 && sh /src/scripts/image-install.sh project /src /project /wheels

# Stage 2: the image, in the offline build's two layers. The wheels are mounted for the install only (offline,
# --no-index), not copied into a layer.
FROM ${BASE}
COPY scripts/image-install.sh /usr/local/share/duplex/image-install.sh
# the base layer: the runtime dependencies (torch and the rest) and the pod user
RUN --mount=type=bind,from=wheels,source=/wheels,target=/mnt/wheels \
    sh /usr/local/share/duplex/image-install.sh install /mnt/wheels
# the project layer: only the project's own wheel (--no-deps) on top, all a source change rebuilds
RUN --mount=type=bind,from=wheels,source=/wheels,target=/mnt/wheels \
    --mount=type=bind,from=wheels,source=/project,target=/mnt/project \
    sh /usr/local/share/duplex/image-install.sh install-project /mnt/wheels /mnt/project
# The pods' user (operator/render/posture.py RUN_AS; the chart's securityContext). The root filesystem is
# read-only in the pods: HOME is the /tmp emptyDir, and bytecode is compiled at install time, never written.
USER 10001:10001
ENV HOME=/tmp PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
ENTRYPOINT ["duplex"]
