#!/usr/bin/env bash
# Put cost with 100k idle watchers on other keys: `roster bench put` (10
# clients, 10 s) against a fresh server, then against a fresh server holding
# 100k watchers (hold-watchers, as in bench-scale.sh).
set -euo pipefail
R=${ROSTER:-target/release/roster}
work=$(mktemp -d /tmp/pww.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 $p 2>/dev/null || true; done; rm -rf $work' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {
  ep=127.0.0.1:$(port)
  case $1 in
    roster) RUST_LOG=warn $R serve --data-dir $work/d$2 --listen-client-urls http://$ep >>$work/roster.log 2>&1 & ;;
    etcd) peer=$(port); etcd --name default --data-dir $work/d$2 --listen-client-urls http://$ep --advertise-client-urls http://$ep \
            --listen-peer-urls http://127.0.0.1:$peer --initial-advertise-peer-urls http://127.0.0.1:$peer \
            --initial-cluster default=http://127.0.0.1:$peer >>$work/etcd.log 2>&1 & ;;
  esac
  pid=$!; pids+=($pid); $R bench ready --endpoints $ep >/dev/null
}
summ() { python3 -c '
import json, sys
r = json.load(sys.stdin); l = r["latency_ms"]
print("  put: %d ok, %d errors, %.0f/s, p50 %.2f p99 %.2f ms" % (r["count"], r["errors"], r["rps"], l["p50"], l["p99"]))'; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for s in roster etcd; do
  echo "$s, no watchers:"
  start $s a
  $R bench put --endpoints $ep --conns 10 --clients 10 --duration 10s --json | summ
  kill -9 $pid
  echo "$s, 100k idle watchers on other keys:"
  start $s b
  $R bench hold-watchers --endpoints $ep --watchers 100000 --streams 1000 --conns 10 --hold 25s --json >$work/w.json 2>$work/w.err &
  w=$!; pids+=($w)
  until grep -q holding $work/w.err; do sleep 0.05; done
  $R bench put --endpoints $ep --conns 10 --clients 10 --duration 10s --json | summ
  wait $w
  kill -9 $pid
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
