#!/usr/bin/env bash
# Starts shoal-worker as the first free worker identity of its pool in the trust bundle (in
# the image as `shoal-worker-slot`). The containers of one compose service share one command
# (`docker compose up --scale worker-eu=3`), but each worker needs an identity of its own:
# the broker binds an nkey to one pool and one worker name (docs/security/nats.md). So the
# bundle holds a few identities per pool (deploy/nats/topology.toml: eu-west-1…4), and each
# container takes the first whose lock it can hold: an flock on <slots>/<name>.lock, in a
# volume the pool's containers share, held by the worker process itself for as long as it
# runs (the descriptor survives the exec), and let go by the kernel when it dies.
#
#   SHOAL_POOL       the pool (required)
#   SHOAL_BUNDLE     the trust bundle (default /bundle)
#   SHOAL_SLOTS_DIR  the shared lock dir (default /slots)
# Arguments are passed to shoal-worker; the identity's env file (identities/worker.<pool>.
# <name>.env) gives it its name, pool, region, broker URL, JetStream domain and credentials.
set -euo pipefail
pool=${SHOAL_POOL:?SHOAL_POOL names the pool whose identity to take}
bundle=${SHOAL_BUNDLE:-/bundle}
slots=${SHOAL_SLOTS_DIR:-/slots}
mkdir -p "$slots"

shopt -s nullglob
envs=("$bundle"/identities/worker."$pool".*.env)
if [ ${#envs[@]} -eq 0 ]; then
  echo "shoal-worker-slot: no identity of pool $pool in $bundle/identities: add workers of" \
    "the pool to the topology and run nats-config again" >&2
  exit 1
fi
for env in "${envs[@]}"; do
  name=${env#"$bundle/identities/worker.$pool."}
  name=${name%.env}
  exec {lock}>"$slots/$name.lock"
  if flock -n "$lock"; then
    set -a
    # shellcheck disable=SC1090
    . "$env"
    set +a
    echo "shoal-worker-slot: running as worker $name of pool $pool" >&2
    exec shoal-worker "$@"
  fi
  exec {lock}>&-
done
echo "shoal-worker-slot: all ${#envs[@]} identities of pool $pool are taken by running" \
  "workers; add workers of the pool to the topology (deploy/nats/topology.toml), run" \
  "nats-config again and reload the region's leaf node (README, \"Containers\")" >&2
exit 1
