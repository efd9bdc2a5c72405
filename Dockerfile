# The image of any offsim workspace member: MEMBER (a folder of workspace.toml) is the only build
# argument, the rest is read from the workspace by tools/image_member.py (`offsim-image` in the
# image): the members to install (MEMBER and those it depends on), the console script to run and
# the port its /api/health answers on. Built from the repository root, the workspace:
#   docker build --build-arg MEMBER=users_service -t offsim-users .                 # prod
#   docker build --build-arg MEMBER=users_service --target dev -t offsim-users:dev .
# Targets: `dev` (an editable install; a long-running service restarts when a mounted .py file
# changes; compose's dev file mounts the source on /src) and `prod` (the default: runtime
# dependencies only, in a virtual environment, non-root).
# Fully qualified: buildah (the Tekton build) refuses a short name that its registries.conf does
# not resolve, where Docker assumes Docker Hub.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 offsim \
 && useradd --system --uid 10001 --gid offsim --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin offsim
COPY --chmod=0755 tools/image_member.py /usr/local/bin/offsim-image
WORKDIR /src

# MEMBER's image, worked out from the workspace: /image/src gets constraints.txt and the folders
# of MEMBER and of every member it depends on, /image/image.json what the image runs. The other
# stages take only these from here, so an edit to another member rebuilds nothing after it.
FROM base AS select
ARG MEMBER
COPY . /context
RUN offsim-image select "${MEMBER}" /context /image

# Wheels of every dependency, at the versions constraints.txt pins, then of the members. The
# dependencies come first, in a layer of their own: an edit to offsim's code rebuilds only the
# members' wheels (and members with the same dependencies share that layer).
FROM base AS build
COPY --from=select /image/deps/ ./
RUN pip wheel --wheel-dir /wheels -c constraints.txt -r requirements.txt
COPY --from=select /image/src/ ./
RUN pip wheel --wheel-dir /wheels --no-deps ./*/

FROM base AS dev
COPY --from=select /image/deps/ ./
# The dependencies, and watchfiles (pinned in constraints.txt), which restarts a long-running
# service when a .py file changes; then every member editable, so that an edit mounted on /src
# counts.
RUN pip install -c constraints.txt watchfiles -r requirements.txt
COPY --from=select /image/src/ ./
COPY --from=select /image/image.json /etc/offsim/image.json
RUN set -- && for folder in ./*/; do set -- "$@" --editable "$folder"; done \
 && pip install --no-deps -c constraints.txt "$@"
USER 10001:10001
CMD ["offsim-image", "dev"]

# The runtime: a virtual environment holding only the wheels built above (--no-index): the
# member, the members it needs and their dependencies at constraints.txt's versions; no pip in
# it, no source, no build tools. prod copies it whole. (Not a RUN --mount of the wheels in prod:
# Podman's builder leaves a mount's content out of its layer cache key, so every member's prod
# image reused the first one's install.)
FROM base AS install
COPY --from=build /wheels /wheels
RUN python -m venv --without-pip /opt/offsim \
 && pip --python /opt/offsim/bin/python install --no-index /wheels/*.whl

FROM base AS prod
COPY --from=install /opt/offsim /opt/offsim
ENV PATH=/opt/offsim/bin:$PATH
COPY --from=select /image/image.json /etc/offsim/image.json
USER 10001:10001
# GET /api/health on HTTP_PORT or the service's default port; a one-shot (etl, the launcher's
# `offsim migrate`) has nothing to probe, and passes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["offsim-image", "health"]
CMD ["offsim-image", "run"]
