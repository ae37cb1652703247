#!/usr/bin/env bash
# Prepares the image the container tests run (tests/tests/containers.rs, `.ci/run`):
# shoal:local made of the Dockerfile's `runtime-base` stage and the workspace's already built
# binaries, so that nothing compiles inside Docker. Each step is skipped when its image is
# there: the base image (deploy/base-images.sh, only where debian:bookworm-slim is not
# here), shoal-runtime-base:local (apt-get inside the build), and shoal:local, labelled with
# the digest of the binaries it holds and made again only when they changed.
#
#   deploy/test-images.sh [BIN_DIR]
#     BIN_DIR  where shoal, shoal-planner and shoal-worker are (default: $SHOAL_BIN_DIR,
#              else $CARGO_TARGET_DIR/debug, else target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."

bins=${1:-${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}}
for b in shoal shoal-planner shoal-worker; do
  [ -x "$bins/$b" ] || {
    echo "test-images: $bins/$b is missing: build the workspace first (cargo build)" >&2
    exit 1
  }
done
have() { docker image inspect "$1" >/dev/null 2>&1; }
# The image a rebuild replaced, unless it is the new one or a container still uses it: each
# build of new binaries would otherwise leave 150 MB behind.
forget() {
  [ -n "$1" ] && [ "$1" != "$(docker image inspect -f '{{.Id}}' "$2" 2>/dev/null)" ] &&
    docker rmi "$1" >/dev/null 2>&1 || true
}
started=$(date +%s)

if have debian:bookworm-slim; then
  debian=debian:bookworm-slim
else
  echo "test-images: no debian:bookworm-slim here (no registry): making the base image from Debian's packages"
  bash deploy/base-images.sh
  debian=shoal-base/debian:bookworm
fi

# The runtime stage changes with the Dockerfile and the scripts it copies.
runtime_digest=$(cat Dockerfile deploy/worker-healthcheck.sh deploy/worker-entrypoint.sh |
  sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "shoal.runtime"}}' shoal-runtime-base:local 2>/dev/null)" = "$runtime_digest" ]; then
  echo "test-images: shoal-runtime-base:local is up to date"
else
  echo "test-images: building shoal-runtime-base:local (Dockerfile --target runtime-base on $debian) …"
  old=$(docker image inspect -f '{{.Id}}' shoal-runtime-base:local 2>/dev/null || true)
  docker build -q --target runtime-base --build-arg "DEBIAN_IMAGE=$debian" \
    --label "shoal.runtime=$runtime_digest" -t shoal-runtime-base:local . >/dev/null
  forget "$old" shoal-runtime-base:local
fi

bin_digest=$(cat "$bins/shoal" "$bins/shoal-planner" "$bins/shoal-worker" | sha256sum | cut -c1-16)
key="$runtime_digest-$bin_digest"
if [ "$(docker image inspect -f '{{index .Config.Labels "shoal.binaries"}}' shoal:local 2>/dev/null)" = "$key" ]; then
  echo "test-images: shoal:local holds these binaries already"
else
  echo "test-images: building shoal:local from the binaries in $bins …"
  ctx=$(mktemp -d /var/tmp/shoal-image.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  # Hard links when the target dir is on the same file system: no copy of 150 MB.
  for b in shoal shoal-planner shoal-worker; do
    ln "$bins/$b" "$ctx/$b" 2>/dev/null || cp "$bins/$b" "$ctx/$b"
  done
  old=$(docker image inspect -f '{{.Id}}' shoal:local 2>/dev/null || true)
  docker build -q -f deploy/prebuilt.Dockerfile --label "shoal.binaries=$key" \
    -t shoal:local "$ctx" >/dev/null
  forget "$old" shoal:local
fi
echo "test-images: ready in $(($(date +%s) - started)) s"
