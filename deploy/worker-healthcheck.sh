#!/usr/bin/env bash
# Health check of a shoal-worker container (docker-compose.yml): healthy while the worker
# process runs and its NATS server (SHOAL_NATS_URL) accepts connections. A worker opens no
# port of its own, so this is all a container check can see; whether it takes tasks of its
# pool is in `shoal workers` (status and health), which the planner knows.
set -u
pgrep_worker() {
  local d
  for d in /proc/[0-9]*; do
    [ "$(cat "$d/comm" 2>/dev/null)" = "shoal-worker" ] && return 0
  done
  return 1
}
pgrep_worker || { echo "no shoal-worker process"; exit 1; }
url=${SHOAL_NATS_URL:-nats://127.0.0.1:4222}
hostport=${url#*://}
hostport=${hostport##*@}
hostport=${hostport%%/*}
hostport=${hostport%%,*}
host=${hostport%:*}
port=${hostport##*:}
[ "$host" = "$hostport" ] && port=4222
if ! timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
  echo "NATS at $host:$port does not accept connections"
  exit 1
fi
echo "ok: shoal-worker runs, NATS at $host:$port answers"
