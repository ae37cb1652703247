#!/usr/bin/env bash
# Walks README.md's "Running it by hand" section as written, with the binaries just built,
# RUNS times in a row (default 2), each time from scratch: fails when the README and the
# binaries disagree. Run by `cargo test -p shoal-e2e --test readme` (tests/tests/readme.rs);
# by hand: `cargo build && tests/readme-walkthrough.sh`.
#
# What it runs: every fenced block tagged sh, bash or shell in that section (up to the next
# "## " heading), in order, as one bash script (so `kill %2` means what it says), with
# `set -e`: a command that exits non-zero stops the walk and names its README line. Each run
# gets a fresh directory as its working directory, and these substitutions, which are the
# README conventions a change to that section must keep:
#
#   - `cargo …` does nothing: the binaries are already built. `$PWD/target/release` and
#     `$PWD/target/debug` are the directory of the built binaries (SHOAL_BIN_DIR, default
#     target/debug), so `export PATH="$PWD/target/release:$PATH"` works as written.
#   - `/tmp/` becomes a directory of the run, so runs do not share state or collide.
#   - A line whose comment says `(pick a free port)` declares every 4–5 digit number before
#     its `#` a port to pick: that number is replaced by a free port everywhere in the
#     section (one port per distinct number), e.g. `NATS_PORT=4222   # (pick a free port)`.
#   - The planner's HTTP API gets a free port through SHOAL_HTTP_ADDR and SHOAL_API, which the
#     binaries read (a README that passes --http-addr or --api marks that port as above).
#   - `<NAME>` (upper case) is the shell variable NAME; `<ID>` is the id of the deployment
#     the last `shoal deploy` printed. `[NAME]` (an optional argument) is left out. Neither
#     is touched inside a here-document.
#   - A command whose comment says `(exits N)` must exit with status N (a simple command:
#     no pipe, no redirection), e.g. `shoal cancel <ID> --wait   # (exits 1): it has ended`.
#   - The first `shoal` command waits (30 s at most) until the planner's HTTP port accepts
#     connections, as a person waits for the planner to start.
#
# A run passes when the script ends with status 0 and at least one `shoal deploy` printed a
# deployment id. Every process a run started (its process group) is stopped when it ends,
# on failure and on SIGINT/SIGTERM too. Settings: README (path), RUNS, SHOAL_BIN_DIR,
# WALK_TIMEOUT (seconds per run, default 300), KEEP_WALK_DIR=1 (keep the run directories).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readme=${README:-$repo/README.md}
runs=${RUNS:-2}
bin_dir=${SHOAL_BIN_DIR:-$repo/target/debug}
walk_timeout=${WALK_TIMEOUT:-300}
section="Running it by hand"

for b in shoal shoal-planner shoal-worker; do
  [ -x "$bin_dir/$b" ] || { echo "walk-through: $bin_dir/$b missing: run \`cargo build\` first (or set SHOAL_BIN_DIR)" >&2; exit 2; }
done
bin_dir=$(cd "$bin_dir" && pwd)
command -v nats-server >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
command -v nats-server >/dev/null 2>&1 || { echo "walk-through: nats-server not found (apt-get install nats-server)" >&2; exit 2; }

top=$(mktemp -d "${TMPDIR:-/tmp}/shoal-walk.XXXXXX")
pgid=""

