#!/usr/bin/env bash
# Checks that third_party/sled is sled 0.34.7 as published on crates.io plus the patch
# third_party/sled/shoal.patch (each change explained in SHOAL-PATCH.md), and nothing else:
# it downloads the published crate, checks its SHA-256 against the one crates.io's index
# lists, keeps what shoal vendors of it, applies the patch, and compares the result with the
# vendored directory file by file. Any other difference fails.
#
#   third_party/check-sled.sh            check (CI runs this)
#   third_party/check-sled.sh --update   rewrite shoal.patch from the vendored directory, after
#                                        a deliberate change there (then review the diff and
#                                        say why in SHOAL-PATCH.md)
set -euo pipefail

version=0.34.7
# The `cksum` of sled 0.34.7 in the crates.io index (what Cargo itself would check).
sha256=7f96b4737c2ce5987354855aed3797279def4ebf734436c6aa4552cf8e169935
url="https://static.crates.io/crates/sled/sled-${version}.crate"
# What shoal vendors of the published crate: sources, manifest, licences, README.
keep=(Cargo.toml LICENSE-APACHE LICENSE-MIT README.md src)
# shoal's own files in the vendored directory.
ours=(SHOAL-PATCH.md shoal.patch)

vendored="$(cd "$(dirname "$0")" && pwd)/sled"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

curl -fsSL --retry 3 -o "$work/sled.crate" "$url"
if ! echo "${sha256}  $work/sled.crate" | sha256sum --check --quiet -; then
  echo "check-sled: the download of $url does not have the published checksum" >&2
  exit 1
fi
tar -xzf "$work/sled.crate" -C "$work"
mkdir "$work/a" "$work/b"
for f in "${keep[@]}"; do
  cp -R "$work/sled-${version}/$f" "$work/a/"
done
cp -R "$vendored/." "$work/b/"
for f in "${ours[@]}"; do
  rm -f "$work/b/$f"
done

if [ "${1:-}" = "--update" ]; then
  # Paths a/… and b/… without timestamps, so the file only changes with the code.
  (cd "$work" && diff -ruN a b || true) |
    sed -E 's/^(---|\+\+\+) ([^\t]*)\t.*$/\1 \2/' >"$vendored/shoal.patch"
  echo "check-sled: wrote $vendored/shoal.patch"
  exit 0
fi

if ! patch --quiet --forward --no-backup-if-mismatch -p1 -d "$work/a" <"$vendored/shoal.patch"; then
  echo "check-sled: shoal.patch no longer applies to sled ${version} as published" >&2
  exit 1
fi
if ! diff -r "$work/a" "$work/b"; then
  echo "check-sled: third_party/sled differs from sled ${version} plus shoal.patch (above: published+patch, then vendored)." >&2
  echo "check-sled: a deliberate change is recorded with 'third_party/check-sled.sh --update' and explained in SHOAL-PATCH.md" >&2
  exit 1
fi
echo "check-sled: third_party/sled is sled ${version} from crates.io plus shoal.patch"
