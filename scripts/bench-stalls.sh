#!/usr/bin/env bash
# Writes beside heavy work, Roster against etcd 3.4: one client puts at 500
# a second for 8 s while something heavy runs beside it, and the put
# latencies are printed per server and round, alternating etcd and roster.
#
#   scripts/bench-stalls.sh [--scenario reads|txns|compact|compactions|all] [--rounds N] [--no-build]
#
# reads:        etcdctl reads all of 100k keys (256-byte values, a 25 MB
#               answer) about three times a second. A registry's discovery
#               clients list whole prefixes.
# txns:         the same read as the one op of a txn (`etcdctl txn`).
# compact:      over 300k versions of 100k keys, compact to the newest
#               revision: the first time drops 200k versions, the later
#               ones only the puts' own.
# compactions:  over 300k versions of 100k keys, compact to the newest
#               revision (dropping 200k), write 100k new versions, again.
#
# ROSTER=path/to/roster measures that binary instead (implies --no-build).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
build=1
scenario=all
while (($#)); do
  case "$1" in
    --scenario) scenario="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --no-build) build=0 ;;
    *) echo "usage: $0 [--scenario reads|txns|compact|compactions|all] [--rounds N] [--no-build]" >&2; exit 2 ;;
  esac
  shift
done
case "$scenario" in
  all) scenarios="reads txns compact compactions" ;;
  reads | txns | compact | compactions) scenarios="$scenario" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

for tool in etcd etcdctl; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-stalls: needs $tool (Debian etcd-server, etcd-client)" >&2
    exit 1
  }
done
if [ -n "${ROSTER:-}" ]; then
  build=0
fi
if ((build)); then
  cargo build --release -p roster
fi
roster="${ROSTER:-$PWD/target/release/roster}"
[ -x "$roster" ] || { echo "no $roster: build it or drop --no-build" >&2; exit 1; }

work="$(mktemp -d /tmp/roster-stalls.XXXXXX)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Fixed loopback ports, away from the defaults and from bench-vs-etcd.sh.
ep="127.0.0.1:23279"
peer="127.0.0.1:23280"

start() {
  local dir="$work/$1-$2"
  case "$1" in
    etcd)
      etcd --name default --data-dir "$dir" \
        --listen-client-urls "http://$ep" --advertise-client-urls "http://$ep" \
        --listen-peer-urls "http://$peer" --initial-advertise-peer-urls "http://$peer" \
        --initial-cluster "default=http://$peer" >>"$work/$1.log" 2>&1 &
      ;;
    roster)
      RUST_LOG=warn "$roster" serve --data-dir "$dir" \
        --listen-client-urls "http://$ep" >>"$work/$1.log" 2>&1 &
      ;;
  esac
  pid=$!
  "$roster" bench ready --endpoints "$ep" >/dev/null
}

stop() {
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

# load: writes 100k keys (one version each) in txns of 100.
load() {
  "$roster" bench range --endpoints "$ep" --conns 10 --clients 10 \
    --load-keys 100000 --total 1 >/dev/null 2>&1
}

# compact: compacts to the newest revision.
compact() {
  local rev
  rev=$(ETCDCTL_API=3 etcdctl --endpoints "$ep" get /none -w json |
    sed -E 's/.*"revision":([0-9]+).*/\1/')
  ETCDCTL_API=3 etcdctl --endpoints "$ep" compact "$rev" >/dev/null
}

# heavy SCENARIO: one round of the heavy work.
heavy() {
  case "$1" in
    reads)
      ETCDCTL_API=3 etcdctl --endpoints "$ep" get --prefix /bench/ >/dev/null
      ;;
    txns)
      # No compares; on success, get [/bench/, /bench0): the prefix.
      printf '\nget /bench/ /bench0\n\n\n' |
        ETCDCTL_API=3 etcdctl --endpoints "$ep" txn >/dev/null
      ;;
    compact)
      compact
      ;;
    compactions)
      compact
      load
      ;;
  esac
}

echo "load: $(uptime)"
for scenario in $scenarios; do
  for round in $(seq "$rounds"); do
    for server in etcd roster; do
      start "$server" "$round"
      load
      case "$scenario" in compact | compactions) load; load ;; esac
      # The one big compaction alone: after the load's checkpoints.
      if [ "$scenario" = compact ]; then sleep 3; fi
      "$roster" bench put --endpoints "$ep" --clients 1 --rate 500 --duration 8s \
        --key-prefix /other/ >"$work/put.out" 2>&1 &
      put=$!
      sleep 1
      n=0
      while kill -0 "$put" 2>/dev/null; do
        heavy "$scenario"
        n=$((n + 1))
        sleep 0.3
      done
      wait "$put"
      echo "$scenario: $server round $round, $n times: $(grep 'latency ms' "$work/put.out" | sed 's/^ *//')"
      stop
    done
  done
done
echo "load: $(uptime)"