stop_group() {
  [ -n "$pgid" ] || return 0
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 -- "-$pgid" 2>/dev/null || { pgid=""; return 0; }
    sleep 0.1
  done
  echo "walk-through: processes of the run still alive 10 s after SIGTERM; SIGKILL" >&2
  kill -KILL -- "-$pgid" 2>/dev/null || true
  pgid=""
}
cleanup() {
  stop_group
  if [ "${KEEP_WALK_DIR:-0}" = 1 ]; then echo "walk-through: kept $top" >&2; else rm -rf "$top"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Extracts the section's shell blocks into $1 (the script) and $2 (README line of each of
# its lines), with every substitution above except the HTTP port (set in the environment).
extract() {
  perl - "$readme" "$section" "$1" "$2" "$3" <<'PERL'
use strict;
use warnings;
use IO::Socket::INET;
my ($readme, $section, $out, $map, $run) = @ARGV;
open(my $in, '<', $readme) or die "walk-through: cannot read $readme: $!\n";
my (@lines, @nums);
my ($insec, $fence, $keep, $n) = (0, 0, 0, 0);
while (my $l = <$in>) {
  $n++;
  chomp $l;
  if (!$fence && $l =~ /^## /) { $insec = ($l eq "## $section"); next; }
  next unless $insec;
  if ($l =~ /^```\s*(\S*)/) {
    if ($fence) { $fence = 0; } else { $fence = 1; $keep = ($1 =~ /^(sh|bash|shell)$/); }
    next;
  }
  push @lines, [$n, $l] if $fence && $keep;
}
die "walk-through: no sh block in the section \"## $section\" of $readme\n" unless @lines;
# Ports to pick: the numbers before the comment on lines marked "(pick a free port)".
my %port;
for my $e (@lines) {
  my $l = $e->[1];
  next unless $l =~ /\(pick a free port\)/;
  my ($code) = split /#/, $l, 2;
  for my $num ($code =~ /(?<![0-9])([0-9]{4,5})(?![0-9])/g) {
    next if exists $port{$num};
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1)
      or die "walk-through: cannot bind a free port: $!\n";
    $port{$num} = $s->sockport;
  }
}
open(my $o, '>', $out) or die "$out: $!\n";
open(my $m, '>', $map) or die "$map: $!\n";
my $heredoc;
for my $e (@lines) {
  my ($num, $l) = @$e;
  for my $p (keys %port) { $l =~ s/(?<![0-9])$p(?![0-9])/$port{$p}/g; }
  $l =~ s{/tmp/}{$run/tmp/}g;
  if (defined $heredoc) {
    undef $heredoc if $l =~ /^\t*\Q$heredoc\E$/;
  } else {
    my ($code, $comment) = ($l =~ /^(.*?)(\s+#.*)?$/);
    $comment //= '';
    $code =~ s/\s*\[[A-Z][A-Z0-9_]*\]//g;
    $code =~ s/<([A-Z][A-Z0-9_]*)>/"\${$1:?README placeholder <$1> has no value in the walk-through}"/g;
    if ($comment =~ /\(exits ([0-9]+)\)/) { my $want = $1; $code =~ s/^(\s*)/$1__walk_expect_exit $want /; }
    $heredoc = $1 if $code =~ /<<-?\s*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?/;
    $l = $code . $comment;
  }
  print $o "$l\n";
  print $m "$num\n";
}
for my $p (sort keys %port) { print STDERR "walk-through: port $p of the README is $port{$p}\n"; }
PERL
}

# The harness around the README's commands, sourced before them by the run's bash.
write_prelude() {
  cat >"$1" <<'BASH'
set -eEu -o pipefail
mapfile -t __walk_map <"$__WALK_RUN/walk.map"
# README line of the command bash is at (the script's lines map one to one to the README's).
__walk_line() { echo "${__walk_map[$(($1 - 1))]:-?}"; }
PS4='+ README.md:$(__walk_line ${LINENO}): '
trap '__s=$?; { set +x; } 2>/dev/null; echo "walk-through: FAILED at README.md line $(__walk_line ${LINENO}) (exit ${__s}): $(sed -n "${LINENO}p" "$__WALK_RUN/walk.sh")" >&2' ERR
cargo() { echo "(walk-through: \`cargo $*\` skipped: the binaries are built)"; }
__walk_api_up=""
# The wrappers below are not traced (`local -` keeps `set +x` to the function).
__walk_wait_api() {
  { local -; set +x; } 2>/dev/null
  [ -n "$__walk_api_up" ] && return 0
  local hp=${SHOAL_API#*://}; hp=${hp%%/*}
  local host=${hp%:*} port=${hp##*:} i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then __walk_api_up=1; return 0; fi
    sleep 0.1
  done
  echo "walk-through: nothing listens on $host:$port (SHOAL_API) after 30 s" >&2
  return 1
}
shoal() {
  { local -; set +x; } 2>/dev/null
  local out rc=0 a id
  __walk_wait_api
  out=$(command shoal "$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  for a in "$@"; do
    if [ "$a" = deploy ]; then
      id=$(printf '%s\n' "$out" | grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' | head -n 1 || true)
      if [ -n "$id" ]; then ID=$id; echo "$id" >>"$__WALK_RUN/deployments"; fi
      break
    fi
  done
  return "$rc"
}
__walk_expect_exit() {
  { local -; set +x; } 2>/dev/null
  local want=$1 rc=0
  shift
  "$@" || rc=$?
  if [ "$rc" != "$want" ]; then
    echo "walk-through: \`$*\` exited $rc, the README says $want" >&2
    return 1
  fi
}
set -x
BASH
}

# One run from scratch; returns non-zero (after printing its output) when it failed.
walk_once() {
  local i=$1 run="$top/run$1"
  mkdir -p "$run/cwd/target" "$run/tmp"
  ln -s "$bin_dir" "$run/cwd/target/release"
  ln -s "$bin_dir" "$run/cwd/target/debug"
  extract "$run/walk.sh" "$run/walk.map" "$run"
  write_prelude "$run/prelude.sh"
  local http
  http=$(perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(LocalAddr=>"127.0.0.1",LocalPort=>0,Listen=>1)->sockport')
  echo "walk-through: run $i of $runs in $run (HTTP API on 127.0.0.1:$http)"
  local start=$SECONDS rc=0
  # Its own session and process group, so that everything the README starts is stopped with
  # one signal; the README's paths are relative to the run's working directory.
  (cd "$run/cwd" && __WALK_RUN="$run" SHOAL_HTTP_ADDR="127.0.0.1:$http" SHOAL_API="http://127.0.0.1:$http" \
    PATH="$PATH" exec setsid bash -c 'source "$__WALK_RUN/prelude.sh"; source "$__WALK_RUN/walk.sh"') \
    >"$run/output.log" 2>&1 </dev/null &
  local pid=$!
  pgid=$pid
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - start)) -ge "$walk_timeout" ]; then
      echo "walk-through: run $i still running after ${walk_timeout}s: stopped" >>"$run/output.log"
      stop_group
      break
    fi
    sleep 0.2
  done
  wait "$pid" || rc=$?
  # What the README left running (nats-server, workers) goes now.
  stop_group
  if [ "$rc" = 0 ] && [ ! -s "$run/deployments" ]; then
    echo "walk-through: no \`shoal deploy\` printed a deployment id" >>"$run/output.log"
    rc=1
  fi
  if [ "$rc" != 0 ]; then
    echo "walk-through: run $i FAILED (exit $rc) after $((SECONDS - start))s; its output:"
    cat "$run/output.log"
    return 1
  fi
  echo "walk-through: run $i passed in $((SECONDS - start))s (deployment $(tail -n 1 "$run/deployments"))"
}

for i in $(seq 1 "$runs"); do
  walk_once "$i"
done
echo "walk-through: $runs of $runs runs passed"
