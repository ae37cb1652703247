# The image of docker-compose.yml made from binaries built outside Docker (CI, the container
# tests): the Dockerfile's `runtime-base` stage plus the workspace's own `shoal`,
# `shoal-planner` and `shoal-worker`, so nothing compiles inside Docker. The context is a
# directory holding just those three files. deploy/test-images.sh builds it; users build
# the Dockerfile instead.
ARG RUNTIME_BASE=shoal-runtime-base:local
FROM ${RUNTIME_BASE}
COPY shoal shoal-planner shoal-worker /usr/local/bin/
