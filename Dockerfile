# Builds the three shoal binaries into one image, used by every shoal service of
# docker-compose.yml (built once, named shoal:local there).
FROM rust:1-bookworm AS build
WORKDIR /src
# .dockerignore keeps target/ and .git out of the context.
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
# What a deployment step usually needs, so that a worker can run real scripts: bash (the
# default shell of script steps), curl and ca-certificates (HTTPS), openssh-client (ssh, scp),
# git, jq, tar, gzip, unzip; tini as PID 1 reaps the orphans of scripts and forwards signals.
# Anything else: extend the image (README, "Containers").
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       bash ca-certificates curl git gzip jq openssh-client tar tini unzip \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shoal /src/target/release/shoal-planner \
     /src/target/release/shoal-worker /usr/local/bin/
COPY deploy/worker-healthcheck.sh /usr/local/bin/shoal-worker-healthcheck
ENV NO_COLOR=1
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["shoal", "--help"]
