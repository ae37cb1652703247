#!/usr/bin/env bash
# Health check of a shoal-worker container (docker-compose.yml): healthy while a shoal-worker
# process runs and holds an established TCP connection to the port of its NATS server
# (SHOAL_NATS_URL, the region's leaf node). It opens no connection itself: nats-server logs
# every probe that does not finish a TLS handshake as an error, and a connection the worker
# holds says more than one the server would accept. A worker opens no port of its own, so
# this is all a container check can see; whether it takes tasks of its pool is in
# `shoal workers` (status and health), which the planner knows.
set -u
url=${SHOAL_NATS_URL:-nats://127.0.0.1:4222}
hostport=${url#*://}
hostport=${hostport##*@}
hostport=${hostport%%/*}
hostport=${hostport%%,*}
host=${hostport%:*}
port=${hostport##*:}
[ "$host" = "$hostport" ] && port=4222
want=$(printf ':%04X' "$port")

pids=()
for d in /proc/[0-9]*; do
  [ "$(cat "$d/comm" 2>/dev/null)" = "shoal-worker" ] && pids+=("${d#/proc/}")
done
[ ${#pids[@]} -gt 0 ] || {
  echo "no shoal-worker process"
  exit 1
}
for pid in "${pids[@]}"; do
  # The worker's sockets, by inode, and the established connections of its network
  # namespace (state 01) to that remote port: one of each is the worker's link to NATS.
  inodes=" "
  for fd in /proc/"$pid"/fd/*; do
    link=$(readlink "$fd" 2>/dev/null) || continue
    case "$link" in socket:\[*\]) inodes+="${link:8:${#link}-9} " ;; esac
  done
  while read -r _ _ remote state _ _ _ _ _ inode _; do
    if [ "$state" = "01" ] && [ "${remote: -5}" = "$want" ] && [[ $inodes == *" $inode "* ]]; then
      echo "ok: shoal-worker (pid $pid) is connected to NATS at $host:$port"
      exit 0
    fi
  done < <(cat /proc/"$pid"/net/tcp /proc/"$pid"/net/tcp6 2>/dev/null)
done
echo "shoal-worker runs but has no connection to NATS at $host:$port"
exit 1
