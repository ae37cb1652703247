#!/usr/bin/env bash
# Makes the Dockerfile's base images without a container registry, from Debian's packages:
#
#   shoal-base/debian:bookworm  Debian bookworm (minbase) made with debootstrap and
#                               `docker import`: the runtime's base (DEBIAN_IMAGE)
#   shoal-base/rust:bookworm    (with --rust) that image plus this machine's Rust toolchain
#                               (rustup's default, or $RUST_TOOLCHAIN_DIR) and its crate
#                               cache ($CARGO_HOME/registry), building offline: the builder's
#                               base (RUST_IMAGE). Debian's own rustc is older than the
#                               workspace's rust-version, so the toolchain is copied in; and
#                               a machine without a registry may not reach crates.io from a
#                               container either (here its TLS is intercepted by a CA only
#                               the host trusts), so the crates come from the host's cache
#                               (any cargo build of the workspace here filled it).
#
# It is needed only where `docker pull debian:bookworm-slim` cannot work (no registry
# reachable); with a registry, the Dockerfile's defaults are pulled and this script is not
# needed. An image that exists is kept (delete it to make it again). At the end it prints
# the build arguments to use. Needs root (debootstrap), debootstrap (apt-get install
# debootstrap) and a Debian mirror ($DEBIAN_MIRROR, default http://deb.debian.org/debian).
#
#   deploy/base-images.sh [--rust] [--check]
#     --check  only say whether the images are needed and present (exit 1 when missing)
set -euo pipefail

DEBIAN_IMAGE=shoal-base/debian:bookworm
RUST_IMAGE=shoal-base/rust:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
want_rust=false
check_only=false
for arg in "$@"; do
  case "$arg" in
    --rust) want_rust=true ;;
    --check) check_only=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument $arg (see --help)" >&2
      exit 2
      ;;
  esac
done

have() { docker image inspect "$1" >/dev/null 2>&1; }

if have debian:bookworm-slim && { ! $want_rust || have rust:1-bookworm; }; then
  echo "base-images: the registry's images are here (debian:bookworm-slim$($want_rust && echo ', rust:1-bookworm')): nothing to make; build with the Dockerfile's defaults"
  exit 0
fi
if $check_only; then
  missing=()
  have "$DEBIAN_IMAGE" || missing+=("$DEBIAN_IMAGE")
  if $want_rust && ! have "$RUST_IMAGE"; then missing+=("$RUST_IMAGE"); fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "base-images: needed (no registry images here) and missing: ${missing[*]}"
    exit 1
  fi
  echo "base-images: present: $DEBIAN_IMAGE$($want_rust && echo " $RUST_IMAGE")"
  exit 0
fi

if have "$DEBIAN_IMAGE"; then
  echo "base-images: $DEBIAN_IMAGE exists, kept"
else
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || {
    echo "base-images: debootstrap is missing: apt-get install -y debootstrap" >&2
    exit 1
  }
  [ "$(id -u)" -eq 0 ] || {
    echo "base-images: debootstrap needs root" >&2
    exit 1
  }
  work=$(mktemp -d /var/tmp/shoal-base.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  echo "base-images: debootstrap bookworm from $MIRROR (a minute or two) …"
  PATH="$PATH:/usr/sbin" debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    exit 1
  }
  # As Debian's official image: the three suites, no package lists or downloads kept.
  cat >"$work/rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
EOF
  # Like Debian's official image, apt keeps no downloaded package (docker-clean).
  cat >"$work/rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/archives/*.deb \
    "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/log/*.log
  tar -C "$work/rootfs" -c . |
    docker import --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm $MIRROR (deploy/base-images.sh)" \
      - "$DEBIAN_IMAGE" >/dev/null
  echo "base-images: made $DEBIAN_IMAGE"
fi

if $want_rust; then
  if have "$RUST_IMAGE"; then
    echo "base-images: $RUST_IMAGE exists, kept"
  else
    toolchain=${RUST_TOOLCHAIN_DIR:-}
    if [ -z "$toolchain" ] && command -v rustc >/dev/null 2>&1; then
      toolchain=$(rustc --print sysroot)
    fi
    [ -n "$toolchain" ] && [ -x "$toolchain/bin/cargo" ] || {
      echo "base-images: no Rust toolchain with cargo found (set RUST_TOOLCHAIN_DIR)" >&2
      exit 1
    }
    ctx=$(mktemp -d /var/tmp/shoal-rust.XXXXXX)
    trap 'rm -rf "$ctx"' EXIT
    cp -a "$toolchain" "$ctx/toolchain"
    # The toolchain's HTML docs are most of its size and no build reads them.
    rm -rf "$ctx/toolchain/share/doc"
    registry=${CARGO_HOME:-$HOME/.cargo}/registry
    mkdir -p "$ctx/registry"
    for d in cache index; do
      [ -d "$registry/$d" ] && cp -a "$registry/$d" "$ctx/registry/"
    done
    cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
COPY registry /usr/local/cargo/registry
ENV PATH=/usr/local/rust/bin:\$PATH CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true
EOF
    docker build -q -t "$RUST_IMAGE" "$ctx" >/dev/null
    echo "base-images: made $RUST_IMAGE ($("$toolchain/bin/rustc" --version))"
  fi
fi

args="--build-arg DEBIAN_IMAGE=$DEBIAN_IMAGE"
$want_rust && args="$args --build-arg RUST_IMAGE=$RUST_IMAGE"
echo "base-images: build with: docker build $args -t shoal:local ."
