# Builds the three shoal binaries into one small image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends bash ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/shoal /src/target/release/shoal-planner \
     /src/target/release/shoal-worker /usr/local/bin/
ENV NO_COLOR=1
