#!/usr/bin/env bash
# Writes beside heavy work, Roster against etcd 3.4: one client puts at 500
# a second for 8 s while something heavy runs beside it, and the put
# latencies are printed per server and round, alternating etcd and roster.
#
#   scripts/bench-stalls.sh [--scenario reads|txns|compact|compactions|all] [--rounds N] [--out DIR] [--no-build]
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
# --rounds   rounds of etcd, roster per scenario (default 3).
# --out      where the results go (default bench/runs/<UTC date>-stalls):
#            output.txt holds the lines printed (one per server, scenario
#            and round), machine.txt the machine and its load.
# --no-build use the existing target/release/roster.
# ROSTER=path/to/roster measures that binary instead (implies --no-build).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

rounds=3
scenario=all
out=""
USAGE="$0 [--scenario reads|txns|compact|compactions|all] [--rounds N] [--out DIR] [--no-build]"
# shellcheck disable=SC2034 # read by parse_args
declare -A FLAGS=([--scenario]=scenario [--rounds]=rounds [--out]=out [--no-build]=build=0)
parse_args "$@"
case "$scenario" in
  all) scenarios="reads txns compact compactions" ;;
  reads | txns | compact | compactions) scenarios="$scenario" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

need etcd etcd-server
need etcdctl etcd-client
need python3 python3
roster=${ROSTER:-}
roster_binary

out="${out:-$(new_run_dir stalls)}"
mkdir -p "$out"
make_work stalls

# Loopback ports nothing listens on, kept for the whole run.
read -r client_port peer_port <<<"$(free_ports 2)"
ep="127.0.0.1:$client_port"
peer="127.0.0.1:$peer_port"

# say LINE: prints LINE and keeps it in the run's output.txt.
say() {
  echo "$*" | tee -a "$out/output.txt"
}

# start SERVER ROUND: starts the server with a fresh data directory and
# waits until it answers.
start() {
  start_server "$1" "$work/$1-$2" "$work/$1.log"
  wait_ready 60s
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

{
  machine_header etcd
  if [ -n "${ROSTER:-}" ]; then echo "binary: $roster"; fi
  echo "load before: $(uptime)"
} >"$out/machine.txt"
say "load: $(uptime)"
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
      pids+=("$put")
      sleep 1
      n=0
      while kill -0 "$put" 2>/dev/null; do
        heavy "$scenario"
        n=$((n + 1))
        sleep 0.3
      done
      wait "$put"
      forget "$put"
      say "$scenario: $server round $round, $n times: $(grep 'latency ms' "$work/put.out" | sed 's/^ *//')"
      stop_server
    done
  done
done
say "load: $(uptime)"
echo "load after: $(uptime)" >>"$out/machine.txt"
echo "results: $out/output.txt" >&2
