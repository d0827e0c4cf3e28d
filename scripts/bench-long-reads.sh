#!/usr/bin/env bash
# Puts beside long reads, Roster against etcd 3.4: one client puts at 500 a
# second for 8 s while etcdctl reads every one of 100k keys (256-byte
# values, a 25 MB answer) about three times a second. Prints the put
# latencies per server and round, alternating etcd and roster.
#
#   scripts/bench-long-reads.sh [--rounds N] [--no-build]
#
# ROSTER=path/to/roster measures that binary instead (implies --no-build).
#
# A registry's discovery clients list whole prefixes; this shows what such
# a list costs the writers (registrations, keepalives) beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
build=1
while (($#)); do
  case "$1" in
    --rounds) rounds="$2"; shift ;;
    --no-build) build=0 ;;
    *) echo "usage: $0 [--rounds N] [--no-build]" >&2; exit 2 ;;
  esac
  shift
done

for tool in etcd etcdctl; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-long-reads: needs $tool (Debian etcd-server, etcd-client)" >&2
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

work="$(mktemp -d /tmp/roster-long-reads.XXXXXX)"
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

echo "load: $(uptime)"
for round in $(seq "$rounds"); do
  for server in etcd roster; do
    start "$server" "$round"
    "$roster" bench range --endpoints "$ep" --conns 10 --clients 10 \
      --load-keys 100000 --total 1 >/dev/null
    "$roster" bench put --endpoints "$ep" --clients 1 --rate 500 --duration 8s \
      --key-prefix /other/ >"$work/put.out" 2>&1 &
    put=$!
    sleep 1
    reads=0
    while kill -0 "$put" 2>/dev/null; do
      ETCDCTL_API=3 etcdctl --endpoints "$ep" get --prefix /bench/ >/dev/null
      reads=$((reads + 1))
      sleep 0.3
    done
    wait "$put"
    echo "$server round $round, $reads long reads: $(grep 'latency ms' "$work/put.out" | sed 's/^ *//')"
    stop
  done
done
echo "load: $(uptime)"
