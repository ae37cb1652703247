# One image, shoal:local, for every service of docker-compose.yml: the three shoal binaries
# and Debian's nats-server (the hub nodes and the regions' leaf nodes run it too).
#
#   docker build -t shoal:local .                        (or `docker compose build`)
#
# The base images are build arguments, so that a machine without a registry builds from
# images it made itself (deploy/base-images.sh makes them from Debian's packages with
# debootstrap, and prints the arguments to pass):
#   RUST_IMAGE    the builder: a Rust toolchain of the workspace's rust-version or newer
#   DEBIAN_IMAGE  the runtime: Debian bookworm (apt-get reaches Debian's mirrors)
# The stages, in the order the legacy builder (no BuildKit) builds them: `runtime-base`
# first, so that `--target runtime-base` builds it alone (deploy/test-images.sh puts the
# workspace's already built binaries on it, see deploy/prebuilt.Dockerfile).
ARG RUST_IMAGE=rust:1-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS runtime-base
# Small on purpose: bash (the shell of script steps and of the helper scripts), CA
# certificates and curl (HTTPS from steps, the health checks), tini as PID 1 (it reaps the
# orphans of scripts and forwards signals), and nats-server 2.9 for the broker services.
# Anything else a step needs: extend the image (README, "Containers").
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates curl nats-server tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/worker-healthcheck.sh /usr/local/bin/shoal-worker-healthcheck
COPY deploy/worker-entrypoint.sh /usr/local/bin/shoal-worker-slot
ENV NO_COLOR=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["shoal", "--help"]

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# .dockerignore keeps target/ and .git out of the context.
COPY . .
RUN cargo build --release --locked -p shoal-planner -p shoal-worker -p shoal-cli \
    && mkdir /out \
    && cp target/release/shoal target/release/shoal-planner target/release/shoal-worker /out/

FROM runtime-base AS runtime
COPY --from=build /out/ /usr/local/bin/
